//! Named CPU features programs dispatch on, where CPUID reports them, and the
//! comparison restore makes between the CPU of an image and this host.
//!
//! Bit positions: Intel SDM vol. 2A (CPUID), AMD APM vol. 3 (CPUID), and
//! Linux `arch/x86/include/asm/cpufeatures.h`.

use crate::cpuid::CpuSnapshot;

/// A CPUID output register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// One feature bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    /// Name as Linux `/proc/cpuinfo` spells it, lower case.
    pub name: &'static str,
    /// CPUID leaf.
    pub leaf: u32,
    /// CPUID sub-leaf.
    pub sub: u32,
    /// Register holding the bit.
    pub reg: Reg,
    /// Bit number.
    pub bit: u8,
}

const fn f(name: &'static str, leaf: u32, sub: u32, reg: Reg, bit: u8) -> Feature {
    Feature {
        name,
        leaf,
        sub,
        reg,
        bit,
    }
}

use Reg::{Eax, Ebx, Ecx, Edx};

/// Features user space can use, and therefore must find again after restore.
pub const FEATURES: &[Feature] = &[
    // Leaf 1, EDX.
    f("fpu", 1, 0, Edx, 0),
    f("tsc", 1, 0, Edx, 4),
    f("cx8", 1, 0, Edx, 8),
    f("cmov", 1, 0, Edx, 15),
    f("clflush", 1, 0, Edx, 19),
    f("mmx", 1, 0, Edx, 23),
    f("fxsr", 1, 0, Edx, 24),
    f("sse", 1, 0, Edx, 25),
    f("sse2", 1, 0, Edx, 26),
    // Leaf 1, ECX.
    f("sse3", 1, 0, Ecx, 0),
    f("pclmulqdq", 1, 0, Ecx, 1),
    f("ssse3", 1, 0, Ecx, 9),
    f("fma", 1, 0, Ecx, 12),
    f("cx16", 1, 0, Ecx, 13),
    f("sse4_1", 1, 0, Ecx, 19),
    f("sse4_2", 1, 0, Ecx, 20),
    f("movbe", 1, 0, Ecx, 22),
    f("popcnt", 1, 0, Ecx, 23),
    f("aes", 1, 0, Ecx, 25),
    f("xsave", 1, 0, Ecx, 26),
    f("osxsave", 1, 0, Ecx, 27),
    f("avx", 1, 0, Ecx, 28),
    f("f16c", 1, 0, Ecx, 29),
    f("rdrand", 1, 0, Ecx, 30),
    // Leaf 7.0, EBX.
    f("fsgsbase", 7, 0, Ebx, 0),
    f("bmi1", 7, 0, Ebx, 3),
    f("hle", 7, 0, Ebx, 4),
    f("avx2", 7, 0, Ebx, 5),
    f("bmi2", 7, 0, Ebx, 8),
    f("erms", 7, 0, Ebx, 9),
    f("rtm", 7, 0, Ebx, 11),
    f("avx512f", 7, 0, Ebx, 16),
    f("avx512dq", 7, 0, Ebx, 17),
    f("mpx", 7, 0, Ebx, 14),
    f("rdseed", 7, 0, Ebx, 18),
    f("adx", 7, 0, Ebx, 19),
    f("avx512ifma", 7, 0, Ebx, 21),
    f("clflushopt", 7, 0, Ebx, 23),
    f("clwb", 7, 0, Ebx, 24),
    f("avx512pf", 7, 0, Ebx, 26),
    f("avx512er", 7, 0, Ebx, 27),
    f("avx512cd", 7, 0, Ebx, 28),
    f("sha_ni", 7, 0, Ebx, 29),
    f("avx512bw", 7, 0, Ebx, 30),
    f("avx512vl", 7, 0, Ebx, 31),
    // Leaf 7.0, ECX.
    f("avx512vbmi", 7, 0, Ecx, 1),
    f("pku", 7, 0, Ecx, 3),
    f("ospke", 7, 0, Ecx, 4),
    f("waitpkg", 7, 0, Ecx, 5),
    f("avx512_vbmi2", 7, 0, Ecx, 6),
    f("gfni", 7, 0, Ecx, 8),
    f("vaes", 7, 0, Ecx, 9),
    f("vpclmulqdq", 7, 0, Ecx, 10),
    f("avx512_vnni", 7, 0, Ecx, 11),
    f("avx512_bitalg", 7, 0, Ecx, 12),
    f("avx512_vpopcntdq", 7, 0, Ecx, 14),
    f("rdpid", 7, 0, Ecx, 22),
    f("cldemote", 7, 0, Ecx, 25),
    f("movdiri", 7, 0, Ecx, 27),
    f("movdir64b", 7, 0, Ecx, 28),
    // Leaf 7.0, EDX.
    f("avx512_4vnniw", 7, 0, Edx, 2),
    f("avx512_4fmaps", 7, 0, Edx, 3),
    f("fsrm", 7, 0, Edx, 4),
    f("avx512_vp2intersect", 7, 0, Edx, 8),
    f("serialize", 7, 0, Edx, 14),
    f("tsxldtrk", 7, 0, Edx, 16),
    f("amx_bf16", 7, 0, Edx, 22),
    f("avx512_fp16", 7, 0, Edx, 23),
    f("amx_tile", 7, 0, Edx, 24),
    f("amx_int8", 7, 0, Edx, 25),
    // Leaf 7.1, EAX.
    f("avx_vnni", 7, 1, Eax, 4),
    f("avx512_bf16", 7, 1, Eax, 5),
    f("cmpccxadd", 7, 1, Eax, 7),
    f("fzrm", 7, 1, Eax, 10),
    f("fsrs", 7, 1, Eax, 11),
    f("fsrc", 7, 1, Eax, 12),
    f("amx_fp16", 7, 1, Eax, 21),
    f("avx_ifma", 7, 1, Eax, 23),
    // Leaf 7.1, EDX.
    f("apx_f", 7, 1, Edx, 21),
    // Leaf 0xD.1, EAX.
    f("xsaveopt", 0xd, 1, Eax, 0),
    f("xsavec", 0xd, 1, Eax, 1),
    f("xgetbv1", 0xd, 1, Eax, 2),
    f("xsaves", 0xd, 1, Eax, 3),
    // Leaf 0x80000001, ECX.
    f("lahf_lm", 0x8000_0001, 0, Ecx, 0),
    f("abm", 0x8000_0001, 0, Ecx, 5),
    f("sse4a", 0x8000_0001, 0, Ecx, 6),
    f("misalignsse", 0x8000_0001, 0, Ecx, 7),
    f("3dnowprefetch", 0x8000_0001, 0, Ecx, 8),
    f("xop", 0x8000_0001, 0, Ecx, 11),
    f("fma4", 0x8000_0001, 0, Ecx, 16),
    f("tbm", 0x8000_0001, 0, Ecx, 21),
    // Leaf 0x80000001, EDX.
    f("syscall", 0x8000_0001, 0, Edx, 11),
    f("nx", 0x8000_0001, 0, Edx, 20),
    f("pdpe1gb", 0x8000_0001, 0, Edx, 26),
    f("rdtscp", 0x8000_0001, 0, Edx, 27),
    f("lm", 0x8000_0001, 0, Edx, 29),
    // Leaf 0x80000008, EBX.
    f("clzero", 0x8000_0008, 0, Ebx, 0),
    f("wbnoinvd", 0x8000_0008, 0, Ebx, 9),
];

