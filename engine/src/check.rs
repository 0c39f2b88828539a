//! `rcr check`: what this host and this caller can do, each probed for
//! real where a probe is harmless (throwaway children and namespaces),
//! with what to do about each thing missing.

use crate::privilege::{cap_names, CapSets, CAP_CHECKPOINT_RESTORE, CAP_SYS_PTRACE};
use crate::proc::pagemap::{PageScanner, ScanBackend};
use crate::restore::child::fork_with_pid;
use crate::restore::PidStrategy;

/// One thing checked.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Verdict {
    /// A short stable name (`set_tid`, `cpuid_faulting`, ...).
    pub name: &'static str,
    /// Whether it is there and usable by this caller.
    pub ok: bool,
    /// What was found, in words.
    pub found: String,
    /// What to do when it is missing.
    pub advice: Option<String>,
}

/// Everything `rcr check` reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub checks: Vec<Verdict>,
    /// How a restore here gets the saved pids back (spinning, the last
    /// resort, always works but is slow).
    pub pid_strategy: PidStrategy,
}

fn verdict(name: &'static str, ok: bool, found: String, advice: &str) -> Verdict {
    Verdict {
        name,
        ok,
        found,
        advice: (!ok).then(|| advice.to_string()),
    }
}

/// Runs every check.
pub fn check() -> Report {
    let caps = CapSets::own();
    let set_tid = set_tid_here();
    let last_pid = ns_last_pid();
    let pid_strategy = if set_tid.is_ok() {
        PidStrategy::SetTid
    } else if last_pid.ok {
        PidStrategy::NsLastPid
    } else {
        PidStrategy::Spin
    };
    let checks = vec![
        kernel(),
        ptrace(&caps),
        capabilities(&caps),
        verdict(
            "set_tid",
            set_tid.is_ok(),
            match &set_tid {
                Ok(()) => "clone3 with set_tid gave a chosen pid in rcr's pid namespace".into(),
                Err(e) => e.clone(),
            },
            "give rcr CAP_CHECKPOINT_RESTORE (setcap cap_checkpoint_restore+ep rcr), \
             or use `rcr run`, which restores in a new pid namespace",
        ),
        set_tid_in_new_namespace(),
        last_pid,
        user_namespaces(),
        cpuid_faulting(),
        userfaultfd(),
        pagemap_scan(),
        soft_dirty(),
        vdso(),
    ];
    Report {
        checks,
        pid_strategy,
    }
}

fn kernel() -> Verdict {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    verdict(
        "kernel",
        (major, minor) >= (5, 9),
        format!("Linux {release}"),
        "rcr needs Linux 5.9 or later (clone3 set_tid, CAP_CHECKPOINT_RESTORE)",
    )
}

fn ptrace(caps: &CapSets) -> Verdict {
    let has_ptrace = caps.eff & (1 << CAP_SYS_PTRACE) != 0;
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let (ok, found) = match scope {
        None => (
            true,
            "no Yama: a user may trace their own processes".to_string(),
        ),
        Some(0) => (
            true,
            "Yama ptrace_scope 0: a user may trace their own processes".into(),
        ),
        Some(s @ (1 | 2)) => (
            has_ptrace,
            format!(
                "Yama ptrace_scope {s}: tracing a process rcr did not start needs CAP_SYS_PTRACE, \
                 which rcr {}",
                if has_ptrace { "has" } else { "lacks" }
            ),
        ),
        Some(s) => (false, format!("Yama ptrace_scope {s}: ptrace is disabled")),
    };
    verdict(
        "ptrace",
        ok,
        found,
        "give rcr cap_sys_ptrace too (setcap cap_checkpoint_restore,cap_sys_ptrace+ep rcr), \
         or set kernel.yama.ptrace_scope to 0",
    )
}

fn capabilities(caps: &CapSets) -> Verdict {
    let names = |set: u64| match set {
        0 => "none".to_string(),
        s if s.count_ones() > 20 => format!("{} capabilities", s.count_ones()),
        s => cap_names(s).join(","),
    };
    verdict(
        "capabilities",
        caps.eff & (1 << CAP_CHECKPOINT_RESTORE) != 0,
        format!(
            "effective: {}; permitted: {}",
            names(caps.eff),
            names(caps.prm)
        ),
        "rcr lacks cap_checkpoint_restore: run it as root or give the binary the capability \
         (setcap cap_checkpoint_restore+ep rcr)",
    )
}

