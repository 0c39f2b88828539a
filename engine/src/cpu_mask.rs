//! Running a program under a CPU profile: its threads have CPUID faulting
//! armed (`arch_prctl(ARCH_SET_CPUID, 0)`), so each CPUID instruction raises
//! SIGSEGV; rcr, their tracer, sees that signal stop, checks that `rip`
//! points at `0f a2`, writes the masked answer into eax/ebx/ecx/edx, steps
//! `rip` past the instruction and lets the thread go on without the signal.
//! Any other SIGSEGV is delivered as it would have been.
//!
//! Faulting is kept across fork and clone and reset by execve, so a thread
//! that execs is armed again at its exec stop. rcr must stay the tracer for
//! the program's whole life: the tracees are seized with
//! `PTRACE_O_EXITKILL`, so they do not outlive their CPUID answerer.

use crate::error::{Error, Result};
use crate::infect::remote::RemoteTask;
use crate::ptrace::{self, Stop};
use nix::errno::Errno;
use rcr_arch::cpuid::{cpuid, CpuSnapshot, CpuidResult};
use rcr_arch::regs::UserRegs;
use std::collections::BTreeSet;

/// The CPUID instruction.
pub const CPUID_INSN: [u8; 2] = [0x0f, 0xa2];

/// Leaves whose answer depends on the sub-leaf in ECX; the others ignore it.
const SUBLEAF_LEAVES: &[u32] = &[
    4,
    7,
    0xb,
    0xd,
    0xf,
    0x10,
    0x12,
    0x14,
    0x17,
    0x18,
    0x1d,
    0x1f,
    0x20,
    0x23,
    0x24,
    0x8000_001d,
    0x8000_0020,
    0x8000_0026,
];

/// Leaves the mask rewrites as a whole: a sub-leaf the table lacks reads as
/// zero there, never as the host's answer.
const MASKED_LEAVES: &[u32] = &[7, 0xd];

/// `arch_prctl` code that arms or disarms CPUID faulting.
const ARCH_SET_CPUID: u64 = 0x1012;

/// What a CPUID of `leaf`/`sub` returns under the masked `table`: its record,
/// or for leaves that carry no feature bits (caches, topology, brand string)
/// what `host` says.
pub fn answer(
    table: &CpuSnapshot,
    leaf: u32,
    sub: u32,
    host: impl Fn(u32, u32) -> CpuidResult,
) -> CpuidResult {
    let sub = if SUBLEAF_LEAVES.contains(&leaf) {
        sub
    } else {
        0
    };
    table.leaf(leaf, sub).unwrap_or_else(|| {
        if MASKED_LEAVES.contains(&leaf) {
            CpuidResult::default()
        } else {
            host(leaf, sub)
        }
    })
}

/// Performs the trapped CPUID on `regs`: leaf in EAX, sub-leaf in ECX; the
/// 32-bit results zero the upper halves, as the instruction does; `rip`
/// moves past the two bytes.
pub fn emulate(regs: &mut UserRegs, table: &CpuSnapshot, host: impl Fn(u32, u32) -> CpuidResult) {
    let r = answer(table, regs.rax as u32, regs.rcx as u32, host);
    regs.rax = u64::from(r.eax);
    regs.rbx = u64::from(r.ebx);
    regs.rcx = u64::from(r.ecx);
    regs.rdx = u64::from(r.edx);
    regs.rip = regs.rip.wrapping_add(CPUID_INSN.len() as u64);
}

/// The ptrace options of a task under a CPU profile: children and threads
/// are traced too, execs stop (to re-arm), and every tracee dies with its
/// tracer rather than run on without a CPUID answerer.
pub fn trace_options() -> ptrace::Options {
    ptrace::default_options()
        | ptrace::Options::PTRACE_O_EXITKILL
        | ptrace::Options::PTRACE_O_TRACECLONE
        | ptrace::Options::PTRACE_O_TRACEFORK
        | ptrace::Options::PTRACE_O_TRACEVFORK
        | ptrace::Options::PTRACE_O_TRACEEXEC
}

