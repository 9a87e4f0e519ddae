//! Judge0's information endpoints: `/about`, `/config_info` (all 39 keys Judge0 CE 1.13.1 sends,
//! which the official SDK requires, with this daemon's real limits), `/system_info`, `/workers`.

use serde_json::{Value, json};

use super::Judge0;
use super::submission::{
    DEFAULT_FILE_SIZE_KB, DEFAULT_STACK_KB, MAX_CPU_EXTRA_TIME, MAX_FILE_SIZE_KB,
    MAX_NUMBER_OF_RUNS, MAX_STACK_KB,
};
use crate::run::Maxima;
use crate::sandbox::Limits;

/// The version clients look up in their tables (the SDK knows 1.13.1).
pub const VERSION: &str = "1.13.1";

pub fn about() -> Value {
    json!({
        "version": VERSION,
        "homepage": "compilerd: a Judge0 CE 1.13.1 compatible API (see its README)",
        "source_code": "compilerd",
        "maintainer": "The compilerd developers <compilerd@invalid>",
    })
}

pub fn config_info(j: &Judge0) -> Value {
    // One language's limits stand for all: the first listed (they share the flat settings
    // unless a table sets its own).
    let (limits, max) = j
        .table
        .entries
        .first()
        .map(|e| (e.lang.limits().clone(), e.lang.maxima))
        .unwrap_or_else(|| (Limits::default(), Maxima::default()));
    let wall = limits.timeout.as_secs_f64();
    let compile_langs: Vec<Value> = if j.config.compiler_options.is_empty() {
        Vec::new()
    } else {
        j.table
            .entries
            .iter()
            .filter(|e| e.lang.stages.as_ref().is_some_and(|s| s.compile.is_some()))
            .map(|e| json!(e.name))
            .collect()
    };
    json!({
        "maintenance_mode": false,
        "enable_wait_result": true,
        "enable_compiler_options": !j.config.compiler_options.is_empty(),
        "allowed_languages_for_compile_options": compile_langs,
        "enable_command_line_arguments": true,
        "enable_submission_delete": false,
        "enable_callbacks": !j.config.callback_hosts.is_empty(),
        "callbacks_max_tries": 3,
        "callbacks_timeout": 5.0,
        "enable_additional_files": true,
        "max_queue_size": j.config.max_queue,
        "cpu_time_limit": wall,
        "max_cpu_time_limit": max.cpu.as_secs_f64(),
        "cpu_extra_time": 0.0,
        "max_cpu_extra_time": MAX_CPU_EXTRA_TIME,
        "wall_time_limit": wall,
        "max_wall_time_limit": max.wall.as_secs_f64(),
        "memory_limit": limits.memory_bytes / 1024,
        "max_memory_limit": max.memory / 1024,
        "stack_limit": DEFAULT_STACK_KB,
        "max_stack_limit": MAX_STACK_KB,
        "max_processes_and_or_threads": limits.pids,
        "max_max_processes_and_or_threads": max.pids,
        "enable_per_process_and_thread_time_limit": false,
        "allow_enable_per_process_and_thread_time_limit": true,
        "enable_per_process_and_thread_memory_limit": false,
        "allow_enable_per_process_and_thread_memory_limit": true,
        "max_file_size": DEFAULT_FILE_SIZE_KB,
        "max_max_file_size": MAX_FILE_SIZE_KB,
        "number_of_runs": 1,
        "max_number_of_runs": MAX_NUMBER_OF_RUNS,
        "redirect_stderr_to_stdout": false,
        "max_extract_size": crate::run::Bounds::default().max_total_bytes / 1024,
        "enable_batched_submissions": true,
        "max_submission_batch_size": super::api::MAX_BATCH,
        "submission_cache_duration": 0.0,
        "use_docs_as_homepage": false,
        "allow_enable_network": false,
        "enable_network": false,
    })
}

/// `lscpu`-like pairs and memory, as Judge0's flat string map.
pub fn system_info() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kb = |key: &str| {
        let v = field(&meminfo, key);
        let n: f64 = v
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        format!("{:.1}G", n / 1024.0 / 1024.0)
    };
    json!({
        "Architecture": std::env::consts::ARCH,
        "CPU(s)": cpus.to_string(),
        "Model name": field(&cpuinfo, "model name"),
        "Mem": kb("MemTotal"),
        "Swap": kb("SwapTotal"),
    })
}

pub async fn workers(j: &Judge0) -> Value {
    let (slots, working) = j.workers();
    let size = j.queue.stats().await.map_or(0, |(n, _)| n);
    json!([{
        "queue": "default",
        "size": size,
        "available": slots,
        "idle": slots.saturating_sub(working),
        "working": working,
        "paused": 0,
        "failed": 0,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_names_a_version_the_sdk_knows() {
        assert_eq!(about()["version"], "1.13.1");
        for k in ["homepage", "source_code", "maintainer"] {
            assert!(about()[k].is_string());
        }
        assert!(system_info()["CPU(s)"].is_string());
    }
}
