//! General-purpose registers as ptrace and the kernel lay them out.

/// `struct user_regs_struct` of x86_64 (`<sys/user.h>`), as `PTRACE_GETREGS` fills it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

/// `-ERESTARTSYS`: the kernel restarts the syscall if the handler allows it.
const ERESTARTSYS: i64 = 512;
/// `-ERESTARTNOINTR`: always restarted.
const ERESTARTNOINTR: i64 = 513;
/// `-ERESTARTNOHAND`: restarted when no handler ran.
const ERESTARTNOHAND: i64 = 514;
/// `-ERESTART_RESTARTBLOCK`: restart through the task's `restart_block`.
const ERESTART_RESTARTBLOCK: i64 = 516;
/// `EINTR`, what a syscall whose restart block is lost reports.
const EINTR: i64 = 4;
/// Length of the `syscall` instruction (`0f 05`), to step back onto it.
const SYSCALL_INSN_LEN: u64 = 2;

/// The registers a task stopped inside a syscall must get back so that the
/// syscall runs again after restore.
///
/// A restored thread resumes through `rt_sigreturn`, which sets `orig_rax = -1`,
/// so the kernel's own restart logic never sees the interrupted syscall: the
/// restart is done here instead, by pointing `rip` back at the `syscall`
/// instruction with the syscall number in `rax`. A restart block cannot move to
/// a new process, so such a syscall returns `-EINTR` (as after a signal whose
/// handler ran), which callers like `nanosleep` already handle.
pub fn syscall_restart(regs: &UserRegs) -> UserRegs {
    let mut out = *regs;
    // Registers are raw u64 images of signed kernel longs.
    let nr = regs.orig_rax as i64;
    if nr < 0 {
        return out;
    }
    match -(regs.rax as i64) {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
            out.rax = regs.orig_rax;
            out.rip = regs.rip.wrapping_sub(SYSCALL_INSN_LEN);
        }
        ERESTART_RESTARTBLOCK => out.rax = (-EINTR) as u64,
        _ => {}
    }
    out
}

/// Whether `regs` are those of a thread interrupted in a syscall that the
/// kernel restarts unless a signal handler runs first (`ERESTARTSYS`,
/// `ERESTARTNOINTR`, `ERESTARTNOHAND`). Such a thread is released inside
/// its re-executed syscall, or with these registers when a signal comes
/// first, so the kernel decides between restart and `EINTR` as it would
/// have without the checkpoint.
pub fn interrupted_restartable(regs: &UserRegs) -> bool {
    (regs.orig_rax as i64) >= 0
        && matches!(
            -(regs.rax as i64),
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    /// Offsets from `<sys/user.h>`: 27 consecutive 8-byte fields.
    #[test]
    fn layout_matches_user_regs_struct() {
        assert_eq!(size_of::<UserRegs>(), 216);
        assert_eq!(offset_of!(UserRegs, r15), 0);
        assert_eq!(offset_of!(UserRegs, rbx), 40);
        assert_eq!(offset_of!(UserRegs, rax), 80);
        assert_eq!(offset_of!(UserRegs, orig_rax), 120);
        assert_eq!(offset_of!(UserRegs, rip), 128);
        assert_eq!(offset_of!(UserRegs, cs), 136);
        assert_eq!(offset_of!(UserRegs, eflags), 144);
        assert_eq!(offset_of!(UserRegs, rsp), 152);
        assert_eq!(offset_of!(UserRegs, ss), 160);
        assert_eq!(offset_of!(UserRegs, fs_base), 168);
        assert_eq!(offset_of!(UserRegs, gs_base), 176);
        assert_eq!(offset_of!(UserRegs, ds), 184);
        assert_eq!(offset_of!(UserRegs, gs), 208);
    }

    fn in_syscall(nr: u64, ret: i64) -> UserRegs {
        UserRegs {
            orig_rax: nr,
            rax: ret as u64,
            rip: 0x40_1002,
            rdi: 7,
            ..UserRegs::default()
        }
    }

    #[test]
    fn restartable_errors_rerun_the_syscall() {
        for code in [ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND] {
            let out = syscall_restart(&in_syscall(0, -code));
            assert_eq!(out.rax, 0, "code {code}");
            assert_eq!(out.rip, 0x40_1000, "code {code}");
            assert_eq!(out.orig_rax, 0);
            assert_eq!(out.rdi, 7);
        }
        let out = syscall_restart(&in_syscall(230, -ERESTARTSYS));
        assert_eq!(out.rax, 230);
    }

    #[test]
    fn restart_block_becomes_eintr() {
        let regs = in_syscall(35, -ERESTART_RESTARTBLOCK);
        let out = syscall_restart(&regs);
        assert_eq!(out.rax as i64, -EINTR);
        assert_eq!(out.rip, regs.rip);
    }

    #[test]
    fn other_states_are_unchanged() {
        // Finished syscall with an ordinary error or a result.
        for ret in [-4, -11, 0, 512, 3] {
            let regs = in_syscall(0, ret);
            assert_eq!(syscall_restart(&regs), regs);
        }
        // Not in a syscall at all (orig_rax = -1), even if rax looks like a restart code.
        let regs = in_syscall(u64::MAX, -ERESTARTSYS);
        assert_eq!(syscall_restart(&regs), regs);
    }
}
