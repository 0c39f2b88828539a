use super::*;
use crate::xsave::{SW_RESERVED_OFFSET, XSTATE_BV_OFFSET};
use core::mem::{offset_of, size_of};
use proptest::prelude::*;

/// Mirrors of the UAPI/kernel structs, only to let the compiler compute the
/// offsets the `layout` constants hard-code.
#[repr(C)]
struct StackT {
    ss_sp: u64,
    ss_flags: i32,
    ss_size: u64,
}

#[repr(C)]
struct SigContext {
    r8: u64,
    r9: u64,
    r10: u64,
    r11: u64,
    r12: u64,
    r13: u64,
    r14: u64,
    r15: u64,
    rdi: u64,
    rsi: u64,
    rbp: u64,
    rbx: u64,
    rdx: u64,
    rax: u64,
    rcx: u64,
    rsp: u64,
    rip: u64,
    eflags: u64,
    cs: u16,
    gs: u16,
    fs: u16,
    ss: u16,
    err: u64,
    trapno: u64,
    oldmask: u64,
    cr2: u64,
    fpstate: u64,
    reserved1: [u64; 8],
}

#[repr(C)]
struct UContext {
    uc_flags: u64,
    uc_link: u64,
    uc_stack: StackT,
    uc_mcontext: SigContext,
    uc_sigmask: u64,
}

#[repr(C)]
struct RtSigFrame {
    pretcode: u64,
    uc: UContext,
    info: [u8; 128],
}

#[test]
fn layout_matches_uapi_structs() {
    use layout::*;
    assert_eq!(size_of::<StackT>(), 24);
    assert_eq!(size_of::<SigContext>(), sc::SIZE);
    assert_eq!(size_of::<UContext>(), UCONTEXT_SIZE);
    assert_eq!(size_of::<RtSigFrame>(), FRAME_STRUCT_SIZE);
    assert_eq!(FRAME_STRUCT_SIZE, 440);
    assert_eq!(FPSTATE, 448);

    assert_eq!(offset_of!(RtSigFrame, pretcode), PRETCODE);
    assert_eq!(offset_of!(RtSigFrame, uc), UC);
    assert_eq!(offset_of!(RtSigFrame, info), SIGINFO);
    assert_eq!(UC + offset_of!(UContext, uc_flags), UC_FLAGS);
    assert_eq!(UC + offset_of!(UContext, uc_link), UC_LINK);
    assert_eq!(UC + offset_of!(UContext, uc_stack), UC_STACK);
    assert_eq!(UC_STACK + offset_of!(StackT, ss_sp), SS_SP);
    assert_eq!(UC_STACK + offset_of!(StackT, ss_flags), SS_FLAGS);
    assert_eq!(UC_STACK + offset_of!(StackT, ss_size), SS_SIZE);
    assert_eq!(UC + offset_of!(UContext, uc_mcontext), MCONTEXT);
    assert_eq!(UC + offset_of!(UContext, uc_sigmask), UC_SIGMASK);
    // Absolute offsets in the frame, as the kernel's rt_sigreturn reads them.
    assert_eq!(
        (UC_FLAGS, UC_LINK, SS_SP, SS_FLAGS, SS_SIZE),
        (8, 16, 24, 32, 40)
    );
    assert_eq!((MCONTEXT, UC_SIGMASK, SIGINFO), (48, 304, 312));

    let sc_fields = [
        (offset_of!(SigContext, r8), sc::R8, 0),
        (offset_of!(SigContext, r9), sc::R9, 8),
        (offset_of!(SigContext, r10), sc::R10, 16),
        (offset_of!(SigContext, r11), sc::R11, 24),
        (offset_of!(SigContext, r12), sc::R12, 32),
        (offset_of!(SigContext, r13), sc::R13, 40),
        (offset_of!(SigContext, r14), sc::R14, 48),
        (offset_of!(SigContext, r15), sc::R15, 56),
        (offset_of!(SigContext, rdi), sc::RDI, 64),
        (offset_of!(SigContext, rsi), sc::RSI, 72),
        (offset_of!(SigContext, rbp), sc::RBP, 80),
        (offset_of!(SigContext, rbx), sc::RBX, 88),
        (offset_of!(SigContext, rdx), sc::RDX, 96),
        (offset_of!(SigContext, rax), sc::RAX, 104),
        (offset_of!(SigContext, rcx), sc::RCX, 112),
        (offset_of!(SigContext, rsp), sc::RSP, 120),
        (offset_of!(SigContext, rip), sc::RIP, 128),
        (offset_of!(SigContext, eflags), sc::EFLAGS, 136),
        (offset_of!(SigContext, cs), sc::CS, 144),
        (offset_of!(SigContext, gs), sc::GS, 146),
        (offset_of!(SigContext, fs), sc::FS, 148),
        (offset_of!(SigContext, ss), sc::SS, 150),
        (offset_of!(SigContext, fpstate), sc::FPSTATE, 184),
    ];
    for (computed, constant, header) in sc_fields {
        assert_eq!(computed, constant);
        assert_eq!(constant, header);
    }
    assert_eq!(offset_of!(SigContext, err), 152);
    assert_eq!(offset_of!(SigContext, cr2), 176);
    assert_eq!(offset_of!(SigContext, reserved1), 192);
}

