//! The XSAVE area as ptrace `NT_X86_XSTATE` returns it (standard, non-compacted
//! format) and as a signal frame carries it: legacy FXSAVE region, XSAVE header,
//! then each enabled component at the offset CPUID leaf 0xD gives.

use crate::bytes::{get, get_u32, get_u64, put_u32, put_u64};
use crate::cpuid::{cpuid, xcr0, CpuSnapshot, CpuidResult, XSAVE_LEAF};

/// Size of the legacy (FXSAVE) region.
pub const LEGACY_SIZE: usize = 512;
/// Offset of the x87 control word (`cwd` in `_fpstate_64`).
pub const FCW_OFFSET: usize = 0;
/// Offset of the x87 status word.
pub const FSW_OFFSET: usize = 2;
/// Offset of the abridged x87 tag word.
pub const FTW_OFFSET: usize = 4;
/// Offset of the last x87 opcode.
pub const FOP_OFFSET: usize = 6;
/// Offset of the last x87 instruction pointer.
pub const FPU_RIP_OFFSET: usize = 8;
/// Offset of the last x87 data pointer.
pub const FPU_RDP_OFFSET: usize = 16;
/// Offset of MXCSR.
pub const MXCSR_OFFSET: usize = 24;
/// Offset of MXCSR_MASK.
pub const MXCSR_MASK_OFFSET: usize = 28;
/// Offset of ST0..ST7 / MM0..MM7, 16 bytes each.
pub const ST_OFFSET: usize = 32;
/// Offset of XMM0..XMM15, 16 bytes each.
pub const XMM_OFFSET: usize = 160;
/// Offset of `struct _fpx_sw_bytes` (`sw_reserved`), bytes the CPU ignores and
/// the kernel uses in signal frames.
pub const SW_RESERVED_OFFSET: usize = 464;
/// Offset of the XSAVE header.
pub const HEADER_OFFSET: usize = 512;
/// Offset of XSTATE_BV: which components hold non-init state.
pub const XSTATE_BV_OFFSET: usize = 512;
/// Offset of XCOMP_BV (bit 63 set means compacted format).
pub const XCOMP_BV_OFFSET: usize = 520;
/// Size of the XSAVE header.
pub const HEADER_SIZE: usize = 64;
/// Smallest XSAVE area: legacy region plus header (the kernel refuses smaller
/// `xstate_size` in a signal frame).
pub const MIN_SIZE: usize = HEADER_OFFSET + HEADER_SIZE;
/// Number of XMM registers in 64-bit mode.
pub const XMM_COUNT: usize = 16;

/// `FP_XSTATE_MAGIC1`: `_fpx_sw_bytes.magic1` when extended state follows.
pub const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
/// `FP_XSTATE_MAGIC2`: written right after the XSAVE area in a signal frame.
pub const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
/// `FP_XSTATE_MAGIC2_SIZE`.
pub const FP_XSTATE_MAGIC2_SIZE: usize = 4;

/// Offsets inside `struct _fpx_sw_bytes` (`<asm/sigcontext.h>`), relative to
/// [`SW_RESERVED_OFFSET`].
mod sw {
    pub const MAGIC1: usize = 0;
    pub const EXTENDED_SIZE: usize = 4;
    pub const XFEATURES: usize = 8;
    pub const XSTATE_SIZE: usize = 16;
    /// The struct is 48 bytes: the fields above and `padding[7]`.
    pub const SIZE: usize = 48;
}

/// State component index of AVX (upper halves of YMM0..15).
pub const XFEATURE_YMM: u32 = 2;

/// Where one state component lives in a standard-format XSAVE area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XComponent {
    /// Component index (bit number in XCR0 / XSTATE_BV).
    pub index: u32,
    /// Byte offset from the start of the area.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
    /// Starts 64-byte aligned in the compacted format (CPUID.0xD.i:ECX bit 1).
    pub align64: bool,
}

/// The standard-format XSAVE layout of one CPU with one XCR0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XsaveLayout {
    /// Size of the whole area for `xcr0` (CPUID.0xD.0:EBX).
    pub size: u32,
    /// Enabled components.
    pub xcr0: u64,
    /// Enabled components in index order; x87 (0) and SSE (1) are listed with
    /// their fixed places in the legacy region.
    pub components: Vec<XComponent>,
}

impl XsaveLayout {
    /// The layout of this host.
    pub fn host() -> Self {
        Self::from_cpuid(cpuid, xcr0())
    }

    /// The layout a CPUID source describes for `xcr0`.
    pub fn from_cpuid(read: impl Fn(u32, u32) -> CpuidResult, xcr0: u64) -> Self {
        let mut components = Vec::new();
        if xcr0 & 1 != 0 {
            components.push(XComponent {
                index: 0,
                offset: 0,
                size: XMM_OFFSET as u32,
                align64: false,
            });
        }
        if xcr0 & 2 != 0 {
            components.push(XComponent {
                index: 1,
                offset: XMM_OFFSET as u32,
                size: (XMM_COUNT * 16) as u32,
                align64: false,
            });
        }
        for index in 2..64 {
            if xcr0 & (1 << index) != 0 {
                let r = read(XSAVE_LEAF, index);
                components.push(XComponent {
                    index,
                    offset: r.ebx,
                    size: r.eax,
                    align64: r.ecx & 2 != 0,
                });
            }
        }
        Self {
            size: read(XSAVE_LEAF, 0).ebx,
            xcr0,
            components,
        }
    }

