//! The arguments the engine hands to the restore-time restorer.
//!
//! The engine lays out one contiguous area in the restored task's "hole" (an
//! address range that no saved mapping uses): the relocated restorer blob, then
//! a [`RestoreArgs`], then the arrays it points to, the signal frame and the
//! restorer's stack. Every pointer in here is an absolute address in the task.

pub use crate::parasite_abi::{Itimerspec, Itimerval, KernelSigaction, Timespec, Timeval};

/// Bumped whenever a layout below changes; the restorer refuses a mismatch.
pub const RESTORE_ABI_VERSION: u32 = 5;

/// Pid namespace levels a task's ids are given for, rcr's own included.
pub const NS_LEVELS_MAX: usize = 8;

/// `rdi` at the restorer's final trap when everything is in place.
pub const TRAP_READY: u64 = 0x7263_725f_7265_6479; // "rcr_redy"
/// `rdi` at the trap with which the engine's code in a new task says it
/// carried out a command and waits for the next.
pub const TRAP_ACK: u64 = 0x7263_725f_6163_6b21; // "rcr_ack!"
/// `rdi` at a trap that reports a failure: `rsi` = [`Step`], `rdx` = errno,
/// `rcx` = the address or index the step was working on.
pub const TRAP_FAILED: u64 = 0x7263_725f_6661_696c; // "rcr_fail"
/// `rdi` at a trap before a plain `clone` of the task whose saved id is in
/// `rsi`: rcr makes that id the kernel's next, then lets the clone go.
/// `rdx` is the id a previous try got instead (0 on the first): that
/// thread has ended and rcr reaps it.
pub const TRAP_NEXT_PID: u64 = 0x7263_725f_6e70_6964; // "rcr_npid"
/// How often a task is made again when another took its id meanwhile.
pub const PID_TRIES: u32 = 8;

/// Reports a failed step to the tracing rcr: a trap with [`TRAP_FAILED`] in
/// `rdi`, the step in `rsi`, the errno in `rdx` and `at` in `rcx`. rcr kills
/// the task; should rcr be gone, the trap's SIGTRAP ends it. Used by the
/// restorer and by the engine's code that runs in the new task before it.
#[inline(always)]
pub fn trap_failed(step: Step, errno: u64, at: u64) -> ! {
    // SAFETY: only traps and exits; touches no memory.
    unsafe {
        core::arch::asm!(
            "int3",
            "2:",
            "mov eax, 231",
            "mov edi, 1",
            "syscall",
            "jmp 2b",
            in("rdi") TRAP_FAILED,
            in("rsi") step as u64,
            in("rdx") errno,
            in("rcx") at,
            options(noreturn),
        )
    }
}

/// Where a restore failed; reported through the final trap.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    AbiVersion = 1,
    ParkVdso = 2,
    UnmapOld = 3,
    MapVma = 4,
    ReadPages = 5,
    Protect = 6,
    Advise = 7,
    PlaceVdso = 8,
    MmMap = 9,
    SigAction = 10,
    Itimer = 11,
    Rlimit = 12,
    FsBase = 13,
    SigQueue = 14,
    CloseFds = 15,
    Pdeathsig = 16,
    Rseq = 17,
    Comm = 18,
    CloneThread = 19,
    TidAddress = 20,
    RobustList = 21,
    /// A new task or thread got another id than its saved one: `rdx` holds
    /// the saved id, `rcx` the one the kernel gave.
    WrongPid = 22,
    PosixTimer = 23,
    MovePremapped = 24,
    /// Steps run by the engine's code in the new task, before the restorer.
    ChildSync = 32,
    ChildSession = 33,
    ChildFds = 34,
    ChildCwd = 35,
    ChildHole = 36,
    ChildFork = 37,
    ChildExit = 38,
    ChildLocks = 39,
    ChildPremap = 40,
    Prctl = 41,
}

