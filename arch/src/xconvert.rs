//! Moving a saved XSAVE area between formats (standard, as ptrace and signal
//! frames use; compacted, as XSAVEC/XSAVES write) and between CPUs whose
//! XSAVE layouts differ. A component the target lacks may be dropped only
//! when the area holds it in its initial state (its XSTATE_BV bit clear).

use thiserror::Error;

use crate::bytes::{get_u64, put_u64};
use crate::features::component_name;
use crate::xsave::{
    xstate_bv, XComponent, XsaveLayout, LEGACY_SIZE, MIN_SIZE, XCOMP_BV_OFFSET, XSTATE_BV_OFFSET,
};

/// XCOMP_BV bit 63: the area is in the compacted format.
const COMPACTED: u64 = 1 << 63;

/// The two XSAVE area formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XFormat {
    /// Each component at its fixed CPUID.0xD offset.
    Standard,
    /// Components in index order, packed (XCOMP_BV bit 63 set).
    Compacted,
}

/// Why an area cannot be moved to another layout.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConvertError {
    /// The area ends before something its header says it holds.
    #[error("XSAVE area of {len} bytes is too short: it needs {need}")]
    TooShort {
        /// Its length.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The area holds live state of a component the target CPU does not have.
    #[error("the thread's {name} state (XSAVE component {index}) is in use and this CPU has no such component")]
    Lost {
        /// Component index.
        index: u32,
        /// `xcr0.<name>`.
        name: &'static str,
    },
    /// The area holds state of a component its own layout does not describe.
    #[error(
        "XSAVE area holds component {index} ({name}), which the recorded CPU does not describe"
    )]
    Undescribed {
        /// Component index.
        index: u32,
        /// `xcr0.<name>`.
        name: &'static str,
    },
    /// Both CPUs have the component with different sizes.
    #[error("{name} (XSAVE component {index}) is {from} bytes in the image and {to} bytes here")]
    SizeDiffers {
        /// Component index.
        index: u32,
        /// `xcr0.<name>`.
        name: &'static str,
        /// Size in the image's layout.
        from: u32,
        /// Size in the target layout.
        to: u32,
    },
}

/// The format an area is in.
pub fn format_of(area: &[u8]) -> XFormat {
    match get_u64(area, XCOMP_BV_OFFSET) {
        Some(bv) if bv & COMPACTED != 0 => XFormat::Compacted,
        _ => XFormat::Standard,
    }
}

/// Where each component of `layout` that `xcomp_bv` includes lives in a
/// compacted area (x87 and SSE keep their legacy places).
pub fn compacted_components(layout: &XsaveLayout, xcomp_bv: u64) -> Vec<XComponent> {
    let mut at = MIN_SIZE as u32;
    let mut out = Vec::new();
    for c in &layout.components {
        if xcomp_bv & (1 << c.index) == 0 {
            continue;
        }
        if c.index < 2 {
            out.push(*c);
            continue;
        }
        if c.align64 {
            at = at.next_multiple_of(64);
        }
        out.push(XComponent { offset: at, ..*c });
        at += c.size;
    }
    out
}

/// Size of a compacted area holding every component of `layout`.
pub fn compacted_size(layout: &XsaveLayout) -> u32 {
    compacted_components(layout, layout.xcr0)
        .iter()
        .map(|c| c.offset + c.size)
        .fold(MIN_SIZE as u32, u32::max)
}

