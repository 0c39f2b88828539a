//! The engine's code in a new task, between `clone3` and the restorer.
//!
//! The task is a copy of rcr (possibly multi-threaded, so only raw syscalls:
//! no allocation, no locks, no panics). It waits until rcr has attached,
//! takes the saved session, installs the file descriptors, changes into the
//! saved cwd, blocks all signals, maps the prepared hole and jumps into the
//! restorer.

use rcr_parasite::restore_abi::{trap_failed, RseqConf, Step};
use std::arch::asm;

/// How the task regains its session and process group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Session {
    /// It led its own session.
    Setsid,
    /// It led its own group inside rcr's session.
    Setpgid,
    /// It belonged to rcr's group and session (or one outside the checkpoint).
    Inherit,
}

/// One descriptor to install: `src` (rcr's) becomes `target` (the task's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdInstall {
    pub src: i32,
    pub target: i32,
    pub cloexec: bool,
}

/// Everything the new task needs, computed by rcr before `clone3`.
pub struct ChildPlan<'a> {
    pub sync_fd: i32,
    pub session: Session,
    pub installs: &'a [FdInstall],
    /// Inclusive ranges of descriptors to close (rcr's, not the task's).
    pub close: &'a [(u32, u32)],
    pub cwd_fd: i32,
    pub umask: u32,
    pub hole_start: u64,
    pub image: &'a [u8],
    pub entry: u64,
    pub stack_top: u64,
    pub args_addr: u64,
    pub rseq_offset: u64,
}

fn fail(step: Step, ret: i64) -> ! {
    let errno = if ret < 0 { -ret } else { 0 } as u64;
    trap_failed(step, errno, 0)
}

fn sys(ret: libc::c_long, step: Step) -> libc::c_long {
    if ret < 0 {
        // SAFETY: reading errno of this thread.
        let errno = unsafe { *libc::__errno_location() };
        fail(step, -(errno as i64));
    }
    ret
}

/// Runs in the new task; never returns.
pub fn run(plan: &ChildPlan) -> ! {
    let mut rseq = RseqConf::default();
    let want = std::mem::size_of::<RseqConf>();
    // SAFETY: reads the inherited rseq registration that rcr sends once it
    // has attached, into a local of exactly that size.
    let n = unsafe {
        libc::read(
            plan.sync_fd,
            &mut rseq as *mut RseqConf as *mut libc::c_void,
            want,
        )
    };
    if n != want as isize {
        fail(Step::ChildSync, n as i64);
    }
    // SAFETY: plain syscalls on this task.
    unsafe {
        match plan.session {
            Session::Setsid => {
                sys(libc::setsid() as libc::c_long, Step::ChildSession);
            }
            Session::Setpgid => {
                sys(libc::setpgid(0, 0) as libc::c_long, Step::ChildSession);
            }
            Session::Inherit => {}
        }
        for i in plan.installs {
            let flags = if i.cloexec { libc::O_CLOEXEC } else { 0 };
            if i.src == i.target {
                continue;
            }
            sys(
                libc::dup3(i.src, i.target, flags) as libc::c_long,
                Step::ChildFds,
            );
        }
        sys(libc::fchdir(plan.cwd_fd) as libc::c_long, Step::ChildCwd);
        libc::umask(plan.umask as libc::mode_t);
        // Last, as it also closes the sync pipe, the cwd handle and the sources.
        for &(lo, hi) in plan.close {
            sys(
                libc::syscall(libc::SYS_close_range, lo, hi, 0),
                Step::ChildFds,
            );
        }
        let all: u64 = !0;
        sys(
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &all,
                0usize,
                8usize,
            ),
            Step::ChildHole,
        );
        let addr = libc::mmap(
            plan.hole_start as *mut libc::c_void,
            plan.image.len(),
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        );
        if addr as u64 != plan.hole_start {
            fail(Step::ChildHole, -(*libc::__errno_location() as i64));
        }
        std::ptr::copy_nonoverlapping(plan.image.as_ptr(), addr as *mut u8, plan.image.len());
        std::ptr::write_unaligned((plan.hole_start + plan.rseq_offset) as *mut RseqConf, rseq);
        // Enter as if called: the ABI wants rsp + 8 aligned to 16.
        asm!(
            "mov rsp, {stack}",
            "push 0",
            "jmp {entry}",
            stack = in(reg) plan.stack_top,
            entry = in(reg) plan.entry,
            in("rdi") plan.args_addr,
            options(noreturn),
        )
    }
}