    /// The layout of the CPU a snapshot describes, if it recorded leaf 0xD.
    pub fn from_snapshot(snap: &CpuSnapshot) -> Option<Self> {
        snap.leaf(XSAVE_LEAF, 0)?;
        Some(Self::from_cpuid(
            |leaf, sub| snap.leaf(leaf, sub).unwrap_or_default(),
            snap.xcr0,
        ))
    }

    /// The component with `index`, if enabled.
    pub fn component(&self, index: u32) -> Option<&XComponent> {
        self.components.iter().find(|c| c.index == index)
    }

    /// Size of the smallest standard-format area that holds every component of
    /// `mask` that this layout enables: what a signal frame needs when only those
    /// components are restored (e.g. without AMX tile data a task may not use).
    pub fn size_for(&self, mask: u64) -> u32 {
        self.components
            .iter()
            .filter(|c| mask & (1 << c.index) != 0)
            .map(|c| c.offset + c.size)
            .fold(MIN_SIZE as u32, u32::max)
    }
}

/// XSTATE_BV of an area: components holding non-init state. An area too short
/// to have a header (FXSAVE only) has none.
pub fn xstate_bv(area: &[u8]) -> u64 {
    get_u64(area, XSTATE_BV_OFFSET).unwrap_or(0)
}

/// XMM register `i` (0..16), if the area holds it.
pub fn xmm(area: &[u8], i: usize) -> Option<[u8; 16]> {
    if i >= XMM_COUNT {
        return None;
    }
    get(area, XMM_OFFSET + 16 * i)
}

/// Upper 128 bits of YMM register `i` (component 2), if the layout enables AVX
/// and the area holds it. Meaningful only when XSTATE_BV bit 2 is set; otherwise
/// the register is in its init state (zero) whatever the bytes say.
pub fn ymm_hi(area: &[u8], layout: &XsaveLayout, i: usize) -> Option<[u8; 16]> {
    if i >= XMM_COUNT {
        return None;
    }
    let avx = layout.component(XFEATURE_YMM)?;
    get(area, avx.offset as usize + 16 * i)
}

/// MXCSR, if the area holds the legacy region.
pub fn mxcsr(area: &[u8]) -> Option<u32> {
    get_u32(area, MXCSR_OFFSET)
}

/// `struct _fpx_sw_bytes`: what the kernel reads at [`SW_RESERVED_OFFSET`] of a
/// signal frame's FP state to know that an XSAVE area (not only FXSAVE) is there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwBytes {
    /// [`FP_XSTATE_MAGIC1`] when extended state is present.
    pub magic1: u32,
    /// Bytes of FP state in the frame including `FP_XSTATE_MAGIC2`.
    pub extended_size: u32,
    /// Components the frame carries (the RFBM of the restoring XRSTOR).
    pub xfeatures: u64,
    /// Size of the XSAVE area, without `FP_XSTATE_MAGIC2`.
    pub xstate_size: u32,
}

impl SwBytes {
    /// The bytes for an XSAVE area of `xstate_size` bytes carrying `xfeatures`.
    pub fn for_area(xstate_size: u32, xfeatures: u64) -> Self {
        Self {
            magic1: FP_XSTATE_MAGIC1,
            extended_size: xstate_size + FP_XSTATE_MAGIC2_SIZE as u32,
            xfeatures,
            xstate_size,
        }
    }

    /// Reads them from an area, if it holds the legacy region.
    pub fn read(area: &[u8]) -> Option<Self> {
        let base = SW_RESERVED_OFFSET;
        Some(Self {
            magic1: get_u32(area, base + sw::MAGIC1)?,
            extended_size: get_u32(area, base + sw::EXTENDED_SIZE)?,
            xfeatures: get_u64(area, base + sw::XFEATURES)?,
            xstate_size: get_u32(area, base + sw::XSTATE_SIZE)?,
        })
    }

