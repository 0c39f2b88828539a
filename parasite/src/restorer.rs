//! The restorer: the last stage of every restored task.
//!
//! It runs from the hole the engine mapped, with all signals blocked and the
//! task's file descriptors, cwd and session already in place. It replaces the
//! address space with the saved one, puts the vDSO back, restores signal and
//! timer state, then traps so rcr can see it is ready; rcr lets it run on into
//! `rt_sigreturn`, which loads the saved registers and XSAVE state.

use crate::restore_abi::*;
use crate::sys::{self, nr};
use core::arch::asm;

const PROT_WRITE: u32 = 0x2;
const MAP_FIXED: usize = 0x10;
const MREMAP_MAYMOVE: usize = 1;
const MREMAP_FIXED: usize = 2;
const PR_SET_MM: usize = 35;
const PR_SET_MM_MAP: usize = 14;
const PR_SET_PDEATHSIG: usize = 1;
const PR_SET_DUMPABLE: usize = 4;
const PR_SET_CHILD_SUBREAPER: usize = 36;
const PR_SET_NO_NEW_PRIVS: usize = 38;
const PR_SET_NAME: usize = 15;
const PR_TIMER_CREATE_RESTORE_IDS: usize = 77;
const TIMER_CREATE: usize = 222;
const TIMER_SETTIME: usize = 223;
const ARCH_SET_GS: usize = 0x1001;
const ARCH_SET_FS: usize = 0x1002;
const MADV_POPULATE_WRITE: usize = 23;
const RSEQ_FLAG_UNREGISTER: usize = 1;
/// A thread of the same process: shared memory, files, fs, handlers, SysV undo.
const CLONE_THREAD_FLAGS: u64 = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000;
/// `sizeof(struct robust_list_head)`, the only length the kernel accepts.
const ROBUST_LIST_HEAD_LEN: u64 = 24;
/// The highest user address with 4-level paging; nothing is mapped above it
/// unless a program asked for 5-level addresses, which the dump refuses.
const TASK_SIZE: u64 = 0x7fff_ffff_f000;
const MADVICE: [(u64, usize); 6] = [
    (madv::DONTFORK, 10),
    (madv::DONTDUMP, 16),
    (madv::WIPEONFORK, 18),
    (madv::HUGEPAGE, 14),
    (madv::NOHUGEPAGE, 15),
    (madv::MERGEABLE, 12),
];

struct Failure {
    step: Step,
    errno: u64,
    at: u64,
}

fn check(ret: isize, step: Step, at: u64) -> Result<isize, Failure> {
    if sys::is_err(ret) {
        Err(Failure {
            step,
            errno: (-ret) as u64,
            at,
        })
    } else {
        Ok(ret)
    }
}

/// Entry point, jumped to by the engine's code in the new task with `rsp` at
/// the top of the restorer stack.
#[no_mangle]
pub extern "C" fn rcr_restorer_main(args: *const RestoreArgs) -> ! {
    // SAFETY: the engine passes the address of the RestoreArgs it laid out in
    // the hole, which stays mapped for the restorer's whole life.
    let args = unsafe { &*args };
    match restore(args) {
        Ok(leader) => finish(leader),
        Err(f) => trap_failed(f.step, f.errno, f.at),
    }
}

