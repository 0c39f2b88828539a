//! `/proc/PID/status` and `/proc/PID/task/TID/status`: `Key:\tvalue` lines.
//!
//! Identity (uids, gids, groups, namespace pids), signal masks and capabilities come
//! from here; the masks are hexadecimal, `Umask` is octal.

use super::read::Target;
use super::{ParseError, ProcError};

/// The fields of `/proc/PID/status` that checkpointing uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// `Name`: the command name, with the kernel's escapes (`\n`, `\\`) left in.
    pub name: String,
    /// `Umask` (absent on old kernels and for some kernel threads).
    pub umask: Option<u32>,
    /// `State`: the letter before the description.
    pub state: char,
    /// `Tgid`.
    pub tgid: i32,
    /// `Pid` (the thread id for a task's status).
    pub pid: i32,
    /// `PPid`.
    pub ppid: i32,
    /// `TracerPid`: 0 when not traced.
    pub tracer_pid: i32,
    /// `Uid`: real, effective, saved, filesystem.
    pub uid: [u32; 4],
    /// `Gid`: real, effective, saved, filesystem.
    pub gid: [u32; 4],
    /// `Groups`: supplementary groups.
    pub groups: Vec<u32>,
    /// `NStgid`: the tgid in each pid namespace, outermost first.
    pub ns_tgid: Vec<i32>,
    /// `NSpid`: the pid in each pid namespace, outermost first.
    pub ns_pid: Vec<i32>,
    /// `NSpgid`: the process group in each pid namespace.
    pub ns_pgid: Vec<i32>,
    /// `NSsid`: the session in each pid namespace.
    pub ns_sid: Vec<i32>,
    /// `Threads`.
    pub threads: u32,
    /// `SigPnd`: signals pending for this thread.
    pub sig_pnd: u64,
    /// `ShdPnd`: signals pending for the whole process.
    pub shd_pnd: u64,
    /// `SigBlk`: blocked signals.
    pub sig_blk: u64,
    /// `SigIgn`: ignored signals.
    pub sig_ign: u64,
    /// `SigCgt`: caught signals.
    pub sig_cgt: u64,
    /// `CapInh`.
    pub cap_inh: u64,
    /// `CapPrm`.
    pub cap_prm: u64,
    /// `CapEff`.
    pub cap_eff: u64,
    /// `CapBnd`.
    pub cap_bnd: u64,
    /// `CapAmb`.
    pub cap_amb: u64,
    /// `NoNewPrivs` is 1.
    pub no_new_privs: bool,
    /// `Seccomp`: 0 disabled, 1 strict, 2 filter.
    pub seccomp: u32,
    /// `Seccomp_filters`: number of attached filters.
    pub seccomp_filters: u32,
}

