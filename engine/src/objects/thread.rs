//! A thread: its CPU state (general registers, XSAVE area, blocked mask,
//! sigaltstack), its queued signals and its kernel links (clear-child-tid,
//! robust list, rseq, name), dump and restore side by side. Restore hands
//! the CPU state to the kernel through an rt_sigreturn frame; the restorer
//! sets the rest from inside the thread.

use crate::error::{Error, Result};
use crate::objects::signals;
use crate::proc::tasks;
use crate::ptrace::{self, PtraceError};
use nix::errno::Errno;
use rcr_arch::regs::{syscall_restart, UserRegs};
use rcr_arch::sigframe::{build_rt_sigframe, AltStack, SigFrame, SigFrameInput};
use rcr_images::pb;
use rcr_parasite::restore_abi::{RseqConf, ThreadArgs};

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

/// Dump side: thread `tid` of process `pid`, seized and stopped, as ptrace
/// and /proc tell it, before anything else touches its registers. What only
/// the thread can tell (sigaltstack, clear-child-tid) is asked through the
/// parasite later.
pub fn dump_thread(pid: i32, tid: i32) -> Result<pb::ThreadCore> {
    let traced = |e: PtraceError| Error::sys(tid, e.op, e.errno);
    let regs = ptrace::get_regs(tid).map_err(traced)?;
    let pending = ptrace::peek_siginfo(tid, false)
        .map_err(traced)?
        .iter()
        .map(signals::dump_pending)
        .collect();
    let rseq = ptrace::get_rseq_configuration(tid).map_err(traced)?;
    let (robust_list, robust_list_len) = robust_list(tid)?;
    Ok(pb::ThreadCore {
        tid,
        comm: tasks::read_comm(pid, tid)?,
        regs: Some(dump_regs(&regs)),
        xsave: ptrace::get_xstate(tid).map_err(traced)?,
        sigmask: ptrace::get_sigmask(tid).map_err(traced)?,
        altstack: None,
        pending,
        clear_child_tid: 0,
        robust_list,
        robust_list_len,
        rseq: (rseq.rseq_abi_pointer != 0).then_some(pb::Rseq {
            address: rseq.rseq_abi_pointer,
            length: rseq.rseq_abi_size,
            signature: rseq.signature,
        }),
    })
}

/// `get_robust_list(tid)`: the head of the thread's robust futex list.
fn robust_list(tid: i32) -> Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: u64 = 0;
    // SAFETY: the kernel writes one pointer and one size_t into our locals.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid,
            &mut head as *mut u64,
            &mut len as *mut u64,
        )
    };
    if ret != 0 {
        return Err(Error::sys(tid, "get_robust_list", Errno::last()));
    }
    Ok((head, len))
}

/// Restore side: the thread's own part of the restorer's arguments; the
/// engine fills in the addresses of its frame, signals and stack.
pub fn restore_thread_args(t: &pb::ThreadCore) -> ThreadArgs {
    let regs = t.regs.unwrap_or_default();
    let (set_tid, set_tid_size) = super::pid_ns::set_tid(&[t.tid]);
    ThreadArgs {
        tid: t.tid,
        set_tid_size,
        set_tid,
        sigframe_rsp: 0,
        fs_base: regs.fs_base,
        gs_base: regs.gs_base,
        clear_child_tid: t.clear_child_tid,
        robust_list: t.robust_list,
        robust_list_len: t.robust_list_len,
        pending: 0,
        nr_pending: 0,
        stack: 0,
        stack_size: 0,
        rseq: t.rseq.map_or(RseqConf::default(), |r| RseqConf {
            addr: r.address,
            len: r.length,
            sig: r.signature,
        }),
        comm: comm_bytes(&t.comm),
    }
}

/// The name as `PR_SET_NAME` takes it: at most 15 bytes and a NUL.
pub fn comm_bytes(comm: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let n = comm.len().min(15);
    out[..n].copy_from_slice(&comm.as_bytes()[..n]);
    out
}

/// Restore side: the frame that rt_sigreturn turns back into this thread.
/// A thread stopped inside a system call gets it re-executed.
/// `xsave` is the thread's area already moved to this host's layout.
pub fn sigframe(
    pid: i32,
    t: &pb::ThreadCore,
    xsave: &[u8],
    xfeatures: u64,
    frame_addr: u64,
) -> Result<SigFrame> {
    let regs = t.regs.as_ref().ok_or_else(|| Error::Invalid {
        path: format!("core-{pid}.img").into(),
        what: format!("thread {} has no registers", t.tid),
    })?;
    let regs = syscall_restart(&restore_regs(regs));
    let alt = t.altstack.unwrap_or_default();
    let input = SigFrameInput {
        regs: &regs,
        xsave,
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