/// Runs `probe` in a forked child and returns its exit code (-1 if it did
/// not exit normally). The child only makes raw syscalls.
fn in_child(probe: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child runs `probe` (raw syscalls only) and exits at once.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = probe();
        // SAFETY: ends the forked child without running rcr's exit handlers.
        unsafe { libc::_exit(code) };
    }
    if pid < 0 {
        return -1;
    }
    reap(pid as i32)
}

/// Waits for child `pid`; its exit code, or -1.
fn reap(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waits for our own child.
    let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
    if ret == pid && libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    }
}

/// A fork with `set_tid` = `pid` whose child exits at once; the errno on failure.
fn fork_exit_with_pid(pid: i32) -> Result<(), i32> {
    let ret = fork_with_pid(pid, libc::SIGCHLD);
    if ret == 0 {
        // SAFETY: ends the throwaway child.
        unsafe { libc::_exit(0) };
    }
    if ret < 0 {
        return Err(nix::errno::Errno::last_raw());
    }
    reap(ret as i32);
    Ok(())
}

/// Tries `clone3` with `set_tid` for a pid that is free in rcr's pid namespace.
fn set_tid_here() -> Result<(), String> {
    let max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    let last: i32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(300);
    let mut candidate = (last + 1000) % max;
    for _ in 0..16 {
        candidate = candidate.max(301);
        if !std::path::Path::new(&format!("/proc/{candidate}")).exists() {
            return match fork_exit_with_pid(candidate) {
                Ok(()) => Ok(()),
                Err(libc::EEXIST) => {
                    candidate = (candidate + 7) % max;
                    continue;
                }
                Err(e) => Err(format!(
                    "clone3 with set_tid refused: {}",
                    nix::errno::Errno::from_raw(e)
                )),
            };
        }
        candidate = (candidate + 7) % max;
    }
    Err("found no free pid to try clone3 with set_tid".into())
}

fn set_tid_in_new_namespace() -> Verdict {
    // 0: in a new pid namespace, 1: needed a new user namespace too, 2: no
    // namespace could be made, 3: set_tid refused.
    let code = in_child(|| {
        // SAFETY: unshare in a throwaway child.
        let via_user = unsafe {
            if libc::unshare(libc::CLONE_NEWPID) == 0 {
                0
            } else if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID) == 0 {
                1
            } else {
                return 2;
            }
        };
        match fork_exit_with_pid(1) {
            Ok(()) => via_user,
            Err(_) => 3,
        }
    });
    let found = match code {
        0 => "clone3 with set_tid works in a new pid namespace".to_string(),
        1 => {
            "clone3 with set_tid works in a new pid namespace owned by a new user namespace".into()
        }
        2 => "no new pid namespace could be made (needs CAP_SYS_ADMIN or user namespaces)".into(),
        _ => "clone3 with set_tid was refused in a new pid namespace".into(),
    };
    verdict(
        "set_tid_new_pidns",
        code == 0 || code == 1,
        found,
        "`rcr run` needs new pid namespaces: allow user namespaces or run as root",
    )
}

/// Writes the counter's own value back: anyone may open the file, only
/// the privileged may write it.
fn ns_last_pid() -> Verdict {
    let path = "/proc/sys/kernel/ns_last_pid";
    let r = std::fs::read_to_string(path).and_then(|now| std::fs::write(path, now.trim()));
    verdict(
        "ns_last_pid",
        r.is_ok(),
        match &r {
            Ok(()) => format!("{path} is writable"),
            Err(e) => format!("{path}: {e}"),
        },
        "writing ns_last_pid needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN",
    )
}

