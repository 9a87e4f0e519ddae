//! A submission as it is stored (in-process or in Redis, as JSON) and as Judge0 renders it: the
//! request's fields, its status, and once judged its results. Rendering follows Judge0 CE
//! 1.13.1's serializer: the `fields` it names, text fields in base64 with Ruby's line breaks when
//! asked, times as decimal strings in seconds, memory in KB, timestamps `YYYY-MM-DDTHH:MM:SS.fffZ`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::b64;
use super::status::Status;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub token: String,
    pub language_id: u32,
    pub language_name: String,
    pub status_id: u8,
    /// Milliseconds since the epoch.
    pub created_at: u64,
    pub finished_at: Option<u64>,
    #[serde(with = "b64::opt")]
    pub source_code: Option<Vec<u8>>,
    #[serde(with = "b64::opt")]
    pub stdin: Option<Vec<u8>>,
    #[serde(with = "b64::opt")]
    pub expected_output: Option<Vec<u8>>,
    #[serde(with = "b64::opt")]
    pub additional_files: Option<Vec<u8>>,
    pub compiler_options: Option<String>,
    pub command_line_arguments: Option<String>,
    pub callback_url: Option<String>,
    pub number_of_runs: u32,
    pub cpu_time_limit: f64,
    pub cpu_extra_time: f64,
    pub wall_time_limit: f64,
    pub memory_limit: u64,
    pub stack_limit: u64,
    pub max_processes_and_or_threads: u32,
    pub enable_per_process_and_thread_time_limit: bool,
    pub enable_per_process_and_thread_memory_limit: bool,
    pub max_file_size: u64,
    pub redirect_stderr_to_stdout: bool,
    pub enable_network: bool,
    #[serde(with = "b64::opt")]
    pub stdout: Option<Vec<u8>>,
    #[serde(with = "b64::opt")]
    pub stderr: Option<Vec<u8>>,
    #[serde(with = "b64::opt")]
    pub compile_output: Option<Vec<u8>>,
    pub message: Option<String>,
    pub exit_code: Option<i64>,
    pub exit_signal: Option<i32>,
    /// Seconds.
    pub time: Option<f64>,
    pub wall_time: Option<f64>,
    /// KB.
    pub memory: Option<u64>,
    /// How many times a daemon took it over from one that stopped while it ran.
    #[serde(default)]
    pub takeovers: u32,
}

/// Every field `fields=*` renders (Judge0 CE 1.13.1's serializer), in its order.
pub const ALL_FIELDS: &[&str] = &[
    "source_code",
    "language_id",
    "stdin",
    "expected_output",
    "stdout",
    "status_id",
    "created_at",
    "finished_at",
    "time",
    "memory",
    "stderr",
    "token",
    "number_of_runs",
    "cpu_time_limit",
    "cpu_extra_time",
    "wall_time_limit",
    "memory_limit",
    "stack_limit",
    "max_processes_and_or_threads",
    "enable_per_process_and_thread_time_limit",
    "enable_per_process_and_thread_memory_limit",
    "max_file_size",
    "compile_output",
    "exit_code",
    "exit_signal",
    "message",
    "wall_time",
    "compiler_options",
    "command_line_arguments",
    "redirect_stderr_to_stdout",
    "callback_url",
    "additional_files",
    "enable_network",
    "status",
    "language",
];

/// What Judge0 renders without `fields`.
pub const DEFAULT_FIELDS: &[&str] = &[
    "token",
    "time",
    "memory",
    "stdout",
    "stderr",
    "compile_output",
    "message",
    "status",
];

/// The field names of a `fields` parameter, or the unknown ones (Judge0's 400).
pub fn parse_fields(param: Option<&str>) -> Result<Vec<&'static str>, Vec<String>> {
    let Some(param) = param.filter(|p| !p.trim().is_empty()) else {
        return Ok(DEFAULT_FIELDS.to_vec());
    };
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    for f in param.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        if f == "*" {
            out.extend_from_slice(ALL_FIELDS);
        } else if let Some(known) = ALL_FIELDS.iter().find(|k| **k == f) {
            out.push(*known);
        } else {
            unknown.push(f.to_owned());
        }
    }
    if unknown.is_empty() {
        Ok(out)
    } else {
        Err(unknown)
    }
}