/// Rewrites `area`, saved on a CPU with layout `from` (in either format), for
/// a CPU with layout `to`, in `format`. The legacy region is kept, each
/// component in use moves to its place in `to`, the header says what the
/// result holds. An area already in `format` for the same layout comes back
/// unchanged.
pub fn convert(
    area: &[u8],
    from: &XsaveLayout,
    to: &XsaveLayout,
    format: XFormat,
) -> Result<Vec<u8>, ConvertError> {
    if area.len() < MIN_SIZE {
        return Err(ConvertError::TooShort {
            len: area.len(),
            need: MIN_SIZE,
        });
    }
    let src_format = format_of(area);
    if from == to && src_format == format {
        return Ok(area.to_vec());
    }
    let bv = xstate_bv(area);
    let src = match src_format {
        XFormat::Standard => from.components.clone(),
        XFormat::Compacted => {
            compacted_components(from, get_u64(area, XCOMP_BV_OFFSET).unwrap_or(0))
        }
    };
    let dst = match format {
        XFormat::Standard => to.components.clone(),
        XFormat::Compacted => compacted_components(to, to.xcr0),
    };
    let mut moves = Vec::new();
    for index in (0..64).filter(|i| bv & (1u64 << i) != 0) {
        let name = component_name(index);
        let s = src
            .iter()
            .find(|c| c.index == index)
            .ok_or(ConvertError::Undescribed { index, name })?;
        let d = dst
            .iter()
            .find(|c| c.index == index)
            .ok_or(ConvertError::Lost { index, name })?;
        if s.size != d.size {
            return Err(ConvertError::SizeDiffers {
                index,
                name,
                from: s.size,
                to: d.size,
            });
        }
        let end = (s.offset + s.size) as usize;
        if end > area.len() {
            return Err(ConvertError::TooShort {
                len: area.len(),
                need: end,
            });
        }
        if index >= 2 {
            moves.push((*s, *d));
        }
    }
    let len = match format {
        XFormat::Standard => to.size.max(MIN_SIZE as u32),
        XFormat::Compacted => compacted_size(to),
    } as usize;
    let mut out = vec![0u8; len];
    out[..LEGACY_SIZE].copy_from_slice(&area[..LEGACY_SIZE]);
    put_u64(&mut out, XSTATE_BV_OFFSET, bv);
    let xcomp = match format {
        XFormat::Standard => 0,
        XFormat::Compacted => COMPACTED | to.xcr0,
    };
    put_u64(&mut out, XCOMP_BV_OFFSET, xcomp);
    for (s, d) in moves {
        let (so, doff, n) = (s.offset as usize, d.offset as usize, s.size as usize);
        out[doff..doff + n].copy_from_slice(&area[so..so + n]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuid::CpuidResult;
    use proptest::prelude::*;

    /// A CPU with AVX (576), AVX-512 (5 at 1088, 6 at 1152, 7 at 1664), PKRU
    /// (2688) and AMX (17 at 2752 aligned, 18 at 2816 aligned).
    fn big(leaf: u32, sub: u32) -> CpuidResult {
        let (eax, ebx, ecx) = match (leaf, sub) {
            (0xd, 0) => (0x602e7, 11008, 0),
            (0xd, 2) => (256, 576, 0),
            (0xd, 5) => (64, 1088, 0),
            (0xd, 6) => (512, 1152, 0),
            (0xd, 7) => (1024, 1664, 0),
            (0xd, 9) => (8, 2688, 0),
            (0xd, 17) => (64, 2752, 2),
            (0xd, 18) => (8192, 2816, 2),
            _ => (0, 0, 0),
        };
        CpuidResult {
            eax,
            ebx,
            ecx,
            edx: 0,
        }
    }

    /// An AVX-only CPU (Zen 2-like, with AVX at 576 and PKRU at 832).
    fn small(leaf: u32, sub: u32) -> CpuidResult {
        let (eax, ebx) = match (leaf, sub) {
            (0xd, 0) => (0x207, 840),
            (0xd, 2) => (256, 576),
            (0xd, 9) => (8, 832),
            _ => (0, 0),
        };
        CpuidResult {
            eax,
            ebx,
            ..Default::default()
        }
    }

    fn big_layout() -> XsaveLayout {
        XsaveLayout::from_cpuid(big, 0x602e7)
    }

    fn small_layout() -> XsaveLayout {
        XsaveLayout::from_cpuid(small, 0x207)
    }

    /// A standard area of `layout` with each component in `bv` filled with
    /// its index + 1 and the legacy region with a pattern.
    fn area(layout: &XsaveLayout, bv: u64) -> Vec<u8> {
        let mut a = vec![0u8; layout.size as usize];
        for (i, b) in a[..LEGACY_SIZE].iter_mut().enumerate() {
            *b = i as u8;
        }
        for c in layout.components.iter().filter(|c| c.index >= 2) {
            if bv & (1 << c.index) != 0 {
                let at = c.offset as usize;
                a[at..at + c.size as usize].fill(c.index as u8 + 1);
            }
        }
        put_u64(&mut a, XSTATE_BV_OFFSET, bv);
        a
    }

    fn component<'a>(a: &'a [u8], layout: &XsaveLayout, format: XFormat, index: u32) -> &'a [u8] {
        let comps = match format {
            XFormat::Standard => layout.components.clone(),
            XFormat::Compacted => compacted_components(layout, layout.xcr0),
        };
        let c = comps.iter().find(|c| c.index == index).unwrap();
        &a[c.offset as usize..(c.offset + c.size) as usize]
    }

    #[test]
    fn compacted_offsets_pack_and_align() {
        let l = big_layout();
        let got: Vec<(u32, u32)> = compacted_components(&l, l.xcr0)
            .iter()
            .map(|c| (c.index, c.offset))
            .collect();
        assert_eq!(
            got,
            [
                (0, 0),
                (1, 160),
                (2, 576),
                (5, 832),
                (6, 896),
                (7, 1408),
                (9, 2432),
                (17, 2496),
                (18, 2560)
            ]
        );
        assert_eq!(compacted_size(&l), 2560 + 8192);
    }

    #[test]
    fn same_layout_and_format_is_unchanged() {
        let l = big_layout();
        let a = area(&l, 0b111);
        assert_eq!(convert(&a, &l, &l, XFormat::Standard).unwrap(), a);
    }

    #[test]
    fn avx512_in_init_state_moves_to_an_avx_only_cpu() {
        let (b, s) = (big_layout(), small_layout());
        let a = area(&b, 0x207);
        let out = convert(&a, &b, &s, XFormat::Standard).unwrap();
        assert_eq!(out.len(), 840);
        assert_eq!(&out[..LEGACY_SIZE], &a[..LEGACY_SIZE]);
        assert_eq!(xstate_bv(&out), 0x207);
        assert_eq!(get_u64(&out, XCOMP_BV_OFFSET), Some(0));
        assert!(out[576..832].iter().all(|&x| x == 3));
        assert!(out[832..840].iter().all(|&x| x == 10));
    }

    #[test]
    fn live_avx512_state_is_refused_by_name() {
        let (b, s) = (big_layout(), small_layout());
        let a = area(&b, 0x20e7);
        assert_eq!(
            convert(&a, &b, &s, XFormat::Standard),
            Err(ConvertError::Lost {
                index: 5,
                name: "xcr0.opmask"
            })
        );
        let tiles = area(&b, 0x40007);
        let err = convert(&tiles, &b, &s, XFormat::Standard).unwrap_err();
        assert!(err.to_string().contains("xcr0.xtiledata"), "{err}");
    }

    #[test]
    fn short_areas_are_refused() {
        let b = big_layout();
        let mut a = area(&b, 0x40007);
        a.truncate(3000);
        assert!(matches!(
            convert(&a, &b, &b, XFormat::Compacted),
            Err(ConvertError::TooShort { need: 11008, .. })
        ));
        assert!(matches!(
            convert(&a[..100], &b, &b, XFormat::Standard),
            Err(ConvertError::TooShort { .. })
        ));
    }

    fn arb_bv() -> impl Strategy<Value = u64> {
        any::<u64>().prop_map(|x| x & 0x602e7)
    }

    proptest! {
        #[test]
        fn standard_compacted_round_trip(bv in arb_bv()) {
            let l = big_layout();
            let a = area(&l, bv);
            let c = convert(&a, &l, &l, XFormat::Compacted).unwrap();
            prop_assert_eq!(format_of(&c), XFormat::Compacted);
            prop_assert_eq!(get_u64(&c, XCOMP_BV_OFFSET), Some(COMPACTED | l.xcr0));
            for i in (2..64).filter(|i| bv & (1 << i) != 0) {
                prop_assert_eq!(component(&c, &l, XFormat::Compacted, i), component(&a, &l, XFormat::Standard, i));
            }
            let back = convert(&c, &l, &l, XFormat::Standard).unwrap();
            prop_assert_eq!(back, a);
        }

        #[test]
        fn moving_to_a_smaller_cpu_works_iff_lost_components_are_init(bv in arb_bv(), compact in any::<bool>()) {
            let (b, s) = (big_layout(), small_layout());
            let fmt = if compact { XFormat::Compacted } else { XFormat::Standard };
            let src = convert(&area(&b, bv), &b, &b, fmt).unwrap();
            let result = convert(&src, &b, &s, XFormat::Standard);
            if bv & !s.xcr0 == 0 {
                let out = result.unwrap();
                prop_assert_eq!(xstate_bv(&out), bv);
                for i in (2..64).filter(|i| bv & (1 << i) != 0) {
                    prop_assert!(component(&out, &s, XFormat::Standard, i).iter().all(|&x| x == i as u8 + 1));
                }
            } else {
                let lost = (bv & !s.xcr0).trailing_zeros();
                prop_assert_eq!(result, Err(ConvertError::Lost { index: lost, name: component_name(lost) }));
            }
        }
    }
}