/// Arms CPUID faulting in `tid`, a thread rcr traces and holds in a
/// ptrace-stop other than syscall-enter, through a syscall run in it.
pub fn arm(tid: i32) -> Result<()> {
    ptrace::set_options(tid, trace_options()).map_err(|e| Error::Infect(e.into()))?;
    let mut task = RemoteTask::new(tid)?;
    let armed = task.syscall_ok(
        "arch_prctl(ARCH_SET_CPUID, 0)",
        libc::SYS_arch_prctl,
        [ARCH_SET_CPUID, 0, 0, 0, 0, 0],
    );
    task.restore_regs()?;
    armed.map(drop).map_err(Error::from)
}

/// The next child or tracee whose state changed, with its raw wait status
/// (`waitpid(-1, __WALL | flags)`); `None` when there is none (`WNOHANG`)
/// or no child at all.
pub fn wait_any(flags: i32) -> Result<Option<(i32, i32)>> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes one int.
        let tid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL | flags) };
        match tid {
            0 => return Ok(None),
            -1 => match Errno::last() {
                Errno::EINTR => continue,
                Errno::ECHILD => return Ok(None),
                // SAFETY: getpid cannot fail.
                e => return Err(Error::sys(unsafe { libc::getpid() }, "waitpid", e)),
            },
            _ => return Ok(Some((tid, status))),
        }
    }
}

/// Answers the trapped CPUIDs of a traced tree.
#[derive(Clone, Debug)]
pub struct Emulator {
    table: CpuSnapshot,
    tracees: BTreeSet<i32>,
}

impl Emulator {
    /// An emulator answering from `table` for `tracees` (armed, or about to
    /// exec, traced by this thread); tasks they fork or clone join by
    /// themselves.
    pub fn new(table: CpuSnapshot, tracees: impl IntoIterator<Item = i32>) -> Self {
        Emulator {
            table,
            tracees: tracees.into_iter().collect(),
        }
    }

