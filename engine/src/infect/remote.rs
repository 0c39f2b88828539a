//! Remote system calls: make a ptrace-stopped task execute a syscall of our
//! choosing without writing a byte of its memory.
//!
//! The task's registers are pointed at a `syscall` instruction inside its
//! vDSO (the "gadget"), which is byte-identical to rcr's own on the same
//! kernel, so the instruction's offset is found once by decoding rcr's vDSO.
//! Then `PTRACE_SYSCALL` twice (enter stop, exit stop) runs exactly that one
//! syscall, and the saved registers go back.
//!
//! Signals: [`RemoteTask::new`] blocks every signal with `PTRACE_SETSIGMASK`
//! so that signals arriving meanwhile stay pending instead of being
//! delivered (or lost) while the task runs our code; the original mask comes
//! back in [`RemoteTask::restore_regs`]. SIGSTOP cannot be blocked: if one
//! produces a signal-delivery-stop it is suppressed, remembered, and sent
//! again (tgkill) when the task is released.

use std::fs;
use std::sync::OnceLock;

use goblin::elf::sym::STT_FUNC;
use goblin::elf::Elf;
use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use nix::errno::Errno;
use rcr_arch::regs::UserRegs;

use crate::infect::InfectError;
use crate::ptrace::{self, Stop};

/// Length of the `syscall` instruction (`0f 05`).
const SYSCALL_INSN_LEN: u64 = 2;
const NR_RESTART_SYSCALL: u64 = 219;
const ERESTART_RESTARTBLOCK: i64 = -516;

/// A seized, ptrace-stopped thread that rcr runs syscalls in.
#[derive(Debug)]
pub struct RemoteTask {
    tid: i32,
    saved: UserRegs,
    saved_sigmask: u64,
    gadget: u64,
    /// Signals whose delivery-stop was suppressed; re-sent on release.
    suppressed: Vec<i32>,
}

impl RemoteTask {
    /// Takes over `tid`, which must be seized with `PTRACE_O_TRACESYSGOOD`
    /// and sit in a ptrace-stop other than a syscall-enter stop (an
    /// interrupt, group, signal-delivery or syscall-exit stop). Saves its
    /// registers and signal mask, then blocks all signals.
    pub fn new(tid: i32) -> Result<RemoteTask, InfectError> {
        let gadget = vdso_start(tid)? + gadget_offset()?;
        let saved = ptrace::get_regs(tid)?;
        let saved_sigmask = ptrace::get_sigmask(tid)?;
        ptrace::set_sigmask(tid, !0)?;
        Ok(RemoteTask {
            tid,
            saved,
            saved_sigmask,
            gadget,
            suppressed: Vec::new(),
        })
    }

    /// The thread id.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// The registers the task had when taken over.
    pub fn saved_regs(&self) -> &UserRegs {
        &self.saved
    }

    /// The signal mask the task had when taken over.
    pub fn saved_sigmask(&self) -> u64 {
        self.saved_sigmask
    }

    /// Runs syscall `nr` with `args` in the task and returns its raw result
    /// (`-errno` on failure). The task is left at the syscall-exit stop with
    /// its saved registers in place.
    pub fn syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<i64, InfectError> {
        let tid = self.tid;
        let mut regs = self.saved;
        regs.rax = nr as u64;
        [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9] = args;
        // No syscall-restart logic for our registers, even when the task was
        // stopped inside an interrupted syscall.
        regs.orig_rax = u64::MAX;
        regs.rip = self.gadget;
        ptrace::set_regs(tid, &regs)?;

        self.resume_to_syscall_stop()?;
        let at_enter = ptrace::get_regs(tid)?;
        if at_enter.rip != self.gadget + SYSCALL_INSN_LEN || at_enter.orig_rax != nr as u64 {
            return Err(InfectError::UnexpectedStop {
                tid,
                what: format!(
                    "syscall stop at rip {:#x} for syscall {} instead of our {nr} at {:#x}",
                    at_enter.rip,
                    at_enter.orig_rax as i64,
                    self.gadget + SYSCALL_INSN_LEN
                ),
            });
        }
        self.resume_to_syscall_stop()?;
        let result = ptrace::get_regs(tid)?.rax as i64;
        ptrace::set_regs(tid, &self.saved)?;
        Ok(result)
    }

