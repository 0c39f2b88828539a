//! `/proc/PID/stat` and `/proc/PID/task/TID/stat`: one line of space-separated fields
//! (numbered as in proc(5)). The command name (field 2) is in parentheses and may itself
//! contain spaces and parentheses, so the line is split at the *last* `)`.

use super::read::Target;
use super::{ParseError, ProcError};

/// The fields of `/proc/PID/stat` that checkpointing uses (proc(5) field numbers in
/// brackets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    /// (1) Process or thread id.
    pub pid: i32,
    /// (2) Command name, without the parentheses.
    pub comm: String,
    /// (3) State letter: R, S, D, T, t, Z, X, I...
    pub state: char,
    /// (4) Parent pid.
    pub ppid: i32,
    /// (5) Process group id.
    pub pgrp: i32,
    /// (6) Session id.
    pub session: i32,
    /// (7) Controlling terminal device number.
    pub tty_nr: i32,
    /// (8) Foreground process group of the terminal, -1 without one.
    pub tpgid: i32,
    /// (9) Kernel flags (PF_*).
    pub flags: u32,
    /// (10) Minor faults.
    pub minflt: u64,
    /// (12) Major faults.
    pub majflt: u64,
    /// (14) User time in clock ticks.
    pub utime: u64,
    /// (15) System time in clock ticks.
    pub stime: u64,
    /// (18) Scheduling priority as the kernel shows it.
    pub priority: i64,
    /// (19) Nice value.
    pub nice: i64,
    /// (20) Number of threads.
    pub num_threads: i64,
    /// (22) Start time after boot, in clock ticks.
    pub start_time: u64,
    /// (23) Virtual memory size in bytes.
    pub vsize: u64,
    /// (24) Resident set size in pages.
    pub rss: i64,
    /// (25) RSS soft limit in bytes.
    pub rsslim: u64,
    /// (26) Start of the code segment.
    pub start_code: u64,
    /// (27) End of the code segment.
    pub end_code: u64,
    /// (28) Bottom of the main stack.
    pub start_stack: u64,
    /// (38) Signal sent to the parent when this task dies.
    pub exit_signal: i32,
    /// (39) CPU last run on.
    pub processor: i32,
    /// (40) Real-time priority.
    pub rt_priority: u32,
    /// (41) Scheduling policy (SCHED_*).
    pub policy: u32,
    /// (45) Start of the data segment.
    pub start_data: u64,
    /// (46) End of the data segment.
    pub end_data: u64,
    /// (47) Start of the heap (brk base).
    pub start_brk: u64,
    /// (48) Start of the argv strings.
    pub arg_start: u64,
    /// (49) End of the argv strings.
    pub arg_end: u64,
    /// (50) Start of the environment strings.
    pub env_start: u64,
    /// (51) End of the environment strings.
    pub env_end: u64,
    /// (52) Exit status in waitpid form.
    pub exit_code: i32,
}

