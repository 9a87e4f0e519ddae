//! Judge0 language ids: each configured language that takes run requests gets the id Judge0 CE
//! 1.13.1 gives it (clients hard-code them: the official SDK maps `judge0.PYTHON` to 71), and a
//! name in Judge0's style with the image's own version, e.g. `Python (3.11.2)`.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::languages::{Language, Languages};
use crate::run::Stages;

/// Judge0 CE 1.13.1's id of a language, by our language name.
pub fn judge0_id(name: &str) -> Option<u32> {
    Some(match name {
        "python" | "python3" => 71,
        "c" => 50,
        "go" | "golang" => 60,
        "bash" | "sh" => 46,
        "c++" | "cpp" => 54,
        "javascript" | "js" | "node" => 63,
        "rust" => 73,
        "java" => 62,
        "ruby" => 72,
        "php" => 68,
        "typescript" => 74,
        "lua" => 64,
        "perl" => 85,
        "haskell" => 61,
        "kotlin" => 78,
        _ => return None,
    })
}

/// Judge0's multi-file language: a zip's `compile` and `run` scripts, no source file.
pub const MULTI_FILE: u32 = 89;

/// How the multi-file language runs a program: the zip's `compile` script when it has one, then
/// its `run` script, each by /bin/sh in the language's sandbox. What the compile leaves at the
/// top of the working directory is kept for the run (`*`), since the scripts name their own
/// outputs.
pub fn multi_file_stages(compiles: bool) -> Stages {
    let sh = |script: &str| vec!["/bin/sh".to_owned(), script.to_owned()];
    Stages {
        main_file: "run".into(),
        compile: compiles.then(|| sh("compile")),
        keep: vec![crate::run::KEEP_ALL.into()],
        run: sh("run"),
    }
}

/// The version number of a toolchain as the image records it (`python 3.11.2` → `3.11.2`).
pub fn version_number(version: &str) -> String {
    crate::languages::version_digits(version).unwrap_or_else(|| "unknown".into())
}

/// `Python (3.11.2)`, `C (GCC 12.2.0)`, as Judge0 names its languages.
fn display_name(name: &str, version: &str) -> String {
    let v = version_number(version);
    match name {
        "c" => format!("C (GCC {v})"),
        "c++" | "cpp" => format!("C++ (GCC {v})"),
        "python" | "python3" => format!("Python ({v})"),
        "go" | "golang" => format!("Go ({v})"),
        "bash" => format!("Bash ({v})"),
        "sh" => format!("Bash (busybox {v})"),
        "javascript" | "js" | "node" => format!("JavaScript (Node.js {v})"),
        other => {
            let mut c = other.chars();
            let first = c.next().map(|f| f.to_ascii_uppercase()).unwrap_or(' ');
            format!("{first}{} ({v})", c.as_str())
        }
    }
}

/// One language as Judge0 lists it.
pub struct Entry {
    pub id: u32,
    pub name: String,
    pub lang: Arc<Language>,
}

/// The languages the API offers, sorted by name as Judge0 lists them.
pub struct Table {
    pub entries: Vec<Entry>,
}

impl Table {
    pub fn new(languages: &Languages) -> Table {
        let mut entries: Vec<Entry> = Vec::new();
        for l in languages.iter() {
            let Some(id) = l.judge0_id.or_else(|| judge0_id(&l.name)) else {
                continue;
            };
            // The multi-file language brings its own stages; every other needs the language's.
            if id != MULTI_FILE && l.stages.is_none() {
                continue;
            }
            // Two languages on one id: the first in name order keeps it.
            if entries.iter().any(|e| e.id == id) {
                continue;
            }
            entries.push(Entry {
                id,
                name: if id == MULTI_FILE {
                    "Multi-file program".to_owned()
                } else {
                    display_name(&l.name, &l.version)
                },
                lang: l.clone(),
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Table { entries }
    }

    pub fn get(&self, id: u32) -> Option<&Entry> {
        self.entries.iter().find(|e| e.id == id)
    }

    /// `GET /languages`.
    pub fn listing(&self) -> Value {
        Value::Array(
            self.entries
                .iter()
                .map(|e| json!({"id": e.id, "name": e.name}))
                .collect(),
        )
    }

    /// `GET /languages/all`.
    pub fn all(&self) -> Value {
        Value::Array(
            self.entries
                .iter()
                .map(|e| json!({"id": e.id, "name": e.name, "is_archived": false}))
                .collect(),
        )
    }

    /// `GET /languages/{id}`.
    pub fn detail(&self, id: u32) -> Option<Value> {
        let e = self.get(id)?;
        let multi = multi_file_stages(true);
        let stages = if id == MULTI_FILE {
            &multi
        } else {
            e.lang.stages.as_ref()?
        };
        Some(json!({
            "id": e.id,
            "name": e.name,
            "is_archived": false,
            "source_file": stages.main_file,
            "compile_cmd": stages.compile.as_ref().map(|c| c.join(" ")),
            "run_cmd": stages.run.join(" "),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        assert_eq!(judge0_id("python"), Some(71));
        assert_eq!(judge0_id("c"), Some(50));
        assert_eq!(judge0_id("go"), Some(60));
        assert_eq!(judge0_id("bash"), Some(46));
        assert_eq!(judge0_id("default"), None);
        assert_eq!(display_name("python", "python 3.11.2"), "Python (3.11.2)");
        assert_eq!(display_name("c", "gcc 12.2.0"), "C (GCC 12.2.0)");
        assert_eq!(display_name("go", "go 1.19.8"), "Go (1.19.8)");
        assert_eq!(display_name("rust", ""), "Rust (unknown)");
    }
}
