//! (i) Programs with input, on bubblewrap: a Python stdin echo through Piston's
//! `/api/v2/execute` next to the same program through `/compile`; what measuring a run's CPU time
//! and peak memory costs; C hello world compiled and run, next to a bare `gcc` + run in the same
//! sandbox without compilerd.

use std::time::{Duration, Instant};

use super::{Daemon, bwrap_direct, ms, percentile};

/// The bench's languages, as the tests configure them (bwrap roots built by
/// scripts/setup-test-host.sh).
pub const LANGUAGES: &str = r#"
[languages.python]
main-file = "main.py"
run-command = "/usr/bin/python3 -B main.py"
[languages.c]
main-file = "main.c"
compile-command = "/usr/bin/gcc -O2 -o prog main.c -lm"
compile-keep = "prog"
run-command = "./prog"
"#;

/// A config file holding `extra` and the bench's languages; kept until dropped.
pub fn config_file(extra: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, format!("{extra}\n{LANGUAGES}").as_bytes()).unwrap();
    f
}

/// A distinct Python program that echoes its stdin (distinct: no cache answers it).
fn py_echo(tag: &str, i: usize) -> String {
    format!(
        "import sys\nsys.stdout.write(sys.stdin.read())\n# {tag} {i} {}\n",
        std::process::id()
    )
}

pub fn c_hello(tag: &str, i: usize) -> String {
    format!(
        "#include <stdio.h>\nint main(void) {{ puts(\"hello {tag} {i} {}\"); return 0; }}\n",
        std::process::id()
    )
}

fn timed(row: &mut (Vec<Duration>, usize), run: impl FnOnce() -> bool) {
    let t = Instant::now();
    if !run() {
        row.1 += 1;
    }
    row.0.push(t.elapsed());
}

fn print_row(name: &str, row: &mut (Vec<Duration>, usize)) -> Duration {
    row.0.sort();
    let p50 = percentile(&row.0, 0.5);
    println!(
        "    {name}  p50 {:>7.1} ms  p90 {:>7.1} ms  errors {}",
        ms(p50),
        ms(percentile(&row.0, 0.9)),
        row.1
    );
    p50
}

pub fn phase(quick: bool, client: &reqwest::blocking::Client) {
    let n = if quick { 5 } else { 30 };
    let config = config_file("backend = \"bwrap\"\ndefault-language = \"python\"");
    let d = Daemon::start(&["--config", config.path().to_str().unwrap()]);
    let piston = format!("http://{}/api/v2/execute", d.addr);
    let compile = |lang: &str| format!("http://{}/compile?lang={lang}", d.addr);
    let execute = |lang: &str, program: &str, stdin: &str, want: &str| {
        let body = serde_json::json!({
            "language": lang,
            "version": "*",
            "files": [{"content": program}],
            "stdin": stdin,
        });
        match client.post(&piston).json(&body).send() {
            Ok(r) if r.status() == 200 => r
                .json::<serde_json::Value>()
                .is_ok_and(|v| v["run"]["stdout"].as_str() == Some(want)),
            _ => false,
        }
    };
    let raw = |lang: &str, program: String, want: &str| match client
        .post(compile(lang))
        .body(program)
        .send()
    {
        Ok(r) if r.status() == 200 => r.text().is_ok_and(|t| t.contains(want)),
        _ => false,
    };
    let c_root =
        std::env::var("BENCH_C_ROOTFS").unwrap_or_else(|_| "/var/lib/compilerd/rootfs/c".into());
    let mut rows = [(); 5].map(|_| (Vec::new(), 0usize));
    // Interleaved, so that a slow spell of the shared machine lands on every row alike.
    for i in 0..n {
        timed(&mut rows[0], || {
            execute("python", &py_echo("piston", i), "echo me\n", "echo me\n")
        });
        timed(&mut rows[1], || raw("python", py_echo("compile", i), ""));
        let hello = c_hello("piston", i);
        let want = format!("hello piston {i} {}\n", std::process::id());
        timed(&mut rows[2], || execute("c", &hello, "", &want));
        timed(&mut rows[3], || {
            let (ok, out) = bwrap_direct(
                &c_root,
                &[
                    "/bin/sh",
                    "-c",
                    "cat > main.c && /usr/bin/gcc -O2 -o prog main.c -lm && ./prog",
                ],
                &c_hello("bare", i),
            );
            ok && out.starts_with("hello bare")
        });
        timed(&mut rows[4], || {
            raw("c", c_hello("compile", i), "hello compile")
        });
    }
    drop(d);
    println!("\n(i) programs with input, bubblewrap, {n} rounds of distinct programs:");
    let p = print_row("python stdin echo, /api/v2/execute", &mut rows[0]);
    let c = print_row("python same program, /compile     ", &mut rows[1]);
    let ratio = p.as_secs_f64() / c.as_secs_f64();
    println!(
        "    Piston / compile p50 {ratio:.2}x (target at most 1.2x): {}",
        super::verdict(ratio <= 1.2)
    );
    let ours = print_row(
        "C hello, /api/v2/execute (compile + run stages)",
        &mut rows[2],
    );
    let bare = print_row(
        "C hello, bare bwrap: gcc + run, one sandbox    ",
        &mut rows[3],
    );
    print_row(
        "C hello, /compile (one sandbox: gcc + run)     ",
        &mut rows[4],
    );
    println!(
        "    two stages over the bare gcc + run: {:+.1} ms",
        ms(ours) - ms(bare)
    );
    measurement_cost(quick);
}

/// What measuring a run costs: the relay and the bwrap backend take a run's CPU time from
/// `getrusage(RUSAGE_CHILDREN)` and its peak memory from one cgroup file, once per stage. Here
/// the same calls, timed in a loop on this machine's own memory cgroup.
fn measurement_cost(quick: bool) {
    let n = if quick { 1_000 } else { 20_000 };
    let peak = [
        "/sys/fs/cgroup/memory.peak",
        "/sys/fs/cgroup/memory/memory.max_usage_in_bytes",
    ]
    .into_iter()
    .find(|p| std::fs::read_to_string(p).is_ok());
    let t = Instant::now();
    let mut sum = 0u64;
    for _ in 0..n {
        // SAFETY: getrusage writes into the zeroed struct it is given.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
        sum = sum.wrapping_add(ru.ru_utime.tv_usec as u64);
        if let Some(p) = peak {
            sum = sum.wrapping_add(
                std::fs::read_to_string(p)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0u64),
            );
        }
    }
    let each = t.elapsed() / n;
    std::hint::black_box(sum);
    println!(
        "    measuring a run (getrusage + {}): {:.1} µs (target under 200 µs): {}",
        peak.unwrap_or("no cgroup peak file"),
        each.as_secs_f64() * 1e6,
        super::verdict(peak.is_some() && each < Duration::from_micros(200))
    );
}