fn xsave_area(len: usize) -> Vec<u8> {
    let mut area: Vec<u8> = (0..len).map(|i| i as u8).collect();
    area[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8].copy_from_slice(&7u64.to_le_bytes());
    area
}

fn sample_regs() -> UserRegs {
    UserRegs {
        rax: 1,
        rbx: 2,
        rcx: 3,
        rdx: 4,
        rsi: 5,
        rdi: 6,
        rbp: 7,
        rsp: 0x7ffd_0000_1000,
        r8: 8,
        r15: 15,
        rip: 0x40_1000,
        eflags: 0x246,
        cs: 0x33,
        ss: 0x2b,
        fs_base: 0x7f00_0000_0000,
        orig_rax: 0,
        ..UserRegs::default()
    }
}

#[test]
fn built_frame_has_header_sigcontext_and_fpstate() {
    let regs = sample_regs();
    let xsave = xsave_area(832);
    let input = SigFrameInput {
        regs: &regs,
        xsave: &xsave,
        xfeatures: 7,
        sigmask: 1 << 9,
        altstack: AltStack {
            sp: 0x1000,
            flags: 0,
            size: 0x4000,
        },
    };
    let addr = 0x7f12_3456_7000;
    let frame = build_rt_sigframe(&input, addr).unwrap();
    let b = &frame.bytes;
    assert_eq!(b.len(), frame_size(832));
    assert_eq!(b.len(), 448 + 832 + 4);
    assert_eq!(frame.rsp, addr + 8);
    assert_eq!(get_u64(b, 8), Some(0x7));
    assert_eq!(get_u64(b, 16), Some(0));
    assert_eq!(get_u64(b, 24), Some(0x1000));
    assert_eq!(get_u64(b, 40), Some(0x4000));
    assert_eq!(get_u64(b, 48 + 104), Some(1), "rax");
    assert_eq!(get_u64(b, 48 + 128), Some(0x40_1000), "rip");
    assert_eq!(get_u16(b, 48 + 144), Some(0x33), "cs");
    assert_eq!(get_u16(b, 48 + 150), Some(0x2b), "ss");
    assert_eq!(get_u64(b, 48 + 184), Some(addr + 448), "fpstate");
    assert_eq!(get_u64(b, 304), Some(1 << 9), "sigmask");
    assert!(b[312..448].iter().all(|&x| x == 0), "siginfo and padding");
    // The area is copied, except sw_reserved which now describes it.
    let area = &b[448..448 + 832];
    assert_eq!(&area[..SW_RESERVED_OFFSET], &xsave[..SW_RESERVED_OFFSET]);
    assert_eq!(&area[512..], &xsave[512..]);
    assert_eq!(SwBytes::read(area), Some(SwBytes::for_area(832, 7)));
    assert_eq!(get_u32(b, 448 + 832), Some(FP_XSTATE_MAGIC2));
}

