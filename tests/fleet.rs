//! The fleet drill (scripts/fleet-drill.sh) with this build's binary: Redis, haproxy and two
//! compilerd daemons on loopback; sharing, a self-halt under load, Redis and a Cluster node
//! stopped under load. The script prints its checks and figures; any failed check fails this.

use std::process::Command;

#[test]
fn fleet_drill() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/fleet-drill.sh");
    let out = Command::new("bash")
        .arg(script)
        .env("COMPILERD", env!("CARGO_BIN_EXE_compilerd"))
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the drill failed:\n{stdout}");
    let figures = stdout
        .lines()
        .find(|l| l.starts_with("FIGURES:"))
        .expect("a FIGURES line");
    assert!(figures.contains(" failed=0 "), "{figures}");
}
