//! The x86_64 `struct rt_sigframe` that `rt_sigreturn` consumes: how a restored
//! thread gets all its registers, FPU/vector state, signal mask and altstack
//! back in one syscall.
//!
//! Frame at `frame_addr` (64-byte aligned):
//! `pretcode` (8) | `struct ucontext` (304) | `siginfo` (128) | pad to 64 |
//! XSAVE area (`xsave.len()` bytes, sw_reserved filled) | `FP_XSTATE_MAGIC2`.
//! The kernel finds the frame at `rsp - 8`, so the caller sets
//! `rsp = frame_addr + 8` and issues `syscall` with `rax = SYS_rt_sigreturn`.

use bitflags::bitflags;
use thiserror::Error;

use crate::bytes::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};
use crate::regs::UserRegs;
use crate::xsave::{
    SwBytes, FP_XSTATE_MAGIC1, FP_XSTATE_MAGIC2, FP_XSTATE_MAGIC2_SIZE, LEGACY_SIZE, MIN_SIZE,
};

/// Byte offsets of the frame, from `<asm/ucontext.h>`, `<asm-generic/ucontext.h>`,
/// `<asm/sigcontext.h>`, `<asm/signal.h>` and the kernel's `struct rt_sigframe`.
mod layout {
    /// `char *pretcode`: where a handler would return; unused by rt_sigreturn.
    pub const PRETCODE: usize = 0;
    /// `struct ucontext uc`.
    pub const UC: usize = 8;
    pub const UC_FLAGS: usize = UC;
    pub const UC_LINK: usize = UC + 8;
    /// `stack_t uc_stack`: `ss_sp` (8), `ss_flags` (4 + 4 pad), `ss_size` (8).
    pub const UC_STACK: usize = UC + 16;
    pub const SS_SP: usize = UC_STACK;
    pub const SS_FLAGS: usize = UC_STACK + 8;
    pub const SS_SIZE: usize = UC_STACK + 16;
    /// `struct sigcontext uc_mcontext` (256 bytes).
    pub const MCONTEXT: usize = UC + 40;
    /// The kernel's `sigset_t` is one u64 on x86_64.
    pub const UC_SIGMASK: usize = UC + 296;
    pub const UCONTEXT_SIZE: usize = 304;
    /// `siginfo_t info`, unused by rt_sigreturn, left zero.
    pub const SIGINFO: usize = UC + UCONTEXT_SIZE;
    pub const SIGINFO_SIZE: usize = 128;
    /// `sizeof(struct rt_sigframe)`.
    pub const FRAME_STRUCT_SIZE: usize = SIGINFO + SIGINFO_SIZE;
    /// XRSTOR needs a 64-byte aligned area.
    pub const FPSTATE_ALIGN: usize = 64;
    pub const FPSTATE: usize = FRAME_STRUCT_SIZE.next_multiple_of(FPSTATE_ALIGN);

    /// Offsets inside `struct sigcontext` (x86_64).
    pub mod sc {
        pub const R8: usize = 0;
        pub const R9: usize = 8;
        pub const R10: usize = 16;
        pub const R11: usize = 24;
        pub const R12: usize = 32;
        pub const R13: usize = 40;
        pub const R14: usize = 48;
        pub const R15: usize = 56;
        pub const RDI: usize = 64;
        pub const RSI: usize = 72;
        pub const RBP: usize = 80;
        pub const RBX: usize = 88;
        pub const RDX: usize = 96;
        pub const RAX: usize = 104;
        pub const RCX: usize = 112;
        pub const RSP: usize = 120;
        pub const RIP: usize = 128;
        pub const EFLAGS: usize = 136;
        pub const CS: usize = 144;
        pub const GS: usize = 146;
        pub const FS: usize = 148;
        pub const SS: usize = 150;
        pub const FPSTATE: usize = 184;
        pub const SIZE: usize = 256;
    }
}