/// Parses a status file. `Name`, `State`, `Tgid`, `Pid`, `PPid`, `Uid` and `Gid` are
/// required; other keys keep their default when absent.
pub fn parse_status(text: &str) -> Result<Status, ParseError> {
    let mut st = Status::default();
    let mut seen = Required::default();
    for (i, line) in text.split('\n').enumerate() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim_start_matches(['\t', ' ']);
        let line_no = i + 1;
        let bad = || ParseError::new(line_no, format!("bad {key} value '{value}'"));
        let int = || value.trim().parse::<i32>().map_err(|_| bad());
        let uint = || value.trim().parse::<u32>().map_err(|_| bad());
        let mask = || u64::from_str_radix(value.trim(), 16).map_err(|_| bad());
        match key {
            "Name" => {
                st.name = value.to_owned();
                seen.name = true;
            }
            "Umask" => {
                st.umask = Some(u32::from_str_radix(value.trim(), 8).map_err(|_| bad())?);
            }
            "State" => {
                st.state = value.chars().next().ok_or_else(bad)?;
                seen.state = true;
            }
            "Tgid" => {
                st.tgid = int()?;
                seen.tgid = true;
            }
            "Pid" => {
                st.pid = int()?;
                seen.pid = true;
            }
            "PPid" => {
                st.ppid = int()?;
                seen.ppid = true;
            }
            "TracerPid" => st.tracer_pid = int()?,
            "Uid" => {
                st.uid = four_ids(value).ok_or_else(bad)?;
                seen.uid = true;
            }
            "Gid" => {
                st.gid = four_ids(value).ok_or_else(bad)?;
                seen.gid = true;
            }
            "Groups" => st.groups = number_list(value).ok_or_else(bad)?,
            "NStgid" => st.ns_tgid = number_list(value).ok_or_else(bad)?,
            "NSpid" => st.ns_pid = number_list(value).ok_or_else(bad)?,
            "NSpgid" => st.ns_pgid = number_list(value).ok_or_else(bad)?,
            "NSsid" => st.ns_sid = number_list(value).ok_or_else(bad)?,
            "Threads" => st.threads = uint()?,
            "SigPnd" => st.sig_pnd = mask()?,
            "ShdPnd" => st.shd_pnd = mask()?,
            "SigBlk" => st.sig_blk = mask()?,
            "SigIgn" => st.sig_ign = mask()?,
            "SigCgt" => st.sig_cgt = mask()?,
            "CapInh" => st.cap_inh = mask()?,
            "CapPrm" => st.cap_prm = mask()?,
            "CapEff" => st.cap_eff = mask()?,
            "CapBnd" => st.cap_bnd = mask()?,
            "CapAmb" => st.cap_amb = mask()?,
            "NoNewPrivs" => st.no_new_privs = uint()? != 0,
            "Seccomp" => st.seccomp = uint()?,
            "Seccomp_filters" => st.seccomp_filters = uint()?,
            _ => {}
        }
    }
    match seen.first_missing() {
        Some(key) => Err(ParseError::new(0, format!("missing {key}"))),
        None => Ok(st),
    }
}

/// Which required keys were found.
#[derive(Default)]
struct Required {
    name: bool,
    state: bool,
    tgid: bool,
    pid: bool,
    ppid: bool,
    uid: bool,
    gid: bool,
}

impl Required {
    fn first_missing(&self) -> Option<&'static str> {
        [
            (self.name, "Name"),
            (self.state, "State"),
            (self.tgid, "Tgid"),
            (self.pid, "Pid"),
            (self.ppid, "PPid"),
            (self.uid, "Uid"),
            (self.gid, "Gid"),
        ]
        .into_iter()
        .find_map(|(seen, key)| (!seen).then_some(key))
    }
}

fn number_list<T: std::str::FromStr>(value: &str) -> Option<Vec<T>> {
    value
        .split_ascii_whitespace()
        .map(|n| n.parse().ok())
        .collect()
}

fn four_ids(value: &str) -> Option<[u32; 4]> {
    number_list::<u32>(value)?.try_into().ok()
}

/// Reads `/proc/PID/status`.
pub fn read_status(pid: i32) -> Result<Status, ProcError> {
    Target::process(pid).parse("status", 2048, parse_status)
}