    /// Writes them (and zero padding) into `area`, which must hold the legacy
    /// region (`area.len() >= LEGACY_SIZE`).
    pub fn write(&self, area: &mut [u8]) {
        let base = SW_RESERVED_OFFSET;
        area[base..base + sw::SIZE].fill(0);
        put_u32(area, base + sw::MAGIC1, self.magic1);
        put_u32(area, base + sw::EXTENDED_SIZE, self.extended_size);
        put_u64(area, base + sw::XFEATURES, self.xfeatures);
        put_u32(area, base + sw::XSTATE_SIZE, self.xstate_size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Skylake-like CPU: AVX at 576, MPX at 960/1024, AVX-512 at 1088/1152/1664, PKRU at 2688.
    fn skylake_cpuid(leaf: u32, sub: u32) -> CpuidResult {
        let (eax, ebx) = match (leaf, sub) {
            (0xd, 0) => (0x2ff, 2696),
            (0xd, 2) => (256, 576),
            (0xd, 3) => (64, 960),
            (0xd, 4) => (64, 1024),
            (0xd, 5) => (64, 1088),
            (0xd, 6) => (512, 1152),
            (0xd, 7) => (1024, 1664),
            (0xd, 9) => (8, 2688),
            _ => (0, 0),
        };
        CpuidResult {
            eax,
            ebx,
            ..Default::default()
        }
    }

    #[test]
    fn layout_from_cpuid_lists_enabled_components() {
        let layout = XsaveLayout::from_cpuid(skylake_cpuid, 0x2e7);
        assert_eq!(layout.size, 2696);
        let idx: Vec<u32> = layout.components.iter().map(|c| c.index).collect();
        assert_eq!(idx, [0, 1, 2, 5, 6, 7, 9]);
        assert_eq!(
            layout.component(2),
            Some(&XComponent {
                index: 2,
                offset: 576,
                size: 256,
                align64: false,
            })
        );
        assert_eq!(layout.component(3), None);
        assert_eq!(layout.size_for(0b111), 832);
        assert_eq!(layout.size_for(0b11), MIN_SIZE as u32);
        assert_eq!(layout.size_for(u64::MAX), 2696);
    }

    #[test]
    fn accessors_read_fixed_offsets() {
        let layout = XsaveLayout::from_cpuid(skylake_cpuid, 0b111);
        let mut area = vec![0u8; 832];
        area[XMM_OFFSET + 16 * 3..XMM_OFFSET + 16 * 4].copy_from_slice(&[3; 16]);
        area[576 + 16 * 15..576 + 16 * 16].copy_from_slice(&[0xf; 16]);
        area[MXCSR_OFFSET..MXCSR_OFFSET + 4].copy_from_slice(&0x1f80u32.to_le_bytes());
        area[XSTATE_BV_OFFSET] = 0b110;
        assert_eq!(xmm(&area, 3), Some([3; 16]));
        assert_eq!(xmm(&area, 16), None);
        assert_eq!(ymm_hi(&area, &layout, 15), Some([0xf; 16]));
        assert_eq!(ymm_hi(&area[..600], &layout, 15), None);
        assert_eq!(mxcsr(&area), Some(0x1f80));
        assert_eq!(xstate_bv(&area), 0b110);
        assert_eq!(xstate_bv(&area[..LEGACY_SIZE]), 0);
        let no_avx = XsaveLayout::from_cpuid(skylake_cpuid, 0b11);
        assert_eq!(ymm_hi(&area, &no_avx, 0), None);
    }

    #[test]
    fn sw_bytes_round_trip_at_464() {
        let mut area = vec![0xaau8; MIN_SIZE];
        let sw = SwBytes::for_area(832, 0b111);
        sw.write(&mut area);
        assert_eq!(&area[464..468], &FP_XSTATE_MAGIC1.to_le_bytes());
        assert_eq!(&area[468..472], &836u32.to_le_bytes());
        assert_eq!(&area[472..480], &7u64.to_le_bytes());
        assert_eq!(&area[480..484], &832u32.to_le_bytes());
        assert!(area[484..512].iter().all(|&b| b == 0));
        assert_eq!(area[463], 0xaa);
        assert_eq!(area[512], 0xaa);
        assert_eq!(SwBytes::read(&area), Some(sw));
    }

    #[test]
    fn legacy_offsets_match_fpstate_64() {
        // `struct _fpstate_64` in <asm/sigcontext.h>: cwd, swd, twd, fop (u16),
        // rip, rdp (u64), mxcsr, mxcsr_mask (u32), st_space[32], xmm_space[64],
        // reserved2[12], sw_reserved.
        assert_eq!(
            (FCW_OFFSET, FSW_OFFSET, FTW_OFFSET, FOP_OFFSET),
            (0, 2, 4, 6)
        );
        assert_eq!((FPU_RIP_OFFSET, FPU_RDP_OFFSET), (8, 16));
        assert_eq!((MXCSR_OFFSET, MXCSR_MASK_OFFSET), (24, 28));
        assert_eq!(ST_OFFSET, 32);
        assert_eq!(XMM_OFFSET, ST_OFFSET + 32 * 4);
        assert_eq!(SW_RESERVED_OFFSET, XMM_OFFSET + 64 * 4 + 12 * 4);
        assert_eq!(LEGACY_SIZE, SW_RESERVED_OFFSET + sw::SIZE);
        assert_eq!(sw::SIZE, 4 + 4 + 8 + 4 + 7 * 4);
    }

    #[test]
    fn host_layout_is_sane() {
        let layout = XsaveLayout::host();
        assert!(layout.size as usize >= LEGACY_SIZE);
        for c in &layout.components {
            assert!(c.offset + c.size <= layout.size, "{c:?}");
        }
        if let Some(avx) = layout.component(XFEATURE_YMM) {
            assert_eq!((avx.offset, avx.size), (576, 256));
        }
    }
}