/// `2024-04-18T10:00:00.123Z`.
pub fn timestamp(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A text field that is not UTF-8 while base64 was not asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct NotUtf8;

fn seconds(s: Option<f64>) -> Value {
    s.map_or(Value::Null, |s| Value::String(format!("{s:.3}")))
}

impl Record {
    pub fn status(&self) -> Status {
        Status::from_id(self.status_id)
    }

    pub fn is_done(&self) -> bool {
        self.status_id > 2
    }

    fn text(v: &Option<Vec<u8>>, base64: bool) -> Result<Value, NotUtf8> {
        match v {
            None => Ok(Value::Null),
            Some(b) if base64 => Ok(Value::String(b64::encode_lines(b))),
            Some(b) => String::from_utf8(b.clone())
                .map(Value::String)
                .map_err(|_| NotUtf8),
        }
    }

    /// The submission with `fields`, as Judge0 renders it.
    pub fn render(&self, fields: &[&str], base64: bool) -> Result<Value, NotUtf8> {
        let mut out = Map::new();
        for &f in fields {
            let v = match f {
                "token" => json!(self.token),
                "source_code" => Self::text(&self.source_code, base64)?,
                "stdin" => Self::text(&self.stdin, base64)?,
                "expected_output" => Self::text(&self.expected_output, base64)?,
                "stdout" => Self::text(&self.stdout, base64)?,
                "stderr" => Self::text(&self.stderr, base64)?,
                "compile_output" => Self::text(&self.compile_output, base64)?,
                // Always base64, as Judge0 keeps it.
                "additional_files" => Self::text(&self.additional_files, true)?,
                "message" => match &self.message {
                    None => Value::Null,
                    Some(m) if base64 => json!(b64::encode_lines(m.as_bytes())),
                    Some(m) => json!(m),
                },
                "language_id" => json!(self.language_id),
                "language" => json!({"id": self.language_id, "name": self.language_name}),
                "status_id" => json!(self.status_id),
                "status" => {
                    let s = self.status();
                    json!({"id": s.id(), "description": s.description()})
                }
                "created_at" => json!(timestamp(self.created_at)),
                "finished_at" => self
                    .finished_at
                    .map_or(Value::Null, |t| json!(timestamp(t))),
                "time" => seconds(self.time),
                "wall_time" => seconds(self.wall_time),
                "memory" => json!(self.memory),
                "exit_code" => json!(self.exit_code),
                "exit_signal" => json!(self.exit_signal),
                "number_of_runs" => json!(self.number_of_runs),
                "cpu_time_limit" => json!(format!("{:.1}", self.cpu_time_limit)),
                "cpu_extra_time" => json!(format!("{:.1}", self.cpu_extra_time)),
                "wall_time_limit" => json!(format!("{:.1}", self.wall_time_limit)),
                "memory_limit" => json!(self.memory_limit),
                "stack_limit" => json!(self.stack_limit),
                "max_processes_and_or_threads" => json!(self.max_processes_and_or_threads),
                "enable_per_process_and_thread_time_limit" => {
                    json!(self.enable_per_process_and_thread_time_limit)
                }
                "enable_per_process_and_thread_memory_limit" => {
                    json!(self.enable_per_process_and_thread_memory_limit)
                }
                "max_file_size" => json!(self.max_file_size),
                "compiler_options" => json!(self.compiler_options),
                "command_line_arguments" => json!(self.command_line_arguments),
                "redirect_stderr_to_stdout" => json!(self.redirect_stderr_to_stdout),
                "callback_url" => json!(self.callback_url),
                "enable_network" => json!(self.enable_network),
                _ => continue,
            };
            out.insert(f.to_owned(), v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_formats() {
        assert_eq!(parse_fields(None).unwrap(), DEFAULT_FIELDS);
        assert_eq!(parse_fields(Some("*")).unwrap().len(), ALL_FIELDS.len());
        assert_eq!(
            parse_fields(Some("stdout,bogus")).unwrap_err(),
            vec!["bogus".to_owned()]
        );
        assert_eq!(timestamp(1_713_434_400_123), "2024-04-18T10:00:00.123Z");
        assert_eq!(timestamp(1_713_434_400_000), "2024-04-18T10:00:00.000Z");
        let r = Record {
            token: "t".into(),
            status_id: 3,
            stdout: Some(b"hi\n".to_vec()),
            time: Some(0.0021),
            memory: Some(3256),
            ..Default::default()
        };
        let v = r
            .render(&["stdout", "time", "status", "memory"], true)
            .unwrap();
        assert_eq!(
            v,
            json!({"stdout": "aGkK\n", "time": "0.002", "memory": 3256,
                   "status": {"id": 3, "description": "Accepted"}})
        );
        let bad = Record {
            stdout: Some(vec![0xff]),
            ..r
        };
        assert_eq!(bad.render(&["stdout"], false), Err(NotUtf8));
        let stored = serde_json::to_string(&bad).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&stored).unwrap(), bad);
    }
}
