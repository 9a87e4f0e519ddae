//! The policy as a Docker seccomp profile (the engine's JSON format, as in moby's
//! `default.json`), passed with each run container as `security_opt` `seccomp=<json>`. It takes
//! the place of the engine's default profile, which it contains less what the policy refuses.

use std::sync::LazyLock;

use serde_json::{Value, json};

use super::{ALLOWED, ArgTest, CONDITIONAL, ENOSYS};

/// All 64 bits of an argument that libseccomp compares, less the high half the kernel ignores.
const LOW_32_BITS: u64 = 0xffff_ffff;

fn arg(index: u8, test: ArgTest) -> Value {
    // libseccomp compares all 64 bits: a masked comparison keeps it to the 32 the kernel reads.
    let (mask, value) = match test {
        ArgTest::Equals(v) => (LOW_32_BITS, u64::from(v)),
        ArgTest::NoneOf(bits) => (u64::from(bits), 0),
    };
    json!({"index": index, "op": "SCMP_CMP_MASKED_EQ", "value": mask, "valueTwo": value})
}

/// The profile: allowed calls, then one entry per allowed argument value (entries for the same
/// call are alternatives), then the ENOSYS answers. Anything else fails with EPERM, the engine's
/// default for `SCMP_ACT_ERRNO`. Only the x86_64 ABI is listed, so the engine adds no i386 or x32
/// numbers.
pub fn docker_profile() -> Value {
    let mut rules = vec![json!({
        "names": ALLOWED.iter().map(|s| s.name).collect::<Vec<_>>(),
        "action": "SCMP_ACT_ALLOW",
    })];
    for c in CONDITIONAL {
        for &test in c.any_of {
            rules.push(json!({
                "names": [c.call.name],
                "action": "SCMP_ACT_ALLOW",
                "args": [arg(c.arg, test)],
            }));
        }
    }
    rules.push(json!({
        "names": ENOSYS.iter().map(|s| s.name).collect::<Vec<_>>(),
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": libc::ENOSYS,
    }));
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": rules,
    })
}

/// `seccomp=<profile>`, rendered once per process: the same for every container.
pub fn docker_security_opt() -> &'static str {
    static OPT: LazyLock<String> = LazyLock::new(|| format!("seccomp={}", docker_profile()));
    &OPT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_with(profile: &Value, action: &str) -> Vec<String> {
        profile["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == action)
            .flat_map(|r| r["names"].as_array().unwrap().clone())
            .map(|n| n.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn the_profile_refuses_by_default_and_lists_the_policy() {
        let profile = docker_profile();
        assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(profile["architectures"], json!(["SCMP_ARCH_X86_64"]));
        let allowed = names_with(&profile, "SCMP_ACT_ALLOW");
        for name in [
            "read",
            "write",
            "futex",
            "execve",
            "socket",
            "clone",
            "personality",
        ] {
            assert!(allowed.iter().any(|n| n == name), "{name}");
        }
        for name in [
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "unshare",
            "setns",
            "mount",
            "clone3",
            "ptrace",
            "keyctl",
            "bpf",
        ] {
            assert!(!allowed.iter().any(|n| n == name), "{name} allowed");
        }
        assert_eq!(names_with(&profile, "SCMP_ACT_ERRNO"), vec!["clone3"]);
    }

    #[test]
    fn argument_tests_cover_the_low_32_bits_only() {
        let profile = docker_profile();
        let clone = profile["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["names"] == json!(["clone"]))
            .unwrap();
        assert_eq!(
            clone["args"],
            json!([{"index": 0, "op": "SCMP_CMP_MASKED_EQ", "value": 0x7E02_0000u64, "valueTwo": 0}])
        );
        let personality: Vec<&Value> = profile["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"] == json!(["personality"]))
            .collect();
        assert_eq!(personality.len(), 5);
        assert!(
            personality
                .iter()
                .all(|r| r["args"][0]["value"] == LOW_32_BITS)
        );
    }

    #[test]
    fn the_security_opt_carries_the_json() {
        let opt = docker_security_opt();
        let json = opt.strip_prefix("seccomp=").unwrap();
        let parsed: Value = serde_json::from_str(json).unwrap();
        assert_eq!(parsed, docker_profile());
    }
}