impl Step {
    /// The step for a number reported in a trap, if it is one.
    pub fn from_raw(raw: u64) -> Option<Step> {
        use Step::*;
        let all = [
            AbiVersion,
            ParkVdso,
            UnmapOld,
            MapVma,
            ReadPages,
            Protect,
            Advise,
            PlaceVdso,
            MmMap,
            SigAction,
            Itimer,
            Rlimit,
            FsBase,
            SigQueue,
            CloseFds,
            Pdeathsig,
            Rseq,
            Comm,
            CloneThread,
            TidAddress,
            RobustList,
            WrongPid,
            PosixTimer,
            MovePremapped,
            ChildSync,
            ChildSession,
            ChildFds,
            ChildCwd,
            ChildHole,
            ChildFork,
            ChildExit,
            ChildLocks,
            ChildPremap,
            Prctl,
        ];
        all.into_iter().find(|s| *s as u64 == raw)
    }

    /// What the step does, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Step::AbiVersion => "checking the restorer ABI version",
            Step::ParkVdso => "moving the vDSO aside",
            Step::UnmapOld => "unmapping the old address space",
            Step::MapVma => "mapping a saved VMA",
            Step::ReadPages => "reading saved pages",
            Step::Protect => "setting a VMA's protection",
            Step::Advise => "applying a VMA's madvise flags",
            Step::PlaceVdso => "moving the vDSO to its saved address",
            Step::MmMap => "setting mm fields (PR_SET_MM_MAP)",
            Step::SigAction => "installing a signal handler",
            Step::Itimer => "arming an interval timer",
            Step::Rlimit => "setting a resource limit",
            Step::FsBase => "setting fs/gs base",
            Step::SigQueue => "queueing a pending signal",
            Step::CloseFds => "closing restore-time descriptors",
            Step::Pdeathsig => "setting the parent-death signal",
            Step::Rseq => "registering rseq",
            Step::Comm => "setting the thread name",
            Step::CloneThread => "creating a thread with its saved tid",
            Step::TidAddress => "setting a thread's clear-child-tid address",
            Step::RobustList => "setting a thread's robust futex list",
            Step::WrongPid => "taking a saved pid",
            Step::PosixTimer => {
                "creating a POSIX timer with its saved id (PR_TIMER_CREATE_RESTORE_IDS)"
            }
            Step::MovePremapped => "moving memory shared with the parent into place",
            Step::ChildSync => "waiting for rcr's next command",
            Step::ChildSession => "restoring session and process group",
            Step::ChildFds => "installing file descriptors",
            Step::ChildCwd => "restoring cwd and umask",
            Step::ChildHole => "mapping the restorer",
            Step::ChildFork => "forking a child with its saved pid",
            Step::ChildExit => "exiting to become a zombie again",
            Step::ChildLocks => "taking a POSIX record lock again (fd in 'at')",
            Step::ChildPremap => "premapping memory that children share (address in 'at')",
            Step::Prctl => "setting a process flag with prctl (its option in 'at')",
        }
    }
}

/// One VMA to map, in address order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmaEntry {
    pub start: u64,
    pub end: u64,
    /// File offset in bytes for file mappings.
    pub pgoff: u64,
    /// `MADV_*` advice to apply after mapping, as a bit set of [`madv`].
    pub madv: u64,
    /// Final `PROT_*`.
    pub prot: u32,
    /// `MAP_*` flags (without `MAP_FIXED`, which the restorer adds).
    pub flags: u32,
    /// File to map, or -1 for anonymous memory.
    pub fd: i32,
    /// Non-zero when saved pages will be read into this VMA (it is mapped
    /// writable first and protected afterwards).
    pub has_pages: u32,
    /// Non-zero: the VMA is already filled in, writable, at this address of
    /// the premap area (shared copy-on-write with parent or children);
    /// the restorer moves it into place instead of mapping it.
    pub premap: u64,
}

