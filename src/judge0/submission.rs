//! A submission's JSON, checked as Judge0 checks it, into a `Record` (status In Queue): every
//! failure is one line of a 422 hash of field → messages, in Judge0's words where it has them.
//! Stricter than Judge0 on purpose: invalid base64 is refused rather than read leniently,
//! `enable_network: true` is refused, a callback may only go to an allow-listed host and compiler
//! options only come from an allow-list.

use serde_json::{Map, Value, json};

use super::b64;
use super::langs::{MULTI_FILE, Table};
use super::record::{Record, now_ms};
use crate::config::Judge0Config;
use crate::run::Bounds;

/// Judge0's own bounds, where ours have none.
const MAX_OPTION_CHARS: usize = 512;
pub const MAX_NUMBER_OF_RUNS: u32 = 20;
pub const MAX_CPU_EXTRA_TIME: f64 = 5.0;
pub const MAX_STACK_KB: u64 = 128_000;
pub const MAX_FILE_SIZE_KB: u64 = 4096;
pub const DEFAULT_STACK_KB: u64 = 64_000;
pub const DEFAULT_FILE_SIZE_KB: u64 = 1024;
/// The smallest memory limit Judge0 takes, in KB.
pub const MIN_MEMORY_KB: u64 = 2048;

#[derive(Default, Debug)]
pub struct FieldErrors(pub Map<String, Value>);

impl FieldErrors {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        let list = self
            .0
            .entry(field.to_owned())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(l) = list {
            l.push(Value::String(message.into()));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn to_json(&self) -> Value {
        Value::Object(self.0.clone())
    }
}

pub struct Checks<'a> {
    pub table: &'a Table,
    pub config: &'a Judge0Config,
    pub bounds: Bounds,
}

fn number(errors: &mut FieldErrors, body: &Map<String, Value>, field: &str) -> Option<f64> {
    match body.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) if s.trim().parse::<f64>().is_ok() => s.trim().parse().ok(),
        Some(_) => {
            errors.add(field, "is not a number");
            None
        }
    }
}

/// A number within [min, max]; the language's default when absent.
fn ranged(
    errors: &mut FieldErrors,
    body: &Map<String, Value>,
    field: &str,
    default: f64,
    (min, max): (f64, f64),
) -> f64 {
    let Some(v) = number(errors, body, field) else {
        return default;
    };
    if v < min {
        errors.add(field, format!("must be greater than or equal to {min}"));
    } else if v > max {
        errors.add(field, format!("must be less than or equal to {max}"));
    }
    v
}

fn flag(errors: &mut FieldErrors, body: &Map<String, Value>, field: &str) -> bool {
    match body.get(field) {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
        Some(_) => {
            errors.add(field, "is not a boolean");
            false
        }
    }
}

fn text(
    errors: &mut FieldErrors,
    body: &Map<String, Value>,
    field: &str,
    base64: bool,
    max: usize,
) -> Option<Vec<u8>> {
    let s = match body.get(field) {
        None | Some(Value::Null) => return None,
        Some(Value::String(s)) => s,
        Some(_) => {
            errors.add(field, "is not a string");
            return None;
        }
    };
    let bytes = if base64 {
        match b64::decode(s) {
            Some(b) => b,
            None => {
                errors.add(field, "is not valid base64");
                return None;
            }
        }
    } else {
        s.clone().into_bytes()
    };
    if bytes.len() > max {
        errors.add(field, format!("is too long (maximum is {max} bytes)"));
        return None;
    }
    Some(bytes)
}

fn option_string(
    errors: &mut FieldErrors,
    body: &Map<String, Value>,
    field: &str,
) -> Option<String> {
    match body.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() > MAX_OPTION_CHARS => {
            errors.add(
                field,
                format!("is too long (maximum is {MAX_OPTION_CHARS} characters)"),
            );
            None
        }
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.add(field, "is not a string");
            None
        }
    }
}

/// The host of an `http://` URL (callbacks are sent over plain HTTP only).
fn url_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => host_port.split(':').next()?,
    };
    (!host.is_empty()).then_some(host)
}