    /// Like [`RemoteTask::syscall`], turning `-errno` into an error that
    /// names the call.
    pub fn syscall_ok(
        &mut self,
        name: &'static str,
        nr: i64,
        args: [u64; 6],
    ) -> Result<u64, InfectError> {
        let ret = self.syscall(nr, args)?;
        if (-4095..0).contains(&ret) {
            Err(InfectError::RemoteSyscall {
                tid: self.tid,
                name,
                errno: Errno::from_raw(-ret as i32),
            })
        } else {
            Ok(ret as u64)
        }
    }

    /// Remembers a signal whose delivery-stop was suppressed, so it is sent
    /// again on release.
    pub(crate) fn suppress(&mut self, sig: i32) {
        self.suppressed.push(sig);
    }

    /// Puts back the saved registers (see [`restartable_regs`]) and signal
    /// mask, and re-sends suppressed signals. The task stays stopped.
    pub fn restore_regs(&mut self) -> Result<(), InfectError> {
        ptrace::set_regs(self.tid, &restartable_regs(&self.saved))?;
        ptrace::set_sigmask(self.tid, self.saved_sigmask)?;
        if !self.suppressed.is_empty() {
            let tgid = tgid_of(self.tid)?;
            for sig in self.suppressed.drain(..) {
                // SAFETY: tgkill only sends a signal to the thread we trace.
                unsafe { libc::syscall(libc::SYS_tgkill, tgid, self.tid, sig) };
            }
        }
        Ok(())
    }

    /// `PTRACE_SYSCALL` until the next syscall stop, stepping over other
    /// stops: a group-stop or stray interrupt is resumed, a signal is
    /// suppressed and remembered.
    fn resume_to_syscall_stop(&mut self) -> Result<(), InfectError> {
        let tid = self.tid;
        ptrace::syscall(tid, 0)?;
        loop {
            match ptrace::wait_stop(tid)? {
                Stop::Syscall => return Ok(()),
                Stop::Signal(sig) => self.suppress(sig),
                Stop::Interrupt | Stop::Group(_) | Stop::Event(_) => {}
                Stop::Exited(code) => return Err(InfectError::Exited { tid, code }),
                Stop::Killed(sig) => return Err(InfectError::Killed { tid, sig }),
            }
            ptrace::syscall(tid, 0)?;
        }
    }
}

/// The registers to give back to a task whose saved registers are `regs`.
///
/// A task stopped inside an interrupted syscall has `orig_rax` = the
/// syscall and `rax` = `-ERESTART*`; the kernel restarts the syscall when
/// the task leaves that very stop. After remote syscalls the task leaves
/// from a different (syscall-exit) stop where that logic does not run, so
/// the restart is done here: `rip` back onto the `syscall` instruction,
/// `rax` = the syscall (or `restart_syscall`), and `orig_rax` = -1 so the
/// kernel cannot restart a second time. Other registers are returned as is.
pub fn restartable_regs(regs: &UserRegs) -> UserRegs {
    if (regs.orig_rax as i64) >= 0 && regs.rax as i64 == ERESTART_RESTARTBLOCK {
        // Still the same process: its restart block is there to resume.
        return UserRegs {
            rax: NR_RESTART_SYSCALL,
            rip: regs.rip - SYSCALL_INSN_LEN,
            orig_rax: u64::MAX,
            ..*regs
        };
    }
    let mut out = rcr_arch::regs::syscall_restart(regs);
    if out != *regs {
        out.orig_rax = u64::MAX;
    }
    out
}

/// The registers for an `rt_sigreturn` frame that resumes a task whose
/// saved registers are `regs`: as [`restartable_regs`], except that a
/// syscall interrupted with a restart block is issued again from the start.
/// `rt_sigreturn` forgets the restart block, after which `restart_syscall`
/// only fails with EINTR; issued again, a relative sleep or timeout starts
/// over (waits longer) rather than failing for a signal that never came.
pub fn sigreturn_regs(regs: &UserRegs) -> UserRegs {
    if (regs.orig_rax as i64) >= 0 && regs.rax as i64 == ERESTART_RESTARTBLOCK {
        return UserRegs {
            rax: regs.orig_rax,
            rip: regs.rip - SYSCALL_INSN_LEN,
            orig_rax: u64::MAX,
            ..*regs
        };
    }
    restartable_regs(regs)
}