/// Bits of [`VmaEntry::madv`].
pub mod madv {
    pub const DONTFORK: u64 = 1 << 0;
    pub const DONTDUMP: u64 = 1 << 1;
    pub const WIPEONFORK: u64 = 1 << 2;
    pub const HUGEPAGE: u64 = 1 << 3;
    pub const NOHUGEPAGE: u64 = 1 << 4;
    pub const MERGEABLE: u64 = 1 << 5;
}

/// A run of saved pages: `len` bytes at `file_off` in the pages file go to `vaddr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageRunEntry {
    pub vaddr: u64,
    pub len: u64,
    pub file_off: u64,
}

/// One part of the vDSO block (`[vvar]`, `[vvar_vclock]`, `[vdso]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VdsoPart {
    /// Where it is in the new task now.
    pub now: u64,
    /// Where it waits (inside the hole) while the old address space goes.
    pub park: u64,
    /// Where it was in the checkpointed task.
    pub saved: u64,
    pub len: u64,
}

/// `struct rlimit64` with its resource number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RlimitEntry {
    pub resource: u32,
    pub _pad: u32,
    pub cur: u64,
    pub max: u64,
}

/// `struct prctl_mm_map` of `<linux/prctl.h>`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrctlMmMap {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub auxv: u64,
    pub auxv_size: u32,
    pub exe_fd: u32,
}

/// A pending signal to queue again with its saved 128-byte siginfo:
/// `rt_sigqueueinfo` for the process or `rt_tgsigqueueinfo` for a thread,
/// by which list holds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingSignal {
    pub signo: u32,
    pub _pad: u32,
    pub siginfo: [u8; 128],
}

/// An rseq registration: `rseq(addr, len, flags, sig)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RseqConf {
    pub addr: u64,
    pub len: u32,
    pub sig: u32,
}

/// One thread's own state, restored by the thread itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadArgs {
    /// The thread id as rcr sees it.
    pub tid: i32,
    /// How many of `set_tid` are used: one, or more in a nested pid namespace.
    pub set_tid_size: u32,
    /// The thread's id at every pid namespace level, innermost (what
    /// gettid returns in the thread) first, rcr's last.
    pub set_tid: [i32; NS_LEVELS_MAX],
    /// `rsp` for the final `rt_sigreturn` (the frame sits at `rsp - 8`).
    pub sigframe_rsp: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    /// `set_tid_address`: the futex word the kernel clears when the thread
    /// exits (what `pthread_join` waits on).
    pub clear_child_tid: u64,
    pub robust_list: u64,
    pub robust_list_len: u64,
    /// Signals queued for this thread only, as `rt_tgsigqueueinfo` must be
    /// called by the thread itself to keep their saved siginfo.
    pub pending: u64,
    pub nr_pending: u64,
    /// Lowest address and size of the stack the thread starts on (unused
    /// for the leader, which runs on the restorer's stack).
    pub stack: u64,
    pub stack_size: u64,
    /// The thread's own registration, made again at the end.
    pub rseq: RseqConf,
    /// The thread name (`comm`), NUL-terminated.
    pub comm: [u8; 16],
}

/// The kernel's `struct sigevent` (64 bytes on x86_64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelSigevent {
    pub value: u64,
    pub signo: i32,
    /// `SIGEV_SIGNAL`, `SIGEV_NONE`, `SIGEV_THREAD_ID` (with `tid`).
    pub notify: i32,
    pub tid: i32,
    pub _pad: [i32; 11],
}

/// A POSIX timer to create with its saved id and arm with its time left.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PosixTimerEntry {
    pub id: i32,
    pub clockid: i32,
    pub sigevent: KernelSigevent,
    /// Relative; a zero value leaves the timer disarmed.
    pub spec: Itimerspec,
}

/// `struct clone_args` of `<linux/sched.h>` up to `set_tid_size`
/// (`CLONE_ARGS_SIZE_VER1`): what the engine and the restorer pass to
/// `clone3` to create tasks with their saved ids.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
}

/// Maximum number of auxv words kept (the kernel's `saved_auxv` holds fewer).
pub const AUXV_WORDS: usize = 128;

