//! Judge0's statuses (`GET /statuses`) and how a run's end maps onto them, as Judge0 CE 1.13.1's
//! worker does: a signal picks 7-10 or 12, an exit status other than 0 is 11 (NZEC), a limit of
//! time is 5, a sandbox failure 13.

use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(u8);

const DESCRIPTIONS: [&str; 14] = [
    "In Queue",
    "Processing",
    "Accepted",
    "Wrong Answer",
    "Time Limit Exceeded",
    "Compilation Error",
    "Runtime Error (SIGSEGV)",
    "Runtime Error (SIGXFSZ)",
    "Runtime Error (SIGFPE)",
    "Runtime Error (SIGABRT)",
    "Runtime Error (NZEC)",
    "Runtime Error (Other)",
    "Internal Error",
    "Exec Format Error",
];

impl Status {
    pub const IN_QUEUE: Status = Status(1);
    pub const PROCESSING: Status = Status(2);
    pub const ACCEPTED: Status = Status(3);
    pub const WRONG_ANSWER: Status = Status(4);
    pub const TIME_LIMIT: Status = Status(5);
    pub const COMPILATION_ERROR: Status = Status(6);
    pub const NZEC: Status = Status(11);
    pub const INTERNAL_ERROR: Status = Status(13);

    /// An id out of range reads as an internal error: a client must never see a status it
    /// cannot parse.
    pub fn from_id(id: u8) -> Status {
        if (1..=14).contains(&id) {
            Status(id)
        } else {
            Status::INTERNAL_ERROR
        }
    }

    /// The status of a run ended by `signal`.
    pub fn of_signal(signal: i32) -> Status {
        Status(match signal {
            libc::SIGSEGV => 7,
            libc::SIGXFSZ => 8,
            libc::SIGFPE => 9,
            libc::SIGABRT => 10,
            _ => 12,
        })
    }

    pub fn id(self) -> u8 {
        self.0
    }

    pub fn description(self) -> &'static str {
        DESCRIPTIONS[usize::from(self.0 - 1)]
    }

    /// `GET /statuses`.
    pub fn all() -> Value {
        Value::Array(
            (1..=14)
                .map(|id| json!({"id": id, "description": Status(id).description()}))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_and_descriptions() {
        assert_eq!(Status::of_signal(11).id(), 7);
        assert_eq!(Status::of_signal(25).id(), 8);
        assert_eq!(Status::of_signal(8).id(), 9);
        assert_eq!(Status::of_signal(6).id(), 10);
        assert_eq!(Status::of_signal(9).id(), 12);
        assert_eq!(Status::NZEC.description(), "Runtime Error (NZEC)");
        assert_eq!(Status::from_id(0), Status::INTERNAL_ERROR);
        assert_eq!(Status::all().as_array().unwrap().len(), 14);
    }
}
