//! Which containers are ours, and which of them a dead daemon left behind.
//!
//! Several daemons (and test processes) may share one engine, e.g. while a new daemon takes over
//! the socket of a draining one. So the startup sweep must not remove every container with our
//! label, only those whose owning process is gone. The owner is recorded as boot id, pid and the
//! process's start time, so that neither a reboot nor a reused pid makes a dead owner look alive.

use std::collections::HashMap;

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use futures_util::future::join_all;

/// Every container compilerd creates carries `compilerd.managed=true`.
pub const LABEL_MANAGED: &str = "compilerd.managed";
/// `<boot id>/<pid>/<start time>` of the process that created the container.
pub const LABEL_OWNER: &str = "compilerd.owner";
/// One value per `DockerSandbox`, so a sandbox (or a test) can find exactly its own containers.
pub const LABEL_INSTANCE: &str = "compilerd.instance";

/// The owner label value for this process.
pub fn current_owner() -> String {
    let pid = std::process::id();
    format!(
        "{}/{}/{}",
        boot_id(),
        pid,
        start_time(pid).unwrap_or_default()
    )
}

/// Whether the process named by an owner label still runs on this machine.
pub fn owner_alive(owner: &str) -> bool {
    let mut parts = owner.split('/');
    let (Some(boot), Some(pid), Some(start)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    boot == boot_id() && start_time(pid).is_some_and(|s| s == start)
}

fn boot_id() -> String {
    procfs::sys::kernel::random::boot_id()
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The process's start time in clock ticks since boot; it tells a reused pid apart.
fn start_time(pid: u32) -> Option<String> {
    let stat = procfs::process::Process::new(i32::try_from(pid).ok()?)
        .and_then(|p| p.stat())
        .ok()?;
    Some(stat.starttime.to_string())
}

/// The containers with our label whose owner is gone.
pub async fn orphans(docker: &Docker) -> Result<Vec<String>, bollard::errors::Error> {
    Ok(list(docker, &format!("{LABEL_MANAGED}=true"))
        .await?
        .into_iter()
        .filter(|c| {
            let owner = c.labels.as_ref().and_then(|l| l.get(LABEL_OWNER));
            !owner.is_some_and(|o| owner_alive(o))
        })
        .filter_map(|c| c.id)
        .collect())
}

/// Removes every container of one sandbox instance, whatever its state: at shutdown, the ones
/// whose own removal gave up (the engine was away) or whose name was lost; returns how many.
pub async fn sweep_instance(
    docker: &Docker,
    instance: &str,
) -> Result<usize, bollard::errors::Error> {
    let ours = list(docker, &format!("{LABEL_INSTANCE}={instance}"))
        .await?
        .into_iter()
        .filter_map(|c| c.id)
        .collect();
    Ok(remove_all(docker, ours).await)
}

async fn list(
    docker: &Docker,
    label: &str,
) -> Result<Vec<bollard::models::ContainerSummary>, bollard::errors::Error> {
    let filters = HashMap::from([("label", vec![label.to_owned()])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    docker.list_containers(Some(options)).await
}

/// Removes the containers `ids`, whatever their state; returns how many it removed.
pub async fn remove_all(docker: &Docker, ids: Vec<String>) -> usize {
    let force = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    let results = join_all(
        ids.iter()
            .map(|id| docker.remove_container(id, Some(force.clone()))),
    )
    .await;
    let mut removed = 0;
    for (id, result) in ids.iter().zip(results) {
        match result {
            Ok(()) => removed += 1,
            // Someone else (another daemon's sweep, our own guard) got there first.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => {}
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "could not remove a sandbox container")
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_others_are_not() {
        let me = current_owner();
        assert!(owner_alive(&me), "{me}");
        let pid = std::process::id();
        assert!(!owner_alive(&format!("another-boot/{pid}/0")));
        let start = start_time(pid).unwrap();
        let wrong_start = format!("{}/{pid}/{}1", boot_id(), start);
        assert!(!owner_alive(&wrong_start));
        assert!(!owner_alive("garbage"));
    }
}