/// XSAVE state components by XCR0 bit, named for [`missing_on`].
const XCR0_COMPONENTS: &[(u8, &str)] = &[
    (0, "xcr0.x87"),
    (1, "xcr0.sse"),
    (2, "xcr0.avx"),
    (3, "xcr0.bndregs"),
    (4, "xcr0.bndcsr"),
    (5, "xcr0.opmask"),
    (6, "xcr0.zmm_hi256"),
    (7, "xcr0.hi16_zmm"),
    (9, "xcr0.pkru"),
    (17, "xcr0.xtilecfg"),
    (18, "xcr0.xtiledata"),
    (19, "xcr0.apx"),
];

/// Name for an XCR0 bit without a name of its own.
const XCR0_OTHER: &str = "xcr0.other";

/// `xcr0.<component>` name of XSAVE state component `index`.
pub fn component_name(index: u32) -> &'static str {
    XCR0_COMPONENTS
        .iter()
        .find(|(b, _)| u32::from(*b) == index)
        .map_or(XCR0_OTHER, |(_, name)| *name)
}

/// The feature table entry called `name`.
pub fn by_name(name: &str) -> Option<&'static Feature> {
    FEATURES.iter().find(|f| f.name == name)
}

impl Feature {
    /// Whether the snapshot has this feature (a leaf it did not record has none).
    pub fn in_snapshot(&self, snap: &CpuSnapshot) -> bool {
        let Some(r) = snap.leaf(self.leaf, self.sub) else {
            return false;
        };
        let word = match self.reg {
            Eax => r.eax,
            Ebx => r.ebx,
            Ecx => r.ecx,
            Edx => r.edx,
        };
        word & (1 << self.bit) != 0
    }
}