/// Restores the process and returns the leader's own thread state, restored.
fn restore(a: &RestoreArgs) -> Result<&ThreadArgs, Failure> {
    if a.abi_version != RESTORE_ABI_VERSION {
        return Err(Failure {
            step: Step::AbiVersion,
            errno: 0,
            at: a.abi_version as u64,
        });
    }
    rseq(&a.rseq_inherited, RSEQ_FLAG_UNREGISTER)?;
    park_vdso(a)?;
    unmap_old(a)?;
    // SAFETY: the engine placed nr_vmas entries at `vmas` and nr_runs at
    // `runs`, inside the hole, which unmap_old left alone.
    let vmas =
        unsafe { core::slice::from_raw_parts(a.vmas as *const VmaEntry, a.nr_vmas as usize) };
    // SAFETY: as above.
    let runs =
        unsafe { core::slice::from_raw_parts(a.runs as *const PageRunEntry, a.nr_runs as usize) };
    map_vmas(vmas)?;
    // What is left of the premap area: other processes' pieces.
    unmap(a.premap_start, a.premap_end)?;
    read_pages(a.pages_fd, runs)?;
    finish_vmas(vmas)?;
    place_vdso(a)?;
    set_mm(a)?;
    restore_signals(a)?;
    restore_timers_and_limits(a)?;
    // SAFETY: closing descriptors that only the restorer used.
    let ret = unsafe {
        sys::syscall3(
            nr::CLOSE_RANGE,
            a.close_from as usize,
            a.close_to as usize,
            0,
        )
    };
    check(ret, Step::CloseFds, a.close_from as u64)?;
    // SAFETY: plain prctl on this task.
    let ret = unsafe { sys::syscall2(nr::PRCTL, PR_SET_PDEATHSIG, a.pdeathsig as usize) };
    check(ret, Step::Pdeathsig, a.pdeathsig as u64)?;
    let flags = [
        (PR_SET_CHILD_SUBREAPER, a.child_subreaper),
        (PR_SET_DUMPABLE, a.dumpable),
        (PR_SET_NO_NEW_PRIVS, 1),
    ];
    // no_new_privs cannot be turned off: set only when it was on.
    let n = if a.no_new_privs != 0 { 3 } else { 2 };
    for &(option, value) in &flags[..n] {
        // SAFETY: plain prctl on this task; the other arguments must be 0.
        let ret = unsafe { sys::syscall5(nr::PRCTL, option, value as usize, 0, 0, 0) };
        check(ret, Step::Prctl, option as u64)?;
    }
    // SAFETY: the engine placed nr_threads entries at `threads` in the hole.
    let threads = unsafe {
        core::slice::from_raw_parts(a.threads as *const ThreadArgs, a.nr_threads as usize)
    };
    let Some((leader, others)) = threads.split_first() else {
        return Err(Failure {
            step: Step::AbiVersion,
            errno: 0,
            at: 0,
        });
    };
    for t in others {
        spawn_thread(t, a.plain_clone != 0)?;
    }
    restore_posix_timers(a)?;
    restore_thread(leader)?;
    Ok(leader)
}

/// What every thread restores for itself: the kernel's per-thread links,
/// its queued signals, rseq, name and thread pointers.
fn restore_thread(t: &ThreadArgs) -> Result<(), Failure> {
    // SAFETY: only records the address; the saved memory holds the word.
    unsafe { sys::syscall1(nr::SET_TID_ADDRESS, t.clear_child_tid as usize) };
    if t.robust_list != 0 {
        // SAFETY: only records the list head; the kernel reads it at exit.
        let ret = unsafe {
            sys::syscall2(
                nr::SET_ROBUST_LIST,
                t.robust_list as usize,
                ROBUST_LIST_HEAD_LEN as usize,
            )
        };
        check(ret, Step::RobustList, t.robust_list)?;
    }
    // SAFETY: the engine placed nr_pending entries at `pending` in the hole.
    let pending = unsafe {
        core::slice::from_raw_parts(t.pending as *const PendingSignal, t.nr_pending as usize)
    };
    // SAFETY: getpid and gettid have no arguments.
    let (pid, tid) = unsafe { (sys::syscall0(nr::GETPID), sys::syscall0(nr::GETTID)) };
    for sig in pending {
        // SAFETY: queues a signal to this very thread with its saved siginfo,
        // which the kernel allows for any si_code when sender and target match.
        let ret = unsafe {
            sys::syscall4(
                nr::RT_TGSIGQUEUEINFO,
                pid as usize,
                tid as usize,
                sig.signo as usize,
                sig.siginfo.as_ptr() as usize,
            )
        };
        check(ret, Step::SigQueue, sig.signo as u64)?;
    }
    rseq(&t.rseq, 0)?;
    // SAFETY: PR_SET_NAME reads at most 16 bytes of the NUL-terminated name.
    let ret = unsafe { sys::syscall2(nr::PRCTL, PR_SET_NAME, t.comm.as_ptr() as usize) };
    check(ret, Step::Comm, t.tid as u64)?;
    // SAFETY: fs/gs base are the saved thread pointers; nothing in the
    // restorer uses thread-local storage.
    let ret = unsafe { sys::syscall2(nr::ARCH_PRCTL, ARCH_SET_FS, t.fs_base as usize) };
    check(ret, Step::FsBase, t.fs_base)?;
    // SAFETY: as above.
    let ret = unsafe { sys::syscall2(nr::ARCH_PRCTL, ARCH_SET_GS, t.gs_base as usize) };
    check(ret, Step::FsBase, t.gs_base)?;
    Ok(())
}