bitflags! {
    /// `uc_flags` of `<asm/ucontext.h>`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct UcFlags: u64 {
        /// The FP state is an XSAVE area (sw_reserved describes it).
        const FP_XSTATE = 0x1;
        /// `uc_mcontext.ss` is valid.
        const SIGCONTEXT_SS = 0x2;
        /// Restore `ss` exactly instead of fixing it up.
        const STRICT_RESTORE_SS = 0x4;
    }
}

/// `stack_t`: the alternate signal stack a thread had (`sigaltstack`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AltStack {
    /// `ss_sp`: base of the stack.
    pub sp: u64,
    /// `ss_flags`: `SS_DISABLE` (2), `SS_ONSTACK` (1), `SS_AUTODISARM` (1 << 31).
    pub flags: i32,
    /// `ss_size`: size in bytes.
    pub size: u64,
}

/// What one thread's frame is built from.
#[derive(Clone, Copy, Debug)]
pub struct SigFrameInput<'a> {
    /// General-purpose registers as dumped (after [`crate::regs::syscall_restart`]).
    pub regs: &'a UserRegs,
    /// Standard-format XSAVE area as ptrace `NT_X86_XSTATE` returned it.
    pub xsave: &'a [u8],
    /// Components the kernel restores from the area (usually the dump's XCR0);
    /// the others are reset to their init state.
    pub xfeatures: u64,
    /// Blocked signals: bit `n - 1` for signal `n`.
    pub sigmask: u64,
    /// The thread's alternate signal stack.
    pub altstack: AltStack,
}

/// A built frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigFrame {
    /// Bytes to copy to `frame_addr`.
    pub bytes: Vec<u8>,
    /// Stack pointer to set before `syscall(SYS_rt_sigreturn)`.
    pub rsp: u64,
}

/// Why a frame cannot be built or read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SigFrameError {
    /// The frame address is not 64-byte aligned (XRSTOR would fault).
    #[error("signal frame address {addr:#x} is not 64-byte aligned")]
    Unaligned {
        /// The frame address given.
        addr: u64,
    },
    /// The XSAVE area lacks the legacy region or header.
    #[error(
        "XSAVE area of {len} bytes is shorter than the {min} bytes of legacy region and header"
    )]
    XsaveTooShort {
        /// Its length.
        len: usize,
        /// The least the kernel accepts.
        min: usize,
    },
    /// The XSAVE area is larger than `_fpx_sw_bytes` can describe.
    #[error("XSAVE area of {len} bytes is too large for a signal frame")]
    XsaveTooLarge {
        /// Its length.
        len: usize,
    },
    /// The frame would run past the end of the address space.
    #[error("signal frame of {len} bytes at {addr:#x} wraps the address space")]
    AddressOverflow {
        /// The frame address.
        addr: u64,
        /// The frame length.
        len: usize,
    },
    /// The bytes are too short for what the frame says it holds.
    #[error("signal frame at {addr:#x} is {len} bytes, shorter than the {need} bytes it needs")]
    Truncated {
        /// The frame address.
        addr: u64,
        /// Bytes given.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// `uc_mcontext.fpstate` does not point inside the frame.
    #[error("signal frame at {addr:#x}: fpstate pointer {fpstate:#x} is outside the frame")]
    FpstateOutside {
        /// The frame address.
        addr: u64,
        /// The pointer found.
        fpstate: u64,
    },
    /// `FP_XSTATE_MAGIC2` is missing after the XSAVE area.
    #[error("signal frame at {addr:#x}: XSAVE area at {fpstate:#x} lacks FP_XSTATE_MAGIC2 (found {found:#x})")]
    BadMagic2 {
        /// The frame address.
        addr: u64,
        /// Address of the FP state.
        fpstate: u64,
        /// The word found where the magic belongs.
        found: u32,
    },
}

/// Bytes a frame with an XSAVE area of `xsave_len` bytes occupies from `frame_addr`.
pub fn frame_size(xsave_len: usize) -> usize {
    layout::FPSTATE + xsave_len + FP_XSTATE_MAGIC2_SIZE
}