fn tgid_of(tid: i32) -> Result<i32, InfectError> {
    let path = format!("/proc/{tid}/status");
    let status = fs::read_to_string(&path).map_err(|source| InfectError::Io {
        tid,
        what: format!("read {path}"),
        source,
    })?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| InfectError::UnexpectedStop {
            tid,
            what: format!("no Tgid in {path}"),
        })
}

/// Start address of the `[vdso]` mapping of `tid`.
fn vdso_start(tid: i32) -> Result<u64, InfectError> {
    let path = format!("/proc/{tid}/maps");
    let maps = fs::read_to_string(&path).map_err(|source| InfectError::Io {
        tid,
        what: format!("read {path}"),
        source,
    })?;
    find_vdso(&maps)
        .map(|(start, _)| start)
        .ok_or(InfectError::NoVdso { tid })
}

/// The `[vdso]` range in a `/proc/PID/maps` text.
fn find_vdso(maps: &str) -> Option<(u64, u64)> {
    let line = maps.lines().find(|l| l.trim_end().ends_with("[vdso]"))?;
    let (start, end) = line.split_whitespace().next()?.split_once('-')?;
    Some((
        u64::from_str_radix(start, 16).ok()?,
        u64::from_str_radix(end, 16).ok()?,
    ))
}

/// Offset of a `syscall` instruction from the start of the vDSO, found
/// once in rcr's own vDSO.
fn gadget_offset() -> Result<u64, InfectError> {
    static OFFSET: OnceLock<Result<u64, String>> = OnceLock::new();
    OFFSET
        .get_or_init(find_own_gadget)
        .clone()
        .map_err(InfectError::NoGadget)
}

fn find_own_gadget() -> Result<u64, String> {
    // SAFETY: getauxval only reads the auxiliary vector.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    if base == 0 {
        return Err("rcr has no vDSO (AT_SYSINFO_EHDR is 0)".into());
    }
    let maps =
        fs::read_to_string("/proc/self/maps").map_err(|e| format!("/proc/self/maps: {e}"))?;
    let (start, end) = find_vdso(&maps).ok_or("no [vdso] in /proc/self/maps")?;
    if start != base {
        return Err(format!(
            "AT_SYSINFO_EHDR {base:#x} is not the [vdso] start {start:#x}"
        ));
    }
    // SAFETY: the vDSO is mapped readable for the life of the process and
    // never changes.
    let image = unsafe { std::slice::from_raw_parts(start as *const u8, (end - start) as usize) };
    find_syscall_insn(image)
}