/// Creates thread `t` with its saved tid; it starts in [`thread_main`] on
/// its own stack in the hole. Signals stay blocked in it as in the leader.
/// With `plain`, rcr first makes the tid the kernel's next one.
fn spawn_thread(t: &ThreadArgs, plain: bool) -> Result<(), Failure> {
    let args = CloneArgs {
        flags: CLONE_THREAD_FLAGS,
        stack: t.stack,
        stack_size: t.stack_size,
        set_tid: t.set_tid.as_ptr() as u64,
        set_tid_size: t.set_tid_size as u64,
        ..Default::default()
    };
    let (nr, a0, a1) = if plain {
        // Legacy clone: flags, then the stack's top.
        (
            nr::CLONE,
            CLONE_THREAD_FLAGS as usize,
            (t.stack + t.stack_size) as usize,
        )
    } else {
        (
            nr::CLONE3,
            &args as *const CloneArgs as usize,
            core::mem::size_of::<CloneArgs>(),
        )
    };
    let mut got = 0;
    for _ in 0..PID_TRIES {
        if plain {
            trap_next_pid(t.tid, got);
        }
        got = clone_thread(t, nr, a0, a1);
        check(got, Step::CloneThread, t.tid as u64)?;
        // set_tid gives the tid or fails; a plain clone may give another
        // (that thread ends at once, see thread_main).
        if got == t.set_tid[0] as isize || !plain {
            break;
        }
    }
    if got != t.set_tid[0] as isize {
        return Err(Failure {
            step: Step::WrongPid,
            errno: t.tid as u64,
            at: got as u64,
        });
    }
    Ok(())
}

/// Clone syscall `nr` with arguments `a0`, `a1`; the new thread runs
/// [`thread_main`] with `t`.
fn clone_thread(t: &ThreadArgs, nr: usize, a0: usize, a1: usize) -> isize {
    let ret: isize;
    // SAFETY: the new thread shares our memory and starts on its own stack,
    // where it only calls thread_main, which never returns; the parent
    // continues after the syscall like any other. Legacy clone's parent
    // tid, child tid and tls arguments are zero: nothing to store.
    unsafe {
        asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "call {main}",
            "ud2",
            "2:",
            main = sym thread_main,
            inlateout("rax") nr => ret,
            in("rdi") a0,
            in("rsi") a1,
            in("rdx") 0usize,
            in("r10") 0usize,
            in("r8") 0usize,
            in("r12") t as *const ThreadArgs,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        )
    };
    ret
}

/// Asks rcr to make `tid` the next id the kernel gives (and to reap the
/// thread a previous try made with id `wrong`); returns once it has.
fn trap_next_pid(tid: i32, wrong: isize) {
    // SAFETY: a trap rcr catches (signals are blocked, SIGTRAP is forced).
    unsafe { asm!("int3", in("rdi") TRAP_NEXT_PID, in("rsi") tid as u64, in("rdx") wrong as u64) };
}

