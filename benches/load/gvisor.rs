//! (v) The Docker backend under gVisor (`--runtime runsc`, registered by
//! scripts/setup-test-host.sh) next to the engine's default runtime (runc): cold runs at light
//! load, each once the pool has refilled, and distinct programs 8 at a time.

use super::{Daemon, concurrent, image, ms, percentile, post, sequential};

pub fn phase(cold_n: usize, wide_n: usize, client: &reqwest::blocking::Client) {
    println!(
        "\n(v) Docker under runc and under gVisor (runsc): {cold_n} cold runs at light load, then {wide_n} distinct programs 8 at a time"
    );
    for runtime in ["runc", "runsc"] {
        let image = image();
        let mut args = vec![
            "--backend",
            "docker",
            "--image",
            &image,
            "--pool-size",
            "8",
            "--max-concurrent-runs",
            "8",
        ];
        if runtime == "runsc" {
            args.extend(["--runtime", "runsc"]);
        }
        let d = Daemon::start(&args);
        let url = d.url();
        let (cold, cold_err) = sequential(
            cold_n,
            runtime,
            || d.wait_pool(8),
            |p| post(client, &url, p).0 == 200,
        );
        d.wait_pool(8);
        let (wall, wide_err) = concurrent(wide_n, 8, |i| {
            let program = format!("echo wide {runtime} {i} {}", std::process::id());
            post(client, &url, program).0 == 200
        });
        println!(
            "    {runtime:<6} cold p50 {:>7.1} ms  p90 {:>7.1} ms  errors {cold_err};  {wide_n} wide {:>6.0} ms  errors {wide_err}",
            ms(percentile(&cold, 0.5)),
            ms(percentile(&cold, 0.9)),
            ms(wall)
        );
    }
}
