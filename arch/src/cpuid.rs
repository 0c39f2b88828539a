//! Reading CPUID and XCR0 on this host, and the snapshot of both that an image keeps.

/// The four registers one `cpuid` instruction returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuidResult {
    /// EAX output.
    pub eax: u32,
    /// EBX output.
    pub ebx: u32,
    /// ECX output.
    pub ecx: u32,
    /// EDX output.
    pub edx: u32,
}

/// Runs `cpuid` for `leaf` / `sub` (sub-leaf in ECX) on the current CPU.
pub fn cpuid(leaf: u32, sub: u32) -> CpuidResult {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    CpuidResult {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// CPUID.1:ECX bit that says the OS enabled XSAVE, so `xgetbv` may run.
const OSXSAVE_BIT: u32 = 1 << 27;

/// XCR0 of this host (the user state components the OS enabled), or the x87|SSE
/// pair that FXSAVE covers when the OS did not enable XSAVE.
pub fn xcr0() -> u64 {
    if cpuid(1, 0).ecx & OSXSAVE_BIT == 0 {
        return 0b11;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: `xgetbv` with ECX=0 only reads XCR0; CPUID.1:ECX.OSXSAVE was
    // checked above, so the instruction cannot fault. It touches no memory.
    unsafe {
        core::arch::asm!(
            "xgetbv",
            in("ecx") 0u32,
            out("eax") lo,
            out("edx") hi,
            options(nomem, nostack, preserves_flags),
        );
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// CPU identity and the CPUID leaves a checkpoint records, so that restore can
/// compare the CPU a tree ran on with the one it lands on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuSnapshot {
    /// Vendor string from leaf 0 (`GenuineIntel`, `AuthenticAMD`, ...).
    pub vendor: String,
    /// Display family (base family plus extended family).
    pub family: u32,
    /// Display model (with the extended model where the family uses it).
    pub model: u32,
    /// Stepping id.
    pub stepping: u32,
    /// `(leaf, sub-leaf, result)` for every recorded leaf, in the order read.
    pub leaves: Vec<(u32, u32, CpuidResult)>,
    /// XCR0: enabled user state components.
    pub xcr0: u64,
    /// Size of the standard-format XSAVE area for `xcr0` (CPUID.0xD.0:EBX).
    pub xsave_size: u32,
}

/// Leaf holding the XSAVE enumeration.
pub(crate) const XSAVE_LEAF: u32 = 0xd;
/// Highest sub-leaf of leaf 7 recorded (7.0 EAX says how many exist).
const MAX_LEAF7_SUB: u32 = 3;
/// First extended leaf; its EAX is the highest extended leaf.
const EXT_BASE: u32 = 0x8000_0000;

impl CpuSnapshot {
    /// Reads this host's CPU.
    pub fn host() -> Self {
        Self::from_cpuid(cpuid, xcr0())
    }

    /// Builds a snapshot from any CPUID source (the host, or a recorded/masked one),
    /// reading only leaves within the maximum basic and extended leaf.
    pub fn from_cpuid(read: impl Fn(u32, u32) -> CpuidResult, xcr0: u64) -> Self {
        let mut leaves = Vec::new();
        let mut take = |leaf: u32, sub: u32| {
            let r = read(leaf, sub);
            leaves.push((leaf, sub, r));
            r
        };
        let l0 = take(0, 0);
        let max_basic = l0.eax;
        let l1 = if max_basic >= 1 {
            take(1, 0)
        } else {
            CpuidResult::default()
        };
        if max_basic >= 7 {
            let max_sub = take(7, 0).eax;
            take(7, 1);
            for sub in 2..=max_sub.min(MAX_LEAF7_SUB) {
                take(7, sub);
            }
        }
        let mut xsave_size = 0;
        if max_basic >= XSAVE_LEAF {
            let l = take(XSAVE_LEAF, 0);
            xsave_size = l.ebx;
            take(XSAVE_LEAF, 1);
            // Components 2.. carry the offsets, sizes and alignment an XSAVE
            // area of this CPU uses; supported ones too, for masking.
            let supported = u64::from(l.eax) | (u64::from(l.edx) << 32) | xcr0;
            for i in 2..64 {
                if supported & (1 << i) != 0 {
                    take(XSAVE_LEAF, i);
                }
            }
        }
        for leaf in [0x14, 0x19, 0x24] {
            if max_basic >= leaf {
                take(leaf, 0);
            }
        }
        let max_ext = take(EXT_BASE, 0).eax;
        for leaf in [0x8000_0001, 0x8000_0007, 0x8000_0008, 0x8000_0021] {
            if max_ext >= leaf {
                take(leaf, 0);
            }
        }
        let (family, model, stepping) = signature(l1.eax);
        Self {
            vendor: vendor_string(l0),
            family,
            model,
            stepping,
            leaves,
            xcr0,
            xsave_size,
        }
    }

    /// The recorded result for `leaf` / `sub`, if that leaf was recorded.
    pub fn leaf(&self, leaf: u32, sub: u32) -> Option<CpuidResult> {
        self.leaves
            .iter()
            .find(|(l, s, _)| *l == leaf && *s == sub)
            .map(|(_, _, r)| *r)
    }
}

/// Vendor string: the 12 bytes of EBX, EDX, ECX of leaf 0, in that order.
fn vendor_string(l0: CpuidResult) -> String {
    let mut bytes = Vec::with_capacity(12);
    for reg in [l0.ebx, l0.edx, l0.ecx] {
        bytes.extend_from_slice(&reg.to_le_bytes());
    }
    String::from_utf8_lossy(&bytes)
        .trim_end_matches('\0')
        .to_string()
}

/// Display family, model and stepping from CPUID.1:EAX (Intel SDM vol. 2A, CPUID).
fn signature(eax: u32) -> (u32, u32, u32) {
    let stepping = eax & 0xf;
    let base_model = (eax >> 4) & 0xf;
    let base_family = (eax >> 8) & 0xf;
    let ext_model = (eax >> 16) & 0xf;
    let ext_family = (eax >> 20) & 0xff;
    let family = if base_family == 0xf {
        base_family + ext_family
    } else {
        base_family
    };
    let model = if base_family == 0x6 || base_family == 0xf {
        (ext_model << 4) | base_model
    } else {
        base_model
    };
    (family, model, stepping)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_decodes_intel_and_amd() {
        // Sapphire Rapids: family 6, model 0x8f, stepping 8.
        assert_eq!(signature(0x000806f8), (6, 0x8f, 8));
        // Zen 3 EPYC: family 0x19, model 0x01, stepping 1.
        assert_eq!(signature(0x00a00f11), (0x19, 0x01, 1));
        // Old family 5 ignores the extended model.
        assert_eq!(signature(0x000f0543), (5, 4, 3));
    }

    #[test]
    fn vendor_reads_ebx_edx_ecx() {
        let l0 = CpuidResult {
            eax: 0x10,
            ebx: u32::from_le_bytes(*b"Genu"),
            edx: u32::from_le_bytes(*b"ineI"),
            ecx: u32::from_le_bytes(*b"ntel"),
        };
        assert_eq!(vendor_string(l0), "GenuineIntel");
    }

    #[test]
    fn snapshot_reads_only_leaves_in_range() {
        let read = |leaf: u32, sub: u32| match (leaf, sub) {
            (0, _) => CpuidResult {
                eax: 7,
                ..Default::default()
            },
            (0x8000_0000, _) => CpuidResult {
                eax: 0x8000_0001,
                ..Default::default()
            },
            _ => CpuidResult {
                eax: leaf,
                ebx: sub,
                ..Default::default()
            },
        };
        let snap = CpuSnapshot::from_cpuid(read, 0b111);
        let got: Vec<(u32, u32)> = snap.leaves.iter().map(|(l, s, _)| (*l, *s)).collect();
        assert_eq!(
            got,
            [
                (0, 0),
                (1, 0),
                (7, 0),
                (7, 1),
                (7, 2),
                (7, 3),
                (0x8000_0000, 0),
                (0x8000_0001, 0)
            ]
        );
        assert_eq!(snap.xsave_size, 0);
        assert_eq!(snap.leaf(7, 1).map(|r| r.ebx), Some(1));
        assert_eq!(snap.leaf(0xd, 0), None);
    }

    #[test]
    fn host_snapshot_is_consistent() {
        let snap = CpuSnapshot::host();
        assert!(!snap.vendor.is_empty());
        assert_eq!(snap.leaf(0, 0), Some(cpuid(0, 0)));
        let x = xcr0();
        assert_eq!(x & 0b11, 0b11, "x87 and SSE are always enabled on x86_64");
        assert_eq!(snap.xcr0, x);
        if x & 0b100 != 0 {
            assert!(snap.xsave_size >= 576 + 256);
        }
    }
}