/// Reads `/proc/PID/task/TID/status` (per-thread masks: `SigPnd`, `SigBlk`, caps).
pub fn read_task_status(pid: i32, tid: i32) -> Result<Status, ProcError> {
    Target::thread(pid, tid).parse("status", 2048, parse_status)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/self/status` of `cat` on the development machine (kernel 6.18), with
    /// groups, namespaces and signal masks filled in to exercise them.
    const FIXTURE: &str = "Name:\tcat
Umask:\t0022
State:\tS (sleeping)
Tgid:\t4723
Ngid:\t0
Pid:\t4724
PPid:\t4719
TracerPid:\t0
Uid:\t0\t1\t2\t3
Gid:\t4\t5\t6\t7
FDSize:\t256
Groups:\t4 24 27 
NStgid:\t4723\t1
NSpid:\t4724\t2
NSpgid:\t4719\t0
NSsid:\t4106\t0
Kthread:\t0
VmPeak:\t    3060 kB
VmRSS:\t    1704 kB
THP_enabled:\t1
untag_mask:\t0xffffffffffffffff
Threads:\t2
SigQ:\t0/96364
SigPnd:\t0000000000000100
ShdPnd:\t0000000000004000
SigBlk:\t0000000000010000
SigIgn:\t0000000000001000
SigCgt:\t0000000180000002
CapInh:\t0000000000000000
CapPrm:\t000001fffeffffff
CapEff:\t000001fffeffffff
CapBnd:\t000001fffeffffff
CapAmb:\t0000000000000000
NoNewPrivs:\t1
Seccomp:\t2
Seccomp_filters:\t1
Speculation_Store_Bypass:\tthread vulnerable
Cpus_allowed_list:\t0-1
voluntary_ctxt_switches:\t0
nonvoluntary_ctxt_switches:\t1
";

    #[test]
    fn parses_real_status() {
        let s = parse_status(FIXTURE).unwrap();
        assert_eq!(s.name, "cat");
        assert_eq!(s.umask, Some(0o022));
        assert_eq!(s.state, 'S');
        assert_eq!((s.tgid, s.pid, s.ppid, s.tracer_pid), (4723, 4724, 4719, 0));
        assert_eq!((s.uid, s.gid), ([0, 1, 2, 3], [4, 5, 6, 7]));
        assert_eq!(s.groups, vec![4, 24, 27]);
        assert_eq!(s.ns_tgid, vec![4723, 1]);
        assert_eq!(s.ns_pid, vec![4724, 2]);
        assert_eq!(s.ns_pgid, vec![4719, 0]);
        assert_eq!(s.ns_sid, vec![4106, 0]);
        assert_eq!(s.threads, 2);
        assert_eq!((s.sig_pnd, s.shd_pnd, s.sig_blk), (0x100, 0x4000, 0x10000));
        assert_eq!((s.sig_ign, s.sig_cgt), (0x1000, 0x180000002));
        assert_eq!(
            (s.cap_inh, s.cap_prm, s.cap_eff),
            (0, 0x1fffeffffff, 0x1fffeffffff)
        );
        assert_eq!((s.cap_bnd, s.cap_amb), (0x1fffeffffff, 0));
        assert!(s.no_new_privs);
        assert_eq!((s.seccomp, s.seccomp_filters), (2, 1));
    }

    #[test]
    fn empty_groups_and_missing_umask() {
        let text = FIXTURE
            .replace("Groups:\t4 24 27 ", "Groups:\t ")
            .replace("Umask:\t0022\n", "");
        let s = parse_status(&text).unwrap();
        assert!(s.groups.is_empty());
        assert_eq!(s.umask, None);
    }

    #[test]
    fn errors_name_the_key() {
        let e =
            parse_status(&FIXTURE.replace("SigBlk:\t0000000000010000", "SigBlk:\tzz")).unwrap_err();
        assert_eq!(e, ParseError::new(26, "bad SigBlk value 'zz'"));
        let e = parse_status(&FIXTURE.replace("Uid:\t0\t1\t2\t3", "Uid:\t0")).unwrap_err();
        assert_eq!(e.msg, "bad Uid value '0'");
        let e = parse_status(&FIXTURE.replace("PPid:", "XPid:")).unwrap_err();
        assert_eq!(e, ParseError::new(0, "missing PPid"));
    }

    #[test]
    fn reads_own_status() {
        let pid = std::process::id() as i32;
        let s = read_status(pid).unwrap();
        assert_eq!(s.tgid, pid);
        assert_eq!(s.ns_pid.last(), Some(&pid));
        assert_eq!(s.uid[0], nix::unistd::getuid().as_raw());
        let tid = nix::unistd::gettid().as_raw();
        let t = read_task_status(pid, tid).unwrap();
        assert_eq!((t.tgid, t.pid), (pid, tid));
    }
}