/// Names of the features the snapshot has, in table order.
pub fn present(snapshot: &CpuSnapshot) -> Vec<&'static str> {
    FEATURES
        .iter()
        .filter(|feat| feat.in_snapshot(snapshot))
        .map(|feat| feat.name)
        .collect()
}

/// What a tree dumped on `image` would miss on `host`: features the image CPU
/// had that the host lacks, then XSAVE components the image enabled in XCR0
/// that the host does not (named `xcr0.<component>`; unnamed bits share
/// `xcr0.other`, listed once). Empty means the host can run the image.
pub fn missing_on(image: &CpuSnapshot, host: &CpuSnapshot) -> Vec<&'static str> {
    let mut missing: Vec<&'static str> = FEATURES
        .iter()
        .filter(|feat| feat.in_snapshot(image) && !feat.in_snapshot(host))
        .map(|feat| feat.name)
        .collect();
    let lost = image.xcr0 & !host.xcr0;
    for bit in 0..64u8 {
        if lost & (1 << bit) == 0 {
            continue;
        }
        let name = component_name(u32::from(bit));
        if !missing.contains(&name) {
            missing.push(name);
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuid::CpuidResult;
    use proptest::prelude::*;

    /// The leaves the feature table reads.
    const LEAVES: [(u32, u32); 6] = [
        (1, 0),
        (7, 0),
        (7, 1),
        (0xd, 1),
        (0x8000_0001, 0),
        (0x8000_0008, 0),
    ];

    fn snapshot(regs: &[CpuidResult], xcr0: u64) -> CpuSnapshot {
        CpuSnapshot {
            vendor: "GenuineIntel".into(),
            leaves: LEAVES
                .iter()
                .zip(regs)
                .map(|(&(l, s), r)| (l, s, *r))
                .collect(),
            xcr0,
            ..CpuSnapshot::default()
        }
    }

    fn regs(eax: u32, ebx: u32, ecx: u32, edx: u32) -> CpuidResult {
        CpuidResult { eax, ebx, ecx, edx }
    }

    #[test]
    fn table_has_unique_names_and_valid_bits() {
        for (i, a) in FEATURES.iter().enumerate() {
            assert!(a.bit < 32, "{}", a.name);
            assert!(
                FEATURES[i + 1..].iter().all(|b| b.name != a.name),
                "{}",
                a.name
            );
            assert!(
                FEATURES[i + 1..]
                    .iter()
                    .all(|b| (b.leaf, b.sub, b.reg, b.bit) != (a.leaf, a.sub, a.reg, a.bit)),
                "{} shares a bit",
                a.name
            );
        }
    }

    #[test]
    fn present_reads_named_bits() {
        // Leaf 1: ECX sse4_2 (20) and avx (28); leaf 7: EBX avx2 (5), ECX vaes (9),
        // EDX amx_tile (24); 7.1 EAX avx_vnni (4); 0x80000001 ECX abm (5).
        let snap = snapshot(
            &[
                regs(0, 0, (1 << 20) | (1 << 28), 0),
                regs(0, 1 << 5, 1 << 9, 1 << 24),
                regs(1 << 4, 0, 0, 0),
                regs(0, 0, 0, 0),
                regs(0, 0, 1 << 5, 0),
            ],
            0b111,
        );
        assert_eq!(
            present(&snap),
            ["sse4_2", "avx", "avx2", "vaes", "amx_tile", "avx_vnni", "abm"]
        );
    }

    #[test]
    fn missing_lists_features_then_xcr0_components() {
        let image = snapshot(
            &[
                regs(0, 0, 1 << 28, 0),
                regs(0, (1 << 5) | (1 << 16), 0, 0),
                regs(0, 0, 0, 0),
            ],
            0xe7 | (1 << 40),
        );
        let host = snapshot(&[regs(0, 0, 1 << 28, 0), regs(0, 1 << 5, 0, 0)], 0b111);
        assert_eq!(
            missing_on(&image, &host),
            [
                "avx512f",
                "xcr0.opmask",
                "xcr0.zmm_hi256",
                "xcr0.hi16_zmm",
                "xcr0.other"
            ]
        );
        assert!(missing_on(&host, &image).is_empty());
    }

    #[test]
    fn host_has_baseline_x86_64() {
        let host = CpuSnapshot::host();
        let names = present(&host);
        for base in ["fpu", "cx8", "cmov", "fxsr", "sse", "sse2", "syscall", "lm"] {
            assert!(names.contains(&base), "{base} missing from {names:?}");
        }
        assert!(missing_on(&host, &host).is_empty());
    }

    fn arb_snapshot() -> impl Strategy<Value = CpuSnapshot> {
        (
            prop::collection::vec(any::<[u32; 4]>(), LEAVES.len()),
            any::<u64>(),
        )
            .prop_map(|(words, xcr0)| {
                let r: Vec<CpuidResult> =
                    words.iter().map(|w| regs(w[0], w[1], w[2], w[3])).collect();
                snapshot(&r, xcr0)
            })
    }

    /// `a` with every bit of `b` added: a CPU with more features.
    fn union(a: &CpuSnapshot, b: &CpuSnapshot) -> CpuSnapshot {
        let mut out = a.clone();
        for ((_, _, r), (_, _, s)) in out.leaves.iter_mut().zip(&b.leaves) {
            r.eax |= s.eax;
            r.ebx |= s.ebx;
            r.ecx |= s.ecx;
            r.edx |= s.edx;
        }
        out.xcr0 |= b.xcr0;
        out
    }

    proptest! {
        #[test]
        fn nothing_missing_on_itself(x in arb_snapshot()) {
            prop_assert!(missing_on(&x, &x).is_empty());
        }

        #[test]
        fn missing_is_monotone(image in arb_snapshot(), host in arb_snapshot(), extra in arb_snapshot()) {
            let base = missing_on(&image, &host);
            // A richer host misses a subset.
            let richer_host = union(&host, &extra);
            for name in missing_on(&image, &richer_host) {
                prop_assert!(base.contains(&name), "{} appeared", name);
            }
            // A richer image misses a superset.
            let richer_image = union(&image, &extra);
            let more = missing_on(&richer_image, &host);
            for name in &base {
                prop_assert!(more.contains(name), "{} vanished", name);
            }
        }
    }
}