/// A restored thread's first code.
extern "C" fn thread_main(t: &ThreadArgs) -> ! {
    // SAFETY: gettid has no arguments.
    let tid = unsafe { sys::syscall0(nr::GETTID) };
    if tid != t.set_tid[0] as isize {
        // Made with an id another task took meanwhile: the leader tries again.
        // SAFETY: ends this thread only; it touched nothing.
        unsafe { sys::syscall1(nr::EXIT, 0) };
    }
    match restore_thread(t) {
        Ok(()) => finish(t),
        Err(f) => trap_failed(f.step, f.errno, f.at),
    }
}

fn rseq(conf: &RseqConf, flags: usize) -> Result<(), Failure> {
    if conf.addr == 0 {
        return Ok(());
    }
    // SAFETY: (un)registers an rseq area at the address the engine named:
    // the inherited one is still mapped, the saved one was just restored.
    let ret = unsafe {
        sys::syscall4(
            nr::RSEQ,
            conf.addr as usize,
            conf.len as usize,
            flags,
            conf.sig as usize,
        )
    };
    check(ret, Step::Rseq, conf.addr).map(|_| ())
}

/// Moves the vDSO parts that the saved task had into the hole, so that
/// unmapping the old address space keeps them.
fn park_vdso(a: &RestoreArgs) -> Result<(), Failure> {
    for part in &a.vdso[..a.nr_vdso as usize] {
        remap(part.now, part.len, part.park, Step::ParkVdso)?;
    }
    Ok(())
}

fn place_vdso(a: &RestoreArgs) -> Result<(), Failure> {
    for part in &a.vdso[..a.nr_vdso as usize] {
        remap(part.park, part.len, part.saved, Step::PlaceVdso)?;
    }
    Ok(())
}

fn remap(from: u64, len: u64, to: u64, step: Step) -> Result<(), Failure> {
    if from == to {
        return Ok(());
    }
    // SAFETY: moves a mapping the engine described (a vDSO part or a
    // premapped VMA); nothing in the restorer refers to either range.
    let ret = unsafe {
        sys::syscall5(
            nr::MREMAP,
            from as usize,
            len as usize,
            len as usize,
            MREMAP_MAYMOVE | MREMAP_FIXED,
            to as usize,
        )
    };
    check(ret, step, from).map(|_| ())
}

/// Everything outside the hole and the premap area belongs to the
/// engine's copy of rcr: drop it.
fn unmap_old(a: &RestoreArgs) -> Result<(), Failure> {
    let mut keep = [(a.hole_start, a.hole_end), (a.premap_start, a.premap_end)];
    if keep[1].0 < keep[0].0 {
        keep.swap(0, 1);
    }
    let mut from = 0;
    for (start, end) in keep {
        if start < end {
            unmap(from, start)?;
            from = end;
        }
    }
    unmap(from, TASK_SIZE)
}

fn unmap(from: u64, to: u64) -> Result<(), Failure> {
    if from >= to {
        return Ok(());
    }
    // SAFETY: the restorer's code, data and stack all live in the hole,
    // which callers never name.
    let ret = unsafe { sys::syscall2(nr::MUNMAP, from as usize, (to - from) as usize) };
    check(ret, Step::UnmapOld, from).map(|_| ())
}

fn map_vmas(vmas: &[VmaEntry]) -> Result<(), Failure> {
    for vma in vmas {
        if vma.premap != 0 {
            remap(
                vma.premap,
                vma.end - vma.start,
                vma.start,
                Step::MovePremapped,
            )?;
            continue;
        }
        let prot = if vma.has_pages != 0 {
            vma.prot | PROT_WRITE
        } else {
            vma.prot
        };
        // SAFETY: maps at an address the saved task used and the engine
        // checked lies outside the hole.
        let ret = unsafe {
            sys::syscall6(
                nr::MMAP,
                vma.start as usize,
                (vma.end - vma.start) as usize,
                prot as usize,
                vma.flags as usize | MAP_FIXED,
                vma.fd as usize,
                vma.pgoff as usize,
            )
        };
        check(ret, Step::MapVma, vma.start)?;
    }
    Ok(())
}

