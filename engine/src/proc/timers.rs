//! `/proc/PID/timers`: the POSIX timers of a process, four lines each
//! (`ID:`, `signal: SIGNO/SIGVAL`, `notify: KIND/pid.N` or `KIND/tid.N`,
//! `ClockID:`).

use super::read::Target;
use super::{ParseError, ProcError};

/// `SIGEV_*` values of `<asm-generic/siginfo.h>`.
pub const SIGEV_SIGNAL: i32 = 0;
pub const SIGEV_NONE: i32 = 1;
pub const SIGEV_THREAD: i32 = 2;
pub const SIGEV_THREAD_ID: i32 = 4;

/// One timer as /proc shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcTimer {
    pub id: i32,
    pub signo: i32,
    pub sigval: u64,
    /// `SIGEV_*`, with [`SIGEV_THREAD_ID`] when it names a thread.
    pub notify: i32,
    /// The thread (`tid.N`) or process (`pid.N`) it notifies.
    pub target: i32,
    pub clockid: i32,
}

/// Parses the whole file.
pub fn parse_timers(text: &str) -> Result<Vec<ProcTimer>, ParseError> {
    let mut out: Vec<ProcTimer> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = || ParseError::new(i + 1, format!("bad line '{line}'"));
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if key == "ID" {
            out.push(ProcTimer {
                id: value.parse().map_err(|_| bad())?,
                ..Default::default()
            });
            continue;
        }
        let t = out.last_mut().ok_or_else(bad)?;
        match key {
            "signal" => {
                let (signo, val) = value.split_once('/').ok_or_else(bad)?;
                t.signo = signo.parse().map_err(|_| bad())?;
                t.sigval = u64::from_str_radix(val, 16).map_err(|_| bad())?;
            }
            "notify" => {
                let (kind, who) = value.split_once('/').ok_or_else(bad)?;
                let base = match kind {
                    "signal" => SIGEV_SIGNAL,
                    "none" => SIGEV_NONE,
                    "thread" => SIGEV_THREAD,
                    _ => return Err(bad()),
                };
                let (scope, n) = who.split_once('.').ok_or_else(bad)?;
                t.notify = match scope {
                    "tid" => base | SIGEV_THREAD_ID,
                    "pid" => base,
                    _ => return Err(bad()),
                };
                t.target = n.parse().map_err(|_| bad())?;
            }
            "ClockID" => t.clockid = value.parse().map_err(|_| bad())?,
            _ => {}
        }
    }
    Ok(out)
}

/// Reads `/proc/PID/timers`.
pub fn read_timers(pid: i32) -> Result<Vec<ProcTimer>, ProcError> {
    Target::process(pid).parse("timers", 4096, parse_timers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timers() {
        // From the development machine: a SIGEV_THREAD_ID timer and a plain one.
        let text = "ID: 1\nsignal: 37/0000000000000055\nnotify: signal/tid.15752\nClockID: 0\nID: 0\nsignal: 36/0000000000001234\nnotify: none/pid.15752\nClockID: 1\n";
        let timers = parse_timers(text).unwrap();
        assert_eq!(
            timers,
            vec![
                ProcTimer {
                    id: 1,
                    signo: 37,
                    sigval: 0x55,
                    notify: SIGEV_THREAD_ID,
                    target: 15752,
                    clockid: 0
                },
                ProcTimer {
                    id: 0,
                    signo: 36,
                    sigval: 0x1234,
                    notify: SIGEV_NONE,
                    target: 15752,
                    clockid: 1
                },
            ]
        );
        assert!(parse_timers("signal: 1/0\n").is_err());
        assert!(parse_timers("ID: 1\nnotify: bogus/pid.1\n").is_err());
        assert_eq!(parse_timers("").unwrap(), vec![]);
    }
}