fn user_namespaces() -> Verdict {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    let max = read("/proc/sys/user/max_user_namespaces").unwrap_or_else(|| "?".into());
    let clone = read("/proc/sys/kernel/unprivileged_userns_clone");
    // SAFETY: unshare in a throwaway child.
    let ok = in_child(|| unsafe { libc::unshare(libc::CLONE_NEWUSER) }.abs()) == 0;
    let mut found = format!("max_user_namespaces {max}");
    if let Some(c) = clone {
        found += &format!(", unprivileged_userns_clone {c}");
    }
    found += if ok {
        "; a new user namespace was made"
    } else {
        "; making a user namespace failed"
    };
    verdict(
        "user_namespaces",
        ok,
        found,
        "set user.max_user_namespaces above 0 (and kernel.unprivileged_userns_clone=1 where \
         it exists) so that `rcr run` works without root",
    )
}

fn cpuid_faulting() -> Verdict {
    const ARCH_SET_CPUID: libc::c_long = 0x1012;
    // SAFETY: asks to keep CPUID enabled for rcr, which it already is; the
    // kernel answers ENODEV when the CPU cannot fault CPUID.
    let ret = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SET_CPUID, 1) };
    let found = if ret == 0 {
        "ARCH_SET_CPUID works".to_string()
    } else {
        format!("ARCH_SET_CPUID: {}", nix::errno::Errno::last())
    };
    verdict(
        "cpuid_faulting",
        ret == 0,
        found,
        "this CPU or hypervisor cannot trap CPUID: a checkpoint restores only on a CPU with \
         every feature the saved one had",
    )
}

fn userfaultfd() -> Verdict {
    const UFFD_USER_MODE_ONLY: libc::c_long = 1;
    // SAFETY: creates a descriptor that is closed at once.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_userfaultfd,
            libc::O_CLOEXEC as libc::c_long | UFFD_USER_MODE_ONLY,
        )
    };
    let found = if fd >= 0 {
        // SAFETY: closes the descriptor just created.
        unsafe { libc::close(fd as i32) };
        "userfaultfd works".to_string()
    } else {
        format!("userfaultfd: {}", nix::errno::Errno::last())
    };
    verdict(
        "userfaultfd",
        fd >= 0,
        found,
        "set vm.unprivileged_userfaultfd=1 or run as root (needed only for lazy restores)",
    )
}

fn pagemap_scan() -> Verdict {
    let r = PageScanner::open(std::process::id() as i32).map(|s| s.backend());
    verdict(
        "pagemap_scan",
        matches!(r, Ok(ScanBackend::Ioctl)),
        match r {
            Ok(ScanBackend::Ioctl) => "the PAGEMAP_SCAN ioctl works".to_string(),
            Ok(ScanBackend::ReadEntries) => "no PAGEMAP_SCAN ioctl".into(),
            Err(e) => e.to_string(),
        },
        "Linux 6.7 or later scans memory faster; rcr reads pagemap entries instead",
    )
}

fn soft_dirty() -> Verdict {
    let page = memmap2::MmapMut::map_anon(4096);
    let dirty = page.ok().and_then(|mut page| {
        page[0] = 1;
        let start = page.as_ptr() as u64;
        let mut scanner = PageScanner::open(std::process::id() as i32).ok()?;
        let entries = scanner.read_entries(start, start + 4096).ok()?;
        Some(entries.first()?.soft_dirty())
    });
    verdict(
        "soft_dirty",
        dirty == Some(true),
        match dirty {
            Some(true) => "a written page shows soft-dirty".to_string(),
            Some(false) => {
                "a written page does not show soft-dirty (CONFIG_MEM_SOFT_DIRTY off)".into()
            }
            None => "could not read rcr's own pagemap".into(),
        },
        "incremental dumps need a kernel built with CONFIG_MEM_SOFT_DIRTY",
    )
}

fn vdso() -> Verdict {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let present: Vec<&str> = ["[vdso]", "[vvar]", "[vvar_vclock]"]
        .into_iter()
        .filter(|n| maps.lines().any(|l| l.ends_with(n)))
        .collect();
    verdict(
        "vdso",
        present.contains(&"[vdso]"),
        format!("present: {}", present.join(" ")),
        "no [vdso] mapping: restores of programs that use it cannot work here",
    )
}