/// Builds the frame to place at `frame_addr` (64-byte aligned).
///
/// `fs_base`/`gs_base` are not part of it: rt_sigreturn leaves them alone, so
/// the restorer sets them with `arch_prctl` before the call.
pub fn build_rt_sigframe(
    input: &SigFrameInput,
    frame_addr: u64,
) -> Result<SigFrame, SigFrameError> {
    if !frame_addr.is_multiple_of(layout::FPSTATE_ALIGN as u64) {
        return Err(SigFrameError::Unaligned { addr: frame_addr });
    }
    let xlen = input.xsave.len();
    if xlen < MIN_SIZE {
        return Err(SigFrameError::XsaveTooShort {
            len: xlen,
            min: MIN_SIZE,
        });
    }
    let xstate_size = u32::try_from(xlen)
        .ok()
        .filter(|s| s.checked_add(FP_XSTATE_MAGIC2_SIZE as u32).is_some())
        .ok_or(SigFrameError::XsaveTooLarge { len: xlen })?;
    let len = frame_size(xlen);
    frame_addr
        .checked_add(len as u64)
        .ok_or(SigFrameError::AddressOverflow {
            addr: frame_addr,
            len,
        })?;

    let mut bytes = vec![0u8; len];
    let flags = UcFlags::FP_XSTATE | UcFlags::SIGCONTEXT_SS | UcFlags::STRICT_RESTORE_SS;
    put_u64(&mut bytes, layout::PRETCODE, 0);
    put_u64(&mut bytes, layout::UC_FLAGS, flags.bits());
    put_u64(&mut bytes, layout::UC_LINK, 0);
    put_u64(&mut bytes, layout::SS_SP, input.altstack.sp);
    put_u32(&mut bytes, layout::SS_FLAGS, input.altstack.flags as u32);
    put_u64(&mut bytes, layout::SS_SIZE, input.altstack.size);
    let fpstate_addr = frame_addr + layout::FPSTATE as u64;
    write_sigcontext(&mut bytes[layout::MCONTEXT..], input.regs, fpstate_addr);
    put_u64(&mut bytes, layout::UC_SIGMASK, input.sigmask);

    let area = &mut bytes[layout::FPSTATE..layout::FPSTATE + xlen];
    area.copy_from_slice(input.xsave);
    SwBytes::for_area(xstate_size, input.xfeatures).write(area);
    put_u32(&mut bytes, layout::FPSTATE + xlen, FP_XSTATE_MAGIC2);

    Ok(SigFrame {
        bytes,
        rsp: frame_addr + layout::UC as u64,
    })
}

/// Fills `struct sigcontext` (`sc` starts at `uc_mcontext`).
fn write_sigcontext(sc: &mut [u8], r: &UserRegs, fpstate_addr: u64) {
    use layout::sc::*;
    for (off, v) in [
        (R8, r.r8),
        (R9, r.r9),
        (R10, r.r10),
        (R11, r.r11),
        (R12, r.r12),
        (R13, r.r13),
        (R14, r.r14),
        (R15, r.r15),
        (RDI, r.rdi),
        (RSI, r.rsi),
        (RBP, r.rbp),
        (RBX, r.rbx),
        (RDX, r.rdx),
        (RAX, r.rax),
        (RCX, r.rcx),
        (RSP, r.rsp),
        (RIP, r.rip),
        (EFLAGS, r.eflags),
        (FPSTATE, fpstate_addr),
    ] {
        put_u64(sc, off, v);
    }
    // Segment selectors are 16-bit; user_regs_struct widens them to u64.
    for (off, v) in [(CS, r.cs), (GS, r.gs), (FS, r.fs), (SS, r.ss)] {
        put_u16(sc, off, v as u16);
    }
}