/// Decodes each function of a vDSO image and returns the offset of the
/// first real `syscall` instruction (not merely bytes `0f 05` inside
/// another instruction).
fn find_syscall_insn(image: &[u8]) -> Result<u64, String> {
    let elf = Elf::parse(image).map_err(|e| format!("vDSO ELF: {e}"))?;
    // The vDSO is linked at 0 and mapped whole, so a symbol value is also
    // the offset into `image`; both are checked against the image.
    for sym in elf
        .dynsyms
        .iter()
        .filter(|s| s.st_type() == STT_FUNC && s.st_size > 0)
    {
        let start = sym.st_value as usize;
        let Some(code) = image.get(start..start + sym.st_size as usize) else {
            continue;
        };
        let mut decoder = Decoder::with_ip(64, code, sym.st_value, DecoderOptions::NONE);
        for insn in &mut decoder {
            if insn.mnemonic() == Mnemonic::Syscall {
                return Ok(insn.ip());
            }
        }
    }
    Err("no syscall instruction in any vDSO function".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infect::test_child::Child;

    #[test]
    fn own_vdso_has_a_syscall_gadget() {
        let off = gadget_offset().unwrap();
        // SAFETY: reading 2 bytes of our own vDSO.
        let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
        let bytes = unsafe { std::slice::from_raw_parts((base + off) as *const u8, 2) };
        assert_eq!(bytes, [0x0f, 0x05]);
    }

    #[test]
    fn vdso_line_is_found() {
        let maps = "7ffc1000-7ffc3000 r--p 00000000 00:00 0   [vvar]\n\
                    7ffc3000-7ffc5000 r-xp 00000000 00:00 0   [vdso]\n";
        assert_eq!(find_vdso(maps), Some((0x7ffc3000, 0x7ffc5000)));
        assert_eq!(find_vdso("1000-2000 r-xp 0 00:00 0 /bin/x\n"), None);
    }

    #[test]
    fn restart_logic_matches_the_kernel() {
        let inside = UserRegs {
            orig_rax: 35,
            rax: (-516i64) as u64,
            rip: 0x1002,
            ..Default::default()
        };
        let r = restartable_regs(&inside);
        assert_eq!(
            (r.rax, r.rip, r.orig_rax),
            (NR_RESTART_SYSCALL, 0x1000, u64::MAX)
        );
        let read = UserRegs {
            orig_rax: 0,
            rax: (-512i64) as u64,
            rip: 0x2002,
            ..Default::default()
        };
        let r = restartable_regs(&read);
        assert_eq!((r.rax, r.rip, r.orig_rax), (0, 0x2000, u64::MAX));
        let done = UserRegs {
            orig_rax: 0,
            rax: 5,
            rip: 0x2002,
            ..Default::default()
        };
        assert_eq!(restartable_regs(&done), done);
        let user = UserRegs {
            orig_rax: u64::MAX,
            rax: (-512i64) as u64,
            ..Default::default()
        };
        assert_eq!(restartable_regs(&user), user);
    }

    #[test]
    fn sigreturn_reissues_a_syscall_with_a_restart_block() {
        let sleep = UserRegs {
            orig_rax: 35,
            rax: (-516i64) as u64,
            rip: 0x1002,
            rdi: 0x7000,
            ..Default::default()
        };
        let r = sigreturn_regs(&sleep);
        assert_eq!((r.rax, r.rip, r.rdi), (35, 0x1000, 0x7000));
        let read = UserRegs {
            orig_rax: 0,
            rax: (-512i64) as u64,
            rip: 0x2002,
            ..Default::default()
        };
        assert_eq!(sigreturn_regs(&read), restartable_regs(&read));
    }

    #[test]
    fn remote_getpid_and_mmap_leave_the_task_intact() {
        let child = Child::spawn_spinner();
        let mut task = child.seize_and_interrupt();
        let before = *task.saved_regs();
        let pid = task.syscall(libc::SYS_getpid, [0; 6]).unwrap();
        assert_eq!(pid, child.pid as i64);
        let addr = task
            .syscall_ok(
                "mmap",
                libc::SYS_mmap,
                [
                    0,
                    4096,
                    3,
                    (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                    u64::MAX,
                    0,
                ],
            )
            .unwrap();
        assert!(child.maps().contains(&format!("{addr:x}-")));
        task.syscall_ok("munmap", libc::SYS_munmap, [addr, 4096, 0, 0, 0, 0])
            .unwrap();
        let err = task
            .syscall_ok("close", libc::SYS_close, [9999, 0, 0, 0, 0, 0])
            .unwrap_err();
        assert!(
            err.to_string().contains("remote close failed: EBADF"),
            "{err}"
        );
        task.restore_regs().unwrap();
        assert_eq!(ptrace::get_regs(child.pid).unwrap(), before);
        child.detach_and_check_alive();
    }

    #[test]
    fn remote_syscall_works_from_a_syscall_exit_stop() {
        let child = Child::spawn_spinner();
        let task = child.seize_and_interrupt();
        drop(task);
        // Walk the child to a syscall-exit stop: it calls sched_yield in its loop.
        ptrace::syscall(child.pid, 0).unwrap();
        assert_eq!(child.wait(), Stop::Syscall); // enter
        ptrace::syscall(child.pid, 0).unwrap();
        assert_eq!(child.wait(), Stop::Syscall); // exit
        let mut task = RemoteTask::new(child.pid).unwrap();
        let before = *task.saved_regs();
        assert_eq!(
            task.syscall(libc::SYS_getppid, [0; 6]).unwrap(),
            std::process::id() as i64
        );
        task.restore_regs().unwrap();
        assert_eq!(ptrace::get_regs(child.pid).unwrap(), before);
        child.detach_and_check_alive();
    }

    #[test]
    fn sleeping_task_resumes_its_sleep_after_remote_syscalls() {
        let child = Child::spawn_sleeper();
        let mut task = child.seize_and_interrupt();
        assert_eq!(task.saved_regs().orig_rax, libc::SYS_nanosleep as u64);
        for _ in 0..100 {
            task.syscall(libc::SYS_getpid, [0; 6]).unwrap();
        }
        task.restore_regs().unwrap();
        child.cont_and_check_alive();
        child.detach_and_check_alive();
    }
}