fn read_pages(fd: i32, runs: &[PageRunEntry]) -> Result<(), Failure> {
    for run in runs {
        // Faulting pages in one by one is the slow part of reading into fresh
        // memory; populate the run first. Older kernels lack the advice: the
        // reads below fault the pages in anyway.
        // SAFETY: the run lies inside a VMA mapped writable above.
        unsafe {
            sys::syscall3(
                nr::MADVISE,
                run.vaddr as usize,
                run.len as usize,
                MADV_POPULATE_WRITE,
            )
        };
        let mut done = 0u64;
        while done < run.len {
            // SAFETY: reads into the writable VMA that holds this run.
            let ret = unsafe {
                sys::syscall4(
                    nr::PREAD64,
                    fd as usize,
                    (run.vaddr + done) as usize,
                    (run.len - done) as usize,
                    (run.file_off + done) as usize,
                )
            };
            let n = check(ret, Step::ReadPages, run.vaddr + done)?;
            if n == 0 {
                return Err(Failure {
                    step: Step::ReadPages,
                    errno: 0,
                    at: run.vaddr + done,
                });
            }
            done += n as u64;
        }
    }
    Ok(())
}

fn finish_vmas(vmas: &[VmaEntry]) -> Result<(), Failure> {
    for vma in vmas {
        let len = (vma.end - vma.start) as usize;
        // Premapped memory came read-write; filled memory was made writable.
        if vma.premap != 0 || (vma.has_pages != 0 && vma.prot & PROT_WRITE == 0) {
            // SAFETY: sets the saved protection of a VMA we mapped.
            let ret =
                unsafe { sys::syscall3(nr::MPROTECT, vma.start as usize, len, vma.prot as usize) };
            check(ret, Step::Protect, vma.start)?;
        }
        for (bit, advice) in MADVICE {
            if vma.madv & bit != 0 {
                // SAFETY: advice on a VMA we mapped.
                let ret = unsafe { sys::syscall3(nr::MADVISE, vma.start as usize, len, advice) };
                check(ret, Step::Advise, vma.start)?;
            }
        }
    }
    Ok(())
}

fn set_mm(a: &RestoreArgs) -> Result<(), Failure> {
    let mut mm = a.mm;
    mm.auxv = a.auxv.as_ptr() as u64;
    // SAFETY: prctl reads the struct and the auxv words, both in the hole.
    let ret = unsafe {
        sys::syscall5(
            nr::PRCTL,
            PR_SET_MM,
            PR_SET_MM_MAP,
            &mm as *const PrctlMmMap as usize,
            core::mem::size_of::<PrctlMmMap>(),
            0,
        )
    };
    check(ret, Step::MmMap, mm.start_brk).map(|_| ())
}

fn restore_signals(a: &RestoreArgs) -> Result<(), Failure> {
    for (i, act) in a.sigactions.iter().enumerate() {
        if a.sigaction_set & (1 << i) == 0 {
            continue;
        }
        // SAFETY: installs a handler the saved task had; signals stay blocked
        // until rt_sigreturn loads the saved mask.
        let ret = unsafe {
            sys::syscall4(
                nr::RT_SIGACTION,
                i + 1,
                act as *const KernelSigaction as usize,
                0,
                8,
            )
        };
        check(ret, Step::SigAction, i as u64 + 1)?;
    }
    // SAFETY: the engine placed nr_pending entries at `pending` in the hole.
    let pending = unsafe {
        core::slice::from_raw_parts(a.pending as *const PendingSignal, a.nr_pending as usize)
    };
    // SAFETY: getpid has no arguments.
    let pid = unsafe { sys::syscall0(nr::GETPID) } as usize;
    for sig in pending {
        // SAFETY: queues a signal to this process from its leader with the
        // saved siginfo, allowed for any si_code when sender and target match.
        let ret = unsafe {
            sys::syscall3(
                nr::RT_SIGQUEUEINFO,
                pid,
                sig.signo as usize,
                sig.siginfo.as_ptr() as usize,
            )
        };
        check(ret, Step::SigQueue, sig.signo as u64)?;
    }
    Ok(())
}