/// Reads `struct sigcontext` back into registers; what the frame does not carry
/// is what rt_sigreturn leaves: `orig_rax = -1`, bases and ds/es zero.
fn read_sigcontext(sc: &[u8]) -> UserRegs {
    use layout::sc::*;
    // The caller checked the frame length, so every field is in range.
    let q = |off| get_u64(sc, off).unwrap_or_default();
    let w = |off| u64::from(get_u16(sc, off).unwrap_or_default());
    UserRegs {
        r8: q(R8),
        r9: q(R9),
        r10: q(R10),
        r11: q(R11),
        r12: q(R12),
        r13: q(R13),
        r14: q(R14),
        r15: q(R15),
        rdi: q(RDI),
        rsi: q(RSI),
        rbp: q(RBP),
        rbx: q(RBX),
        rdx: q(RDX),
        rax: q(RAX),
        rcx: q(RCX),
        rsp: q(RSP),
        rip: q(RIP),
        eflags: q(EFLAGS),
        cs: w(CS),
        gs: w(GS),
        fs: w(FS),
        ss: w(SS),
        orig_rax: u64::MAX,
        ..UserRegs::default()
    }
}

/// Reads a frame that lies at `frame_addr`: registers, blocked signals and
/// altstack. Checks that the FP state pointer stays inside `bytes` and, when
/// the area claims extended state, that `FP_XSTATE_MAGIC2` follows it.
pub fn parse_rt_sigframe(
    bytes: &[u8],
    frame_addr: u64,
) -> Result<(UserRegs, u64, AltStack), SigFrameError> {
    let truncated = |need| SigFrameError::Truncated {
        addr: frame_addr,
        len: bytes.len(),
        need,
    };
    if bytes.len() < layout::FRAME_STRUCT_SIZE {
        return Err(truncated(layout::FRAME_STRUCT_SIZE));
    }
    let sc = &bytes[layout::MCONTEXT..layout::MCONTEXT + layout::sc::SIZE];
    let regs = read_sigcontext(sc);
    let fpstate = get_u64(sc, layout::sc::FPSTATE).unwrap_or_default();
    if fpstate != 0 {
        check_fpstate(bytes, frame_addr, fpstate)?;
    }
    let sigmask = get_u64(bytes, layout::UC_SIGMASK).unwrap_or_default();
    let altstack = AltStack {
        sp: get_u64(bytes, layout::SS_SP).unwrap_or_default(),
        flags: get_u32(bytes, layout::SS_FLAGS).unwrap_or_default() as i32,
        size: get_u64(bytes, layout::SS_SIZE).unwrap_or_default(),
    };
    Ok((regs, sigmask, altstack))
}

/// Checks the FP state at absolute address `fpstate` within a frame.
fn check_fpstate(bytes: &[u8], frame_addr: u64, fpstate: u64) -> Result<(), SigFrameError> {
    let outside = SigFrameError::FpstateOutside {
        addr: frame_addr,
        fpstate,
    };
    let off = fpstate
        .checked_sub(frame_addr)
        .and_then(|o| usize::try_from(o).ok())
        .ok_or(outside)?;
    let legacy_end = off.saturating_add(LEGACY_SIZE);
    let area = bytes.get(off..legacy_end).ok_or(SigFrameError::Truncated {
        addr: frame_addr,
        len: bytes.len(),
        need: legacy_end,
    })?;
    let Some(sw) = SwBytes::read(area).filter(|sw| sw.magic1 == FP_XSTATE_MAGIC1) else {
        return Ok(());
    };
    let magic_at = off.saturating_add(sw.xstate_size as usize);
    let found = get_u32(bytes, magic_at).ok_or(SigFrameError::Truncated {
        addr: frame_addr,
        len: bytes.len(),
        need: magic_at.saturating_add(FP_XSTATE_MAGIC2_SIZE),
    })?;
    if found != FP_XSTATE_MAGIC2 {
        return Err(SigFrameError::BadMagic2 {
            addr: frame_addr,
            fpstate,
            found,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