    /// Serves until every traced task has ended.
    pub fn serve(mut self) -> Result<()> {
        while let Some((tid, status)) = wait_any(0)? {
            self.on_wait(tid, status)?;
            if self.tracees.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// Acts on one wait status of `tid`: a trapped CPUID is answered, an
    /// exec re-armed, anything else passed on as without a tracer. A child
    /// that is not traced (an orphan reaped by init) only reports its end.
    pub fn on_wait(&mut self, tid: i32, status: i32) -> Result<()> {
        // A task seen for the first time is a new child or thread; its
        // first stop is the one the kernel gives every auto-attached task.
        let new = self.tracees.insert(tid);
        let resumed = match ptrace::decode_status(status) {
            Stop::Exited(_) | Stop::Killed(_) => {
                self.tracees.remove(&tid);
                Ok(())
            }
            Stop::Signal(libc::SIGSEGV) => self.on_segv(tid),
            Stop::Signal(sig) => ptrace::cont(tid, sig),
            Stop::Group(_) if new => ptrace::cont(tid, 0),
            Stop::Group(_) => ptrace::listen(tid),
            Stop::Event(libc::PTRACE_EVENT_EXEC) => {
                arm(tid)?;
                ptrace::cont(tid, 0)
            }
            Stop::Event(_) | Stop::Interrupt | Stop::Syscall => ptrace::cont(tid, 0),
        };
        match resumed {
            // The task was killed while stopped: its exit comes next.
            Err(e) if e.errno == Errno::ESRCH => Ok(()),
            other => other.map_err(|e| Error::Infect(e.into())),
        }
    }

    /// Holds every tracee in an interrupt stop, so that a dump run from
    /// this thread can take them as they are; CPUIDs trapped meanwhile are
    /// answered. Returns the wait statuses of tasks that ended meanwhile.
    pub fn freeze(&mut self) -> Result<Vec<(i32, i32)>> {
        let mut ended = Vec::new();
        let mut running = BTreeSet::new();
        for &tid in &self.tracees {
            match ptrace::interrupt(tid) {
                Ok(()) => {
                    running.insert(tid);
                }
                // Gone already: its end is reported by a wait.
                Err(e) if e.errno == Errno::ESRCH => {}
                Err(e) => return Err(Error::Infect(e.into())),
            }
        }
        while !running.is_empty() {
            let Some((tid, status)) = wait_any(0)? else {
                break;
            };
            match ptrace::decode_status(status) {
                Stop::Interrupt | Stop::Group(_) => {
                    self.tracees.insert(tid);
                    running.remove(&tid);
                }
                Stop::Exited(_) | Stop::Killed(_) => {
                    self.on_wait(tid, status)?;
                    running.remove(&tid);
                    ended.push((tid, status));
                }
                _ => self.on_wait(tid, status)?,
            }
        }
        Ok(ended)
    }

    /// Resumes every tracee still held by [`Emulator::freeze`] (those a
    /// dump released already run and are left alone).
    pub fn thaw(&self) -> Result<()> {
        for &tid in &self.tracees {
            match ptrace::cont(tid, 0) {
                Err(e) if e.errno != Errno::ESRCH => return Err(Error::Infect(e.into())),
                _ => {}
            }
        }
        Ok(())
    }

    /// A SIGSEGV stop: a CPUID is answered, anything else delivered.
    fn on_segv(&self, tid: i32) -> std::result::Result<(), ptrace::PtraceError> {
        let mut regs = ptrace::get_regs(tid)?;
        if peek_insn(tid, regs.rip) != Some(CPUID_INSN) {
            return ptrace::cont(tid, libc::SIGSEGV);
        }
        emulate(&mut regs, &self.table, cpuid);
        ptrace::set_regs(tid, &regs)?;
        ptrace::cont(tid, 0)
    }
}

/// The two bytes at `addr` in a stopped tracee, if readable.
fn peek_insn(tid: i32, addr: u64) -> Option<[u8; 2]> {
    Errno::clear();
    // SAFETY: PTRACE_PEEKTEXT reads a word of the tracee and returns it; it
    // writes nothing in rcr.
    let word = unsafe { libc::ptrace(libc::PTRACE_PEEKTEXT, tid, addr, 0) };
    if word == -1 && Errno::last() != Errno::UnknownErrno {
        return None;
    }
    let b = word.to_le_bytes();
    Some([b[0], b[1]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcr_arch::profile::{mask, Profile};

    fn host_stub(leaf: u32, sub: u32) -> CpuidResult {
        CpuidResult {
            eax: 0xdead,
            ebx: leaf,
            ecx: sub,
            edx: 0,
        }
    }

    #[test]
    fn emulate_answers_from_the_table_and_steps_over() {
        let table = mask(&CpuSnapshot::host(), &Profile::level("x86-64-v2").unwrap());
        let mut regs = UserRegs {
            rax: 0xffff_ffff_0000_0007,
            rcx: 0xffff_ffff_0000_0000,
            rbx: u64::MAX,
            rdx: u64::MAX,
            rip: 0x401000,
            ..Default::default()
        };
        emulate(&mut regs, &table, host_stub);
        let want = table.leaf(7, 0).unwrap();
        assert_eq!(
            (regs.rax, regs.rbx, regs.rcx, regs.rdx),
            (
                u64::from(want.eax),
                u64::from(want.ebx),
                u64::from(want.ecx),
                u64::from(want.edx)
            )
        );
        assert_eq!(regs.rip, 0x401002);
        assert_eq!(want.ebx & (1 << 5), 0, "avx2 hidden by x86-64-v2");
    }

    #[test]
    fn answer_ignores_ecx_where_the_leaf_does_and_zeroes_unknown_masked_subleaves() {
        let table = mask(&CpuSnapshot::host(), &Profile::level("x86-64-v3").unwrap());
        assert_eq!(answer(&table, 1, 99, host_stub), table.leaf(1, 0).unwrap());
        assert_eq!(answer(&table, 0xd, 63, host_stub), CpuidResult::default());
        assert_eq!(answer(&table, 7, 9, host_stub), CpuidResult::default());
        // Leaves without feature bits come from the host, sub-leaf and all.
        assert_eq!(answer(&table, 4, 2, host_stub), host_stub(4, 2));
        assert_eq!(
            answer(&table, 0x8000_0002, 5, host_stub),
            host_stub(0x8000_0002, 0)
        );
    }
}