fn restore_timers_and_limits(a: &RestoreArgs) -> Result<(), Failure> {
    for (which, timer) in a.itimers.iter().enumerate() {
        if *timer == Itimerval::default() {
            continue;
        }
        // SAFETY: setitimer reads the struct; its signal stays blocked for now.
        let ret =
            unsafe { sys::syscall3(nr::SETITIMER, which, timer as *const Itimerval as usize, 0) };
        check(ret, Step::Itimer, which as u64)?;
    }
    for limit in &a.rlimits[..a.nr_rlimits as usize] {
        let value = [limit.cur, limit.max];
        // SAFETY: prlimit64 on this task reads two u64.
        let ret = unsafe {
            sys::syscall4(
                nr::PRLIMIT64,
                0,
                limit.resource as usize,
                value.as_ptr() as usize,
                0,
            )
        };
        check(ret, Step::Rlimit, limit.resource as u64)?;
    }
    Ok(())
}

/// Creates each POSIX timer under its saved id and arms it. The id mode of
/// `timer_create` is switched off again so that the program's own timers
/// get fresh ids.
fn restore_posix_timers(a: &RestoreArgs) -> Result<(), Failure> {
    if a.nr_posix_timers == 0 {
        return Ok(());
    }
    // SAFETY: the engine placed nr_posix_timers entries at posix_timers.
    let timers = unsafe {
        core::slice::from_raw_parts(
            a.posix_timers as *const PosixTimerEntry,
            a.nr_posix_timers as usize,
        )
    };
    // SAFETY: plain prctl on this process; unused arguments must be 0.
    let ret = unsafe { sys::syscall5(nr::PRCTL, PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0) };
    check(ret, Step::PosixTimer, 0)?;
    for t in timers {
        let mut id = t.id;
        // SAFETY: timer_create reads the sigevent and reads then writes the
        // id, both ours; its signal stays blocked until rt_sigreturn.
        let ret = unsafe {
            sys::syscall3(
                TIMER_CREATE,
                t.clockid as usize,
                &t.sigevent as *const KernelSigevent as usize,
                &mut id as *mut i32 as usize,
            )
        };
        check(ret, Step::PosixTimer, t.id as u64)?;
        if t.spec.value != Timespec::default() {
            // SAFETY: timer_settime reads the itimerspec; no old value.
            let ret = unsafe {
                sys::syscall4(
                    TIMER_SETTIME,
                    t.id as usize,
                    0,
                    &t.spec as *const Itimerspec as usize,
                    0,
                )
            };
            check(ret, Step::PosixTimer, t.id as u64)?;
        }
    }
    // SAFETY: plain prctl on this process.
    let ret = unsafe { sys::syscall5(nr::PRCTL, PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0) };
    check(ret, Step::PosixTimer, 0).map(|_| ())
}

/// Reports the thread ready with a trap rcr catches, then returns into the
/// saved program through `rt_sigreturn`. rcr unmaps the hole once every
/// thread is past its sigreturn.
fn finish(t: &ThreadArgs) -> ! {
    // SAFETY: the frame at sigframe_rsp - 8 was built by the engine from the
    // saved registers; rt_sigreturn never returns here.
    unsafe {
        asm!(
            "int3",
            "mov rsp, {rsp}",
            "mov eax, 15",
            "syscall",
            "ud2",
            rsp = in(reg) t.sigframe_rsp,
            in("rdi") TRAP_READY,
            options(noreturn),
        )
    }
}