/// Judge0 strips these from options and arguments before they reach a shell; we keep the rule.
pub fn strip_shell(s: &str) -> String {
    s.chars().filter(|c| !"$&;<>|`".contains(*c)).collect()
}

impl Checks<'_> {
    /// Decodes one submission; `token` is the one it gets if valid.
    pub fn decode(&self, body: &Value, base64: bool, token: String) -> Result<Record, FieldErrors> {
        let mut e = FieldErrors::default();
        let Value::Object(body) = body else {
            e.add("submission", "must be a JSON object");
            return Err(e);
        };
        let b = &self.bounds;
        let entry = match body.get("language_id") {
            None | Some(Value::Null) => {
                e.add("language_id", "can't be blank");
                None
            }
            Some(v) => match v.as_u64().or_else(|| v.as_str()?.trim().parse().ok()) {
                Some(id) => {
                    let found = u32::try_from(id).ok().and_then(|id| self.table.get(id));
                    if found.is_none() {
                        e.add(
                            "language_id",
                            format!("language with id {id} doesn't exist"),
                        );
                    }
                    found
                }
                None => {
                    e.add("language_id", "is not a number");
                    None
                }
            },
        };
        let multi = entry.is_some_and(|en| en.id == MULTI_FILE);
        let source_code = text(&mut e, body, "source_code", base64, b.max_file_bytes);
        let blank = source_code.as_ref().is_none_or(|s| s.is_empty());
        if multi && !blank {
            e.add("source_code", "must be blank for a multi-file program");
        } else if !multi && blank && !e.0.contains_key("source_code") {
            e.add("source_code", "can't be blank");
        }
        let stdin = text(&mut e, body, "stdin", base64, b.max_stdin_bytes);
        let expected_output = text(&mut e, body, "expected_output", base64, b.max_stdin_bytes);
        // Always base64, whatever base64_encoded says (as Judge0).
        let additional_files = text(&mut e, body, "additional_files", true, b.max_total_bytes);
        if multi && additional_files.is_none() && !e.0.contains_key("additional_files") {
            e.add(
                "additional_files",
                "can't be blank for a multi-file program",
            );
        }
        if let Some(zip) = &additional_files {
            match super::zip::extract(zip, b) {
                Err(why) => e.add("additional_files", why),
                Ok(files) if multi => {
                    if !files.iter().any(|f| f.path == "run") {
                        e.add(
                            "additional_files",
                            "must hold a run script at its root for a multi-file program",
                        );
                    }
                }
                Ok(files) => {
                    let main = entry
                        .and_then(|en| en.lang.stages.as_ref())
                        .map(|s| &s.main_file);
                    if let Some(f) = files.iter().find(|f| Some(&f.path) == main) {
                        e.add(
                            "additional_files",
                            format!("holds {:?}, the name of the main file", f.path),
                        );
                    }
                }
            }
        }
        let compiler_options = option_string(&mut e, body, "compiler_options");
        if let Some(opts) = &compiler_options {
            let compiles = entry
                .is_some_and(|en| en.lang.stages.as_ref().is_some_and(|s| s.compile.is_some()));
            if entry.is_some() && !compiles {
                e.add(
                    "compiler_options",
                    "setting compiler options is only allowed for compiled languages",
                );
            }
            for word in strip_shell(opts).split_whitespace() {
                if !self.config.compiler_options.iter().any(|o| o == word) {
                    e.add(
                        "compiler_options",
                        format!("option {word:?} is not allowed"),
                    );
                }
            }
        }
        let command_line_arguments = option_string(&mut e, body, "command_line_arguments");
        let callback_url = option_string(&mut e, body, "callback_url");
        if let Some(url) = &callback_url {
            match url_host(url) {
                None => e.add("callback_url", "is not an http:// URL"),
                Some(h)
                    if !self
                        .config
                        .callback_hosts
                        .iter()
                        .any(|a| a.eq_ignore_ascii_case(h)) =>
                {
                    e.add("callback_url", format!("host {h:?} is not allowed"))
                }
                Some(_) => {}
            }
        }
        if flag(&mut e, body, "enable_network") {
            e.add("enable_network", "enabling network is not allowed");
        }
        // Limits: the language's own by default, at most the operator's maxima.
        let (wall_default, memory_default, pids_default, max) = match entry {
            Some(en) => {
                // A language's own limit may be above what a request may ask for; its default
                // is then the most a request may ask for.
                let (l, m) = (en.lang.limits(), en.lang.maxima);
                (
                    l.timeout.min(m.wall).min(m.cpu).as_secs_f64(),
                    l.memory_bytes.min(m.memory) / 1024,
                    l.pids.min(m.pids),
                    m,
                )
            }
            None => (5.0, 128_000, 60, crate::run::Maxima::default()),
        };
        let cpu_time_limit = ranged(
            &mut e,
            body,
            "cpu_time_limit",
            wall_default,
            (0.0, max.cpu.as_secs_f64()),
        );
        let cpu_extra_time = ranged(
            &mut e,
            body,
            "cpu_extra_time",
            0.0,
            (0.0, MAX_CPU_EXTRA_TIME),
        );
        let wall_time_limit = ranged(
            &mut e,
            body,
            "wall_time_limit",
            wall_default,
            (0.001, max.wall.as_secs_f64()),
        );
        let memory_limit = ranged(
            &mut e,
            body,
            "memory_limit",
            memory_default as f64,
            (MIN_MEMORY_KB as f64, (max.memory / 1024) as f64),
        );
        let stack_limit = ranged(
            &mut e,
            body,
            "stack_limit",
            DEFAULT_STACK_KB as f64,
            (0.0, MAX_STACK_KB as f64),
        );
        let max_processes = ranged(
            &mut e,
            body,
            "max_processes_and_or_threads",
            f64::from(pids_default),
            (1.0, f64::from(max.pids)),
        );
        let max_file_size = ranged(
            &mut e,
            body,
            "max_file_size",
            DEFAULT_FILE_SIZE_KB as f64,
            (0.0, MAX_FILE_SIZE_KB as f64),
        );
        let number_of_runs = ranged(
            &mut e,
            body,
            "number_of_runs",
            1.0,
            (1.0, f64::from(MAX_NUMBER_OF_RUNS)),
        );
        let per_process_time = flag(&mut e, body, "enable_per_process_and_thread_time_limit");
        let per_process_memory = flag(&mut e, body, "enable_per_process_and_thread_memory_limit");
        let redirect = flag(&mut e, body, "redirect_stderr_to_stdout");
        if let Some(args) = &command_line_arguments {
            let n = strip_shell(args).split_whitespace().count();
            if n > b.max_args {
                e.add(
                    "command_line_arguments",
                    format!("has too many arguments (maximum is {})", b.max_args),
                );
            }
        }
        let Some(entry) = entry.filter(|_| e.is_empty()) else {
            return Err(e);
        };
        Ok(Record {
            token,
            language_id: entry.id,
            language_name: entry.name.clone(),
            status_id: 1,
            created_at: now_ms(),
            finished_at: None,
            source_code,
            stdin,
            expected_output,
            additional_files,
            compiler_options,
            command_line_arguments,
            callback_url,
            number_of_runs: number_of_runs as u32,
            cpu_time_limit,
            cpu_extra_time,
            wall_time_limit,
            memory_limit: memory_limit as u64,
            stack_limit: stack_limit as u64,
            max_processes_and_or_threads: max_processes as u32,
            enable_per_process_and_thread_time_limit: per_process_time,
            enable_per_process_and_thread_memory_limit: per_process_memory,
            max_file_size: max_file_size as u64,
            redirect_stderr_to_stdout: redirect,
            enable_network: false,
            ..Default::default()
        })
    }
}

/// `{"error": message}`, Judge0's 400 and 503 body.
pub fn error(message: &str) -> Value {
    json!({ "error": message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_urls() {
        assert_eq!(
            url_host("http://hooks.example:8080/x"),
            Some("hooks.example")
        );
        assert_eq!(url_host("http://u:p@a.b/c?d"), Some("a.b"));
        assert_eq!(url_host("https://a.b/"), None);
        assert_eq!(url_host("http://[::1]:9/"), Some("::1"));
        assert_eq!(url_host("ftp://a/"), None);
        assert_eq!(url_host("http:///x"), None);
        assert_eq!(strip_shell("-O2; rm -rf /"), "-O2 rm -rf /");
    }
}