/// Parses a stat line.
pub fn parse_stat(text: &str) -> Result<Stat, ParseError> {
    let bad = |msg: String| ParseError::new(1, msg);
    let line = text.trim_end_matches('\n');
    let open = line
        .find(" (")
        .ok_or_else(|| bad(format!("no '(comm)' in '{line}'")))?;
    let close = line
        .rfind(')')
        .filter(|&c| c > open)
        .ok_or_else(|| bad(format!("no '(comm)' in '{line}'")))?;
    let pid = line[..open]
        .parse()
        .map_err(|_| bad(format!("bad pid '{}'", &line[..open])))?;
    let comm = line[open + 2..close].to_owned();
    // rest[0] is field 3.
    let rest: Vec<&str> = line[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize| -> Result<&str, ParseError> {
        rest.get(n - 3)
            .copied()
            .ok_or_else(|| bad(format!("field {n} missing")))
    };
    fn num<T: std::str::FromStr>(text: &str, n: usize) -> Result<T, ParseError> {
        text.parse()
            .map_err(|_| ParseError::new(1, format!("bad field {n} '{text}'")))
    }
    let f = |n: usize| field(n).and_then(|t| num::<i64>(t, n));
    let u = |n: usize| field(n).and_then(|t| num::<u64>(t, n));
    let i32_of = |n: usize| field(n).and_then(|t| num::<i32>(t, n));
    let u32_of = |n: usize| field(n).and_then(|t| num::<u32>(t, n));
    let state_text = field(3)?;
    let mut chars = state_text.chars();
    let state = match (chars.next(), chars.next()) {
        (Some(c), None) => c,
        _ => return Err(bad(format!("bad state '{state_text}'"))),
    };
    Ok(Stat {
        pid,
        comm,
        state,
        ppid: i32_of(4)?,
        pgrp: i32_of(5)?,
        session: i32_of(6)?,
        tty_nr: i32_of(7)?,
        tpgid: i32_of(8)?,
        flags: u32_of(9)?,
        minflt: u(10)?,
        majflt: u(12)?,
        utime: u(14)?,
        stime: u(15)?,
        priority: f(18)?,
        nice: f(19)?,
        num_threads: f(20)?,
        start_time: u(22)?,
        vsize: u(23)?,
        rss: f(24)?,
        rsslim: u(25)?,
        start_code: u(26)?,
        end_code: u(27)?,
        start_stack: u(28)?,
        exit_signal: i32_of(38)?,
        processor: i32_of(39)?,
        rt_priority: u32_of(40)?,
        policy: u32_of(41)?,
        start_data: u(45)?,
        end_data: u(46)?,
        start_brk: u(47)?,
        arg_start: u(48)?,
        arg_end: u(49)?,
        env_start: u(50)?,
        env_end: u(51)?,
        exit_code: i32_of(52)?,
    })
}

/// Reads `/proc/PID/stat`.
pub fn read_stat(pid: i32) -> Result<Stat, ProcError> {
    Target::process(pid).parse("stat", 512, parse_stat)
}

/// Reads `/proc/PID/task/TID/stat`.
pub fn read_task_stat(pid: i32, tid: i32) -> Result<Stat, ProcError> {
    Target::thread(pid, tid).parse("stat", 512, parse_stat)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/self/stat` of `cat` on the development machine (kernel 6.18).
    const FIXTURE: &str = "4722 (cat) R 4719 4719 4106 0 -1 4194304 99 0 0 0 0 0 0 0 20 0 1 0 51460 3133440 360 18446744073709551615 94859174469632 94859174489513 140731151131744 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 94859174505520 94859174507136 94860120543232 140731151133411 140731151133431 140731151133431 140731151134699 0\n";

    #[test]
    fn parses_real_stat() {
        let s = parse_stat(FIXTURE).unwrap();
        assert_eq!((s.pid, s.comm.as_str(), s.state), (4722, "cat", 'R'));
        assert_eq!(
            (s.ppid, s.pgrp, s.session, s.tty_nr, s.tpgid),
            (4719, 4719, 4106, 0, -1)
        );
        assert_eq!(s.flags, 4194304);
        assert_eq!((s.priority, s.nice, s.num_threads), (20, 0, 1));
        assert_eq!(s.start_time, 51460);
        assert_eq!(s.rsslim, u64::MAX);
        assert_eq!((s.start_code, s.end_code), (94859174469632, 94859174489513));
        assert_eq!(s.start_stack, 140731151131744);
        assert_eq!(s.exit_signal, 17);
        assert_eq!(
            (s.start_data, s.end_data, s.start_brk),
            (94859174505520, 94859174507136, 94860120543232)
        );
        assert_eq!((s.arg_start, s.arg_end), (140731151133411, 140731151133431));
        assert_eq!((s.env_start, s.env_end), (140731151133431, 140731151134699));
        assert_eq!(s.exit_code, 0);
    }

    #[test]
    fn comm_with_spaces_and_parens_splits_at_last_paren() {
        let line = FIXTURE.replacen("(cat)", "(a) b (c))", 1);
        let s = parse_stat(&line).unwrap();
        assert_eq!(s.comm, "a) b (c)");
        assert_eq!(s.ppid, 4719);
    }

    #[test]
    fn truncated_and_garbled_lines_are_errors() {
        let cut = &FIXTURE[..FIXTURE.len() - 3];
        assert_eq!(parse_stat(cut).unwrap_err().msg, "field 52 missing");
        assert!(parse_stat("12 cat R").is_err());
        assert_eq!(
            parse_stat(&FIXTURE.replacen(" R ", " RR ", 1))
                .unwrap_err()
                .msg,
            "bad state 'RR'"
        );
    }

    #[test]
    fn reads_own_stat_and_thread_stat() {
        let pid = std::process::id() as i32;
        let s = read_stat(pid).unwrap();
        assert_eq!(s.pid, pid);
        assert_eq!(s.ppid, std::os::unix::process::parent_id() as i32);
        assert!(s.start_code > 0 && s.arg_start > 0);
        let tid = nix::unistd::gettid().as_raw();
        let t = read_task_stat(pid, tid).unwrap();
        assert_eq!(t.pid, tid);
        assert!(matches!(
            read_stat(i32::MAX),
            Err(ProcError::Gone { pid: i32::MAX })
        ));
    }
}
