//! Builds the output relay (`src/sandbox/relay/relay.c`), a static binary that the daemon embeds
//! and mounts read-only into every sandbox. Static, so that it runs in any image or rootfs.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "src/sandbox/relay/relay.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".to_owned());
    let status = Command::new(&cc)
        .args(["-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(out.join("compilerd-relay"))
        .arg(source)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc} to build the output relay: {e}"));
    assert!(
        status.success(),
        "{cc} failed to build the output relay ({source}); a static C toolchain is needed \
         (Debian: apt-get install gcc libc6-dev)"
    );
}
