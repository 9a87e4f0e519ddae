//! Where the shared tier lives: the `--shared-cache` URL and the credentials file, checked when
//! the settings are read so that `check-config` reports a bad one.
//!
//! - `redis://HOST:PORT[/DB]`, or `rediss://HOST:PORT[/DB]` for TLS: one server (or a proxy).
//! - `redis-cluster://HOST:PORT[,HOST:PORT...]`, or `rediss-cluster://...` for TLS: a Redis
//!   Cluster, given by one or more seed nodes; the rest of the cluster is discovered from them.
//!
//! Credentials never appear in the URL (it is visible in `ps` and in logs): they come from a file
//! that holds the password on one line, or a user name on the first line and its password on the
//! second (Redis ACL users).

use std::fmt;
use std::path::Path;

use redis::{ConnectionInfo, IntoConnectionInfo};

#[derive(Clone)]
pub enum Target {
    Standalone(Box<ConnectionInfo>),
    Cluster(Vec<ConnectionInfo>),
}

/// Names the nodes only: a `ConnectionInfo` carries the password.
impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Standalone(i) => write!(f, "Standalone({})", i.addr()),
            Target::Cluster(n) => f
                .debug_tuple("Cluster")
                .field(&n.iter().map(|i| i.addr().to_string()).collect::<Vec<_>>())
                .finish(),
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Auth {
    pub user: Option<String>,
    pub password: String,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Auth {{ user: {:?}, password: <hidden> }}", self.user)
    }
}

/// Reads a credentials file: `PASSWORD`, or `USER` newline `PASSWORD`.
pub fn read_auth_file(path: &Path) -> Result<Auth, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read shared-cache-auth-file {}: {e}", path.display()))?;
    parse_auth(&text).map_err(|e| format!("shared-cache-auth-file {}: {e}", path.display()))
}

fn parse_auth(text: &str) -> Result<Auth, String> {
    let lines: Vec<&str> = text.lines().collect();
    match lines.as_slice() {
        [password] if !password.is_empty() => Ok(Auth {
            user: None,
            password: password.to_string(),
        }),
        [user, password] if !user.is_empty() && !password.is_empty() => Ok(Auth {
            user: Some(user.to_string()),
            password: password.to_string(),
        }),
        _ => Err("write the password on one line, or a user name and its password on two".into()),
    }
}

pub fn parse(url: &str, auth: Option<&Auth>) -> Result<Target, String> {
    let bad = |why: &str| format!("invalid shared-cache {url:?}: {why}");
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        bad("write redis://HOST:PORT, rediss://HOST:PORT or redis-cluster://HOST:PORT,HOST:PORT")
    })?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(bad(
            "credentials do not belong in the URL (it shows in ps and logs); put them in shared-cache-auth-file",
        ));
    }
    let node = |scheme: &str, rest: &str| -> Result<ConnectionInfo, String> {
        let info = format!("{scheme}://{rest}")
            .into_connection_info()
            .map_err(|e| bad(&e.to_string()))?;
        Ok(with_auth(info, auth))
    };
    match scheme {
        "redis" | "rediss" => Ok(Target::Standalone(Box::new(node(scheme, rest)?))),
        "redis-cluster" | "rediss-cluster" => {
            let node_scheme = scheme.trim_end_matches("-cluster");
            if rest.contains(['/', '?']) {
                return Err(bad(
                    "a cluster URL is a list of HOST:PORT seeds (a cluster has no database number)",
                ));
            }
            let (seeds, fragment) = match rest.split_once('#') {
                Some((s, f)) => (s, format!("#{f}")),
                None => (rest, String::new()),
            };
            let nodes = seeds
                .split(',')
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(|s| node(node_scheme, &format!("{s}/{fragment}")))
                .collect::<Result<Vec<_>, _>>()?;
            if nodes.is_empty() {
                return Err(bad("no seed node"));
            }
            Ok(Target::Cluster(nodes))
        }
        _ => Err(bad(
            "the scheme is one of redis, rediss, redis-cluster, rediss-cluster",
        )),
    }
}

fn with_auth(info: ConnectionInfo, auth: Option<&Auth>) -> ConnectionInfo {
    let Some(auth) = auth else { return info };
    let mut settings = info.redis_settings().clone().set_password(&auth.password);
    if let Some(user) = &auth.user {
        settings = settings.set_username(user);
    }
    info.set_redis_settings(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_and_cluster_forms() {
        match parse("redis://127.0.0.1:6379/2", None).unwrap() {
            Target::Standalone(i) => {
                assert_eq!(i.addr().to_string(), "127.0.0.1:6379");
                assert_eq!(i.redis_settings().db(), 2);
            }
            Target::Cluster(_) => panic!("not a cluster"),
        }
        assert!(matches!(
            parse("rediss://cache.example:6380", None).unwrap(),
            Target::Standalone(_)
        ));
        match parse(
            "redis-cluster://10.0.0.1:7000, 10.0.0.2:7000,10.0.0.3:7001",
            None,
        )
        .unwrap()
        {
            Target::Cluster(n) => assert_eq!(n.len(), 3),
            Target::Standalone(_) => panic!("a cluster"),
        }
    }

    #[test]
    fn refuses_credentials_and_nonsense() {
        let e = parse("redis://:secret@127.0.0.1:6379", None).unwrap_err();
        assert!(e.contains("shared-cache-auth-file") && !e.is_empty());
        assert!(parse("memcached://x:1", None).is_err());
        assert!(parse("127.0.0.1:6379", None).is_err());
        assert!(parse("redis-cluster://a:1/3", None).is_err());
        assert!(parse("redis-cluster://", None).is_err());
    }

    #[test]
    fn auth_file_forms() {
        assert_eq!(
            parse_auth("s3cret\n").unwrap(),
            Auth {
                user: None,
                password: "s3cret".into()
            }
        );
        let a = parse_auth("compilerd\ns3cret\n").unwrap();
        assert_eq!(a.user.as_deref(), Some("compilerd"));
        assert!(parse_auth("").is_err() && parse_auth("a\nb\nc").is_err());
        assert!(!format!("{a:?}").contains("s3cret"));
        let info = match parse("redis://h:1", Some(&a)).unwrap() {
            Target::Standalone(i) => i,
            Target::Cluster(_) => unreachable!(),
        };
        assert_eq!(info.redis_settings().password(), Some("s3cret"));
        assert_eq!(info.redis_settings().username(), Some("compilerd"));
    }
}