/// Everything the restorer needs. Laid out by the engine, read by the restorer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RestoreArgs {
    pub abi_version: u32,
    /// The saved pages of this task.
    pub pages_fd: i32,
    /// Descriptors `[close_from, close_to]` are the restorer's own (pages and
    /// mapped files) and are closed once memory is in place.
    pub close_from: i32,
    pub close_to: i32,
    pub hole_start: u64,
    pub hole_end: u64,
    pub vmas: u64,
    pub nr_vmas: u64,
    pub runs: u64,
    pub nr_runs: u64,
    pub vdso: [VdsoPart; 3],
    pub nr_vdso: u64,
    pub mm: PrctlMmMap,
    pub auxv: [u64; AUXV_WORDS],
    /// Bit `n - 1` set: install `sigactions[n - 1]` for signal `n`.
    pub sigaction_set: u64,
    pub sigactions: [KernelSigaction; 64],
    pub itimers: [Itimerval; 3],
    pub rlimits: [RlimitEntry; 16],
    pub nr_rlimits: u64,
    /// Signals pending for the whole process (`rt_sigqueueinfo`).
    pub pending: u64,
    pub nr_pending: u64,
    pub pdeathsig: i64,
    /// The registration the new task inherited from rcr, dropped before
    /// rcr's memory goes (the kernel would write into it). Filled in by the
    /// engine's code in the new task.
    pub rseq_inherited: RseqConf,
    /// The threads, leader first: the leader restores its own state last;
    /// the others are created by the leader once memory is in place.
    pub threads: u64,
    pub nr_threads: u64,
    /// Non-zero: threads are made by a plain `clone` after a
    /// [`TRAP_NEXT_PID`] (rcr arranges each tid), not by `clone3` with
    /// `set_tid`. Filled in by the engine's code in the new task.
    pub plain_clone: u64,
    /// POSIX timers, created by the leader once every thread exists (a
    /// timer may signal one thread).
    pub posix_timers: u64,
    pub nr_posix_timers: u64,
    /// The premap area `[premap_start, premap_end)`: kept while the old
    /// address space goes, unmapped once its VMAs moved into place.
    pub premap_start: u64,
    pub premap_end: u64,
    /// Process flags set back with prctl once the rest is in place: the
    /// dumpable value (0 or 1), no_new_privs and child subreaper (0 or 1).
    pub dumpable: u64,
    pub no_new_privs: u64,
    pub child_subreaper: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn prctl_mm_map_matches_uapi() {
        // <linux/prctl.h>: eleven u64 bounds, the auxv pointer, two u32.
        assert_eq!(size_of::<PrctlMmMap>(), 104);
        assert_eq!(offset_of!(PrctlMmMap, auxv), 88);
        assert_eq!(offset_of!(PrctlMmMap, auxv_size), 96);
        assert_eq!(offset_of!(PrctlMmMap, exe_fd), 100);
    }

    #[test]
    fn clone_args_match_uapi() {
        assert_eq!(size_of::<CloneArgs>(), 80);
        assert_eq!(offset_of!(CloneArgs, set_tid), 64);
    }

    #[test]
    fn kernel_sigaction_and_itimerval_match_uapi() {
        assert_eq!(size_of::<KernelSigaction>(), 32);
        assert_eq!(size_of::<Itimerval>(), 32);
        assert_eq!(size_of::<PendingSignal>(), 136);
        assert_eq!(size_of::<KernelSigevent>(), 64);
        assert_eq!(offset_of!(KernelSigevent, tid), 16);
        assert_eq!(size_of::<PosixTimerEntry>(), 104);
    }

    #[test]
    fn steps_round_trip() {
        for raw in 0..64 {
            if let Some(step) = Step::from_raw(raw) {
                assert_eq!(step as u64, raw);
                assert!(!step.describe().is_empty());
            }
        }
        assert_eq!(Step::from_raw(4), Some(Step::MapVma));
    }
}
