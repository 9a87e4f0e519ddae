//! A run's own limits: each may lower the language's, or raise it up to the operator's maximum;
//! above that the request is refused with a message that names the limit and the maximum.

use std::time::Duration;

use super::StageLimits;
use crate::sandbox::Limits;

/// What a request asks for; `None` keeps the language's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RunLimits {
    pub wall: Option<Duration>,
    pub cpu: Option<Duration>,
    pub memory: Option<u64>,
    pub pids: Option<u32>,
    pub output: Option<usize>,
}

/// The operator's maxima for a run's own limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Maxima {
    pub wall: Duration,
    pub cpu: Duration,
    pub memory: u64,
    pub pids: u32,
    pub output: usize,
}

impl Default for Maxima {
    fn default() -> Self {
        Maxima {
            wall: Duration::from_secs(15),
            cpu: Duration::from_secs(15),
            memory: 512 << 20,
            pids: 256,
            output: 1 << 20,
        }
    }
}

/// The limit that is over its maximum, in the words of a 400 answer.
#[derive(Debug, PartialEq, Eq)]
pub struct OverMaximum(pub String);

impl RunLimits {
    /// The stage's limits: the language's `base` with this request's changes. `names` are the
    /// request's field names for wall, CPU and memory, for the message.
    pub fn resolve(
        &self,
        base: &Limits,
        max: &Maxima,
        names: [&str; 3],
    ) -> Result<StageLimits, OverMaximum> {
        let over = |name: &str, max: String| {
            Err(OverMaximum(format!(
                "{name} cannot exceed the configured limit of {max}"
            )))
        };
        let mut limits = base.clone();
        if let Some(w) = self.wall {
            if w > max.wall {
                return over(names[0], max.wall.as_millis().to_string());
            }
            limits.timeout = w.max(Duration::from_millis(1));
        }
        if let Some(c) = self.cpu
            && c > max.cpu
        {
            return over(names[1], max.cpu.as_millis().to_string());
        }
        if let Some(m) = self.memory {
            if m > max.memory {
                return over(names[2], max.memory.to_string());
            }
            // Below a few MiB nothing starts, not even the relay: that is the floor.
            limits.memory_bytes = m.max(4 << 20);
        }
        if let Some(p) = self.pids {
            if p > max.pids {
                return over("processes", max.pids.to_string());
            }
            limits.pids = p.max(1);
        }
        if let Some(o) = self.output {
            if o > max.output {
                return over("output_max_size", max.output.to_string());
            }
            limits.max_output_bytes = o.max(1);
        }
        Ok(StageLimits {
            limits,
            cpu_time: self.cpu.map(|c| c.max(Duration::from_millis(1))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_raises_and_refuses() {
        let base = Limits::default();
        let max = Maxima::default();
        let names = ["run_timeout", "run_cpu_time", "run_memory_limit"];
        let lower = RunLimits {
            wall: Some(Duration::from_millis(100)),
            memory: Some(32 << 20),
            ..Default::default()
        };
        let s = lower.resolve(&base, &max, names).unwrap();
        assert_eq!(s.limits.timeout, Duration::from_millis(100));
        assert_eq!(s.limits.memory_bytes, 32 << 20);
        let raise = RunLimits {
            wall: Some(Duration::from_secs(10)),
            ..Default::default()
        };
        assert_eq!(
            raise.resolve(&base, &max, names).unwrap().limits.timeout,
            Duration::from_secs(10)
        );
        let too_much = RunLimits {
            memory: Some(1 << 40),
            ..Default::default()
        };
        assert_eq!(
            too_much.resolve(&base, &max, names).unwrap_err().0,
            "run_memory_limit cannot exceed the configured limit of 536870912"
        );
        assert!(
            RunLimits::default()
                .resolve(&base, &max, names)
                .unwrap()
                .cpu_time
                .is_none()
        );
    }
}
