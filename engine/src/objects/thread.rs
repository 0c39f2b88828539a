//! A thread's CPU state: general registers, XSAVE area, blocked mask and
//! sigaltstack, dump and restore side by side. Restore hands them to the
//! kernel through an rt_sigreturn frame.

use crate::error::{Error, Result};
use rcr_arch::regs::{syscall_restart, UserRegs};
use rcr_arch::sigframe::{build_rt_sigframe, AltStack, SigFrame, SigFrameInput};
use rcr_images::pb;

/// Builds a `$to` from the same-named register fields of `$from`; the image
/// and ptrace name every register alike.
macro_rules! copy_regs {
    ($from:expr => $to:ident) => {{
        let r = $from;
        $to {
            r15: r.r15,
            r14: r.r14,
            r13: r.r13,
            r12: r.r12,
            rbp: r.rbp,
            rbx: r.rbx,
            r11: r.r11,
            r10: r.r10,
            r9: r.r9,
            r8: r.r8,
            rax: r.rax,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            orig_rax: r.orig_rax,
            rip: r.rip,
            cs: r.cs,
            eflags: r.eflags,
            rsp: r.rsp,
            ss: r.ss,
            fs_base: r.fs_base,
            gs_base: r.gs_base,
            ds: r.ds,
            es: r.es,
            fs: r.fs,
            gs: r.gs,
        }
    }};
}

/// Dump side: registers as the image stores them.
pub fn dump_regs(r: &UserRegs) -> pb::GpRegs {
    use pb::GpRegs;
    copy_regs!(r => GpRegs)
}

/// Restore side: registers back from the image.
pub fn restore_regs(r: &pb::GpRegs) -> UserRegs {
    copy_regs!(r => UserRegs)
}

/// Restore side: the frame that rt_sigreturn turns back into this thread.
/// A thread stopped inside a system call gets it re-executed.
pub fn sigframe(pid: i32, t: &pb::ThreadCore, xfeatures: u64, frame_addr: u64) -> Result<SigFrame> {
    let regs = t.regs.as_ref().ok_or_else(|| Error::Invalid {
        path: format!("core-{pid}.img").into(),
        what: format!("thread {} has no registers", t.tid),
    })?;
    let regs = syscall_restart(&restore_regs(regs));
    let alt = t.altstack.unwrap_or_default();
    let input = SigFrameInput {
        regs: &regs,
        xsave: &t.xsave,
        xfeatures,
        sigmask: t.sigmask,
        altstack: AltStack {
            sp: alt.sp,
            flags: alt.flags,
            size: alt.size,
        },
    };
    build_rt_sigframe(&input, frame_addr).map_err(|e| Error::Invalid {
        path: format!("core-{pid}.img").into(),
        what: format!("thread {}: {e}", t.tid),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regs_round_trip() {
        let r = UserRegs {
            r15: 1,
            rip: 0x401000,
            rsp: 0x7ffc_0000,
            fs_base: 0x7f00_0000,
            orig_rax: u64::MAX,
            gs: 9,
            ..Default::default()
        };
        assert_eq!(restore_regs(&dump_regs(&r)), r);
    }
}