#[test]
fn build_refuses_bad_input() {
    let regs = sample_regs();
    let short = vec![0u8; 575];
    let ok = vec![0u8; 576];
    let input = |xsave| SigFrameInput {
        regs: &regs,
        xsave,
        xfeatures: 3,
        sigmask: 0,
        altstack: AltStack::default(),
    };
    assert_eq!(
        build_rt_sigframe(&input(&ok), 0x1020),
        Err(SigFrameError::Unaligned { addr: 0x1020 })
    );
    assert_eq!(
        build_rt_sigframe(&input(&short), 0x1000),
        Err(SigFrameError::XsaveTooShort { len: 575, min: 576 })
    );
    assert!(matches!(
        build_rt_sigframe(&input(&ok), u64::MAX - 63),
        Err(SigFrameError::AddressOverflow { .. })
    ));
    assert!(build_rt_sigframe(&input(&ok), 0x1000).is_ok());
}

#[test]
fn parse_refuses_damaged_frames() {
    let regs = sample_regs();
    let xsave = xsave_area(576);
    let input = SigFrameInput {
        regs: &regs,
        xsave: &xsave,
        xfeatures: 3,
        sigmask: 0,
        altstack: AltStack::default(),
    };
    let addr = 0x10_0000;
    let frame = build_rt_sigframe(&input, addr).unwrap();
    let b = &frame.bytes;
    assert!(matches!(
        parse_rt_sigframe(&b[..439], addr),
        Err(SigFrameError::Truncated { need: 440, .. })
    ));
    assert!(matches!(
        parse_rt_sigframe(&b[..b.len() - 1], addr),
        Err(SigFrameError::Truncated { .. })
    ));
    // Parsed at another address, the fpstate pointer falls outside.
    assert!(matches!(
        parse_rt_sigframe(b, addr + 0x1000),
        Err(SigFrameError::FpstateOutside { .. })
    ));
    let mut bad = b.clone();
    let n = bad.len();
    bad[n - 1] ^= 0xff;
    assert!(matches!(
        parse_rt_sigframe(&bad, addr),
        Err(SigFrameError::BadMagic2 { .. })
    ));
}

fn arb_regs() -> impl Strategy<Value = UserRegs> {
    (
        prop::array::uniform18(any::<u64>()),
        prop::array::uniform4(any::<u16>()),
    )
        .prop_map(|(q, s)| UserRegs {
            r8: q[0],
            r9: q[1],
            r10: q[2],
            r11: q[3],
            r12: q[4],
            r13: q[5],
            r14: q[6],
            r15: q[7],
            rdi: q[8],
            rsi: q[9],
            rbp: q[10],
            rbx: q[11],
            rdx: q[12],
            rax: q[13],
            rcx: q[14],
            rsp: q[15],
            rip: q[16],
            eflags: q[17],
            cs: u64::from(s[0]),
            gs: u64::from(s[1]),
            fs: u64::from(s[2]),
            ss: u64::from(s[3]),
            orig_rax: 5,
            fs_base: 0x1234,
            ..UserRegs::default()
        })
}

proptest! {
    #[test]
    fn round_trip(
        regs in arb_regs(),
        sigmask in any::<u64>(),
        alt in (any::<u64>(), any::<i32>(), any::<u64>()),
        xlen in 576usize..3000,
        page in 1u64..(1 << 40),
        xfeatures in any::<u64>(),
    ) {
        let xsave = xsave_area(xlen);
        let altstack = AltStack { sp: alt.0, flags: alt.1, size: alt.2 };
        let input = SigFrameInput { regs: &regs, xsave: &xsave, xfeatures, sigmask, altstack };
        let addr = page * 64;
        let frame = build_rt_sigframe(&input, addr).unwrap();
        prop_assert_eq!(frame.bytes.len(), frame_size(xlen));
        let (back, mask, alt_back) = parse_rt_sigframe(&frame.bytes, addr).unwrap();
        // What the frame cannot carry comes back as rt_sigreturn leaves it.
        let expected = UserRegs { orig_rax: u64::MAX, fs_base: 0, ..regs };
        prop_assert_eq!(back, expected);
        prop_assert_eq!(mask, sigmask);
        prop_assert_eq!(alt_back, altstack);
        let area = &frame.bytes[448..448 + xlen];
        prop_assert_eq!(SwBytes::read(area).unwrap(), SwBytes::for_area(xlen as u32, xfeatures));
    }
}
