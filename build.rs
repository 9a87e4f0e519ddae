//! Builds the output relay (`src/sandbox/relay/relay.c`), a static binary that the daemon embeds
//! and mounts read-only into every sandbox. Static, so that it runs in any image or rootfs.
//!
//! With musl's `musl-gcc` (Debian: musl-tools) when it is there: a static glibc program spends
//! its start asking the CPU for its cache layout, one `cpuid` after another, and in a virtual
//! machine each of those traps to the hypervisor; the relay starts once per run. `CC` overrides
//! the choice; without musl, gcc builds it against glibc and says so.

use std::path::{Path, PathBuf};
use std::process::Command;

fn in_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

/// musl ships no kernel headers; the relay needs a few (`linux/capability.h`), taken from the
/// system's after musl's own headers.
fn kernel_header_dirs() -> Vec<String> {
    let multiarch = Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut dirs = vec!["/usr/include".to_owned()];
    if !multiarch.is_empty() && Path::new("/usr/include").join(&multiarch).is_dir() {
        dirs.push(format!("/usr/include/{multiarch}"));
    }
    dirs.into_iter()
        .flat_map(|d| ["-idirafter".to_owned(), d])
        .collect()
}

fn main() {
    let source = "src/sandbox/relay/relay.c";
    let sources = [
        source,
        "src/sandbox/relay/launch.c",
        "src/sandbox/relay/job.c",
    ];
    for file in sources
        .iter()
        .chain(&["src/sandbox/relay/launch.h", "src/sandbox/relay/job.h"])
    {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-env-changed=CC");
    println!("cargo:rerun-if-env-changed=PATH");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let (cc, extra) = match std::env::var("CC") {
        Ok(cc) => (cc, Vec::new()),
        Err(_) if in_path("musl-gcc") => ("musl-gcc".to_owned(), kernel_header_dirs()),
        Err(_) => {
            println!(
                "cargo:warning=musl-gcc not found (Debian: apt-get install musl-tools): the output relay is built with glibc, whose start costs each run more CPU in a virtual machine (docs/performance.md)"
            );
            ("gcc".to_owned(), Vec::new())
        }
    };
    let status = Command::new(&cc)
        .args(["-static", "-O2", "-Wall", "-Wextra", "-Werror"])
        .args(&extra)
        .arg("-o")
        .arg(out.join("compilerd-relay"))
        .args(sources)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc} to build the output relay: {e}"));
    assert!(
        status.success(),
        "{cc} failed to build the output relay ({source}); a static C toolchain is needed \
         (Debian: apt-get install musl-tools, or gcc libc6-dev)"
    );
}
