//! CPU profiles: the named features a program may see, and the CPUID answers
//! that show a host through a profile consistently (a hidden feature takes
//! the features built on it along, and a hidden XSAVE component disappears
//! from the sizes and bitmaps of leaf 0xD).
//!
//! Masking touches named features only (see [`crate::features::FEATURES`]);
//! bits without a name there are left as the host has them.

use std::collections::BTreeSet;
use std::fmt;

use crate::cpuid::{CpuSnapshot, CpuidResult, XSAVE_LEAF};
use crate::features::{self, Reg, FEATURES};
use crate::xsave::MIN_SIZE;

/// What a feature needs to be usable: hiding any of these hides it too.
pub const DEPENDENCIES: &[(&str, &[&str])] = &[
    ("sse2", &["sse"]),
    ("sse3", &["sse2"]),
    ("ssse3", &["sse3"]),
    ("sse4_1", &["ssse3"]),
    ("sse4_2", &["sse4_1"]),
    ("aes", &["sse2"]),
    ("pclmulqdq", &["sse2"]),
    ("sha_ni", &["sse2"]),
    ("gfni", &["sse2"]),
    ("osxsave", &["xsave"]),
    ("xsaveopt", &["xsave"]),
    ("xsavec", &["xsave"]),
    ("xgetbv1", &["xsave"]),
    ("xsaves", &["xsave"]),
    ("avx", &["xsave", "osxsave", "sse4_2"]),
    ("fma", &["avx"]),
    ("f16c", &["avx"]),
    ("avx2", &["avx"]),
    ("vaes", &["avx", "aes"]),
    ("vpclmulqdq", &["avx", "pclmulqdq"]),
    ("avx_vnni", &["avx2"]),
    ("avx_ifma", &["avx2"]),
    ("avx512f", &["avx2", "fma", "f16c"]),
    ("avx512dq", &["avx512f"]),
    ("avx512ifma", &["avx512f"]),
    ("avx512pf", &["avx512f"]),
    ("avx512er", &["avx512f"]),
    ("avx512cd", &["avx512f"]),
    ("avx512bw", &["avx512f"]),
    ("avx512vl", &["avx512f"]),
    ("avx512vbmi", &["avx512bw"]),
    ("avx512_vbmi2", &["avx512bw"]),
    ("avx512_vnni", &["avx512f"]),
    ("avx512_bitalg", &["avx512bw"]),
    ("avx512_vpopcntdq", &["avx512f"]),
    ("avx512_4vnniw", &["avx512f"]),
    ("avx512_4fmaps", &["avx512f"]),
    ("avx512_vp2intersect", &["avx512f"]),
    ("avx512_fp16", &["avx512bw"]),
    ("avx512_bf16", &["avx512bw"]),
    ("amx_tile", &["xsave"]),
    ("amx_bf16", &["amx_tile"]),
    ("amx_int8", &["amx_tile"]),
    ("amx_fp16", &["amx_tile"]),
    ("mpx", &["xsave"]),
    ("ospke", &["pku"]),
    ("apx_f", &["xsave"]),
];

/// The feature that makes XSAVE component `index` visible (x87 and SSE are
/// always there; a component without an entry is hidden by any profile).
const COMPONENT_FEATURES: &[(u32, &str)] = &[
    (2, "avx"),
    (3, "mpx"),
    (4, "mpx"),
    (5, "avx512f"),
    (6, "avx512f"),
    (7, "avx512f"),
    (9, "ospke"),
    (17, "amx_tile"),
    (18, "amx_tile"),
    (19, "apx_f"),
];

/// x87 and SSE: in every XCR0 of x86_64.
const LEGACY_COMPONENTS: u64 = 0b11;

/// The x86-64 baseline of the psABI, plus what every x86_64 CPU has.
const BASELINE: &[&str] = &[
    "fpu", "tsc", "cx8", "cmov", "clflush", "mmx", "fxsr", "sse", "sse2", "syscall", "nx", "lm",
];
/// Added by x86-64-v2.
const V2: &[&str] = &[
    "cx16", "lahf_lm", "popcnt", "sse3", "sse4_1", "sse4_2", "ssse3",
];
/// Added by x86-64-v3 (`abm` is how Linux names LZCNT).
const V3: &[&str] = &[
    "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave", "osxsave",
];
/// Added by x86-64-v4.
const V4: &[&str] = &["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"];

/// Why a profile cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    /// A name that is not in the feature table.
    #[error("line {line}: unknown CPU feature {name:?} (see `rcr cpu` for the names)")]
    UnknownFeature {
        /// 1-based line number.
        line: usize,
        /// The name as written.
        name: String,
    },
}

/// A set of named features a program may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    allowed: BTreeSet<&'static str>,
}

impl Profile {
    /// `x86-64-v2`, `x86-64-v3` or `x86-64-v4` (and `x86-64`, the baseline).
    pub fn level(name: &str) -> Option<Profile> {
        let parts: &[&[&str]] = match name {
            "x86-64" => &[BASELINE],
            "x86-64-v2" => &[BASELINE, V2],
            "x86-64-v3" => &[BASELINE, V2, V3],
            "x86-64-v4" => &[BASELINE, V2, V3, V4],
            _ => return None,
        };
        Some(Self::from_known(parts.iter().flat_map(|p| p.iter())))
    }

    /// A list of feature names, one per line; `#` starts a comment.
    pub fn from_names(text: &str) -> Result<Profile, ProfileError> {
        let mut allowed = BTreeSet::new();
        for (i, line) in text.lines().enumerate() {
            let name = line.split('#').next().unwrap_or("").trim();
            if name.is_empty() {
                continue;
            }
            let feat = features::by_name(name).ok_or_else(|| ProfileError::UnknownFeature {
                line: i + 1,
                name: name.to_string(),
            })?;
            allowed.insert(feat.name);
        }
        Ok(Profile { allowed })
    }

    /// The features a CPU has.
    pub fn from_snapshot(snap: &CpuSnapshot) -> Profile {
        Profile {
            allowed: features::present(snap).into_iter().collect(),
        }
    }

    fn from_known<'a>(names: impl Iterator<Item = &'a &'static str>) -> Profile {
        Profile {
            allowed: names.copied().collect(),
        }
    }

    /// Features both profiles allow.
    pub fn intersect(&self, other: &Profile) -> Profile {
        Profile {
            allowed: self.allowed.intersection(&other.allowed).copied().collect(),
        }
    }

    /// Whether the profile allows the feature called `name`.
    pub fn allows(&self, name: &str) -> bool {
        self.allowed.contains(name)
    }

    /// The allowed names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.allowed.iter().copied()
    }
}

impl fmt::Display for Profile {
    /// The `from_names` form: one name a line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for name in &self.allowed {
            writeln!(f, "{name}")?;
        }
        Ok(())
    }
}

/// Features of `host` that `profile` allows and whose dependencies are kept
/// too: the set a masked program sees.
pub fn visible(host: &CpuSnapshot, profile: &Profile) -> BTreeSet<&'static str> {
    let mut keep: BTreeSet<&'static str> = features::present(host)
        .into_iter()
        .filter(|n| profile.allows(n))
        .collect();
    loop {
        let broken: Vec<&'static str> = keep
            .iter()
            .copied()
            .filter(|n| deps_of(n).iter().any(|d| !keep.contains(d)))
            .collect();
        if broken.is_empty() {
            return keep;
        }
        for n in broken {
            keep.remove(n);
        }
    }
}

fn deps_of(name: &str) -> &'static [&'static str] {
    DEPENDENCIES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(&[], |(_, d)| d)
}

/// XSAVE components (of `bits`) that the visible features make visible.
fn visible_components(bits: u64, visible: &BTreeSet<&'static str>) -> u64 {
    (0..64)
        .filter(|&i| bits & (1 << i) != 0)
        .filter(|&i| {
            LEGACY_COMPONENTS & (1 << i) != 0
                || COMPONENT_FEATURES
                    .iter()
                    .any(|(c, f)| *c == i && visible.contains(f))
        })
        .fold(0, |acc, i| acc | (1 << i))
}

/// Standard-format size of an area holding the components of `mask`.
fn standard_size(snap: &CpuSnapshot, mask: u64) -> u32 {
    components(snap, mask)
        .map(|(_, r)| r.ebx + r.eax)
        .fold(MIN_SIZE as u32, u32::max)
}

/// Compacted-format size of an area holding the components of `mask`.
fn compacted_size(snap: &CpuSnapshot, mask: u64) -> u32 {
    components(snap, mask).fold(MIN_SIZE as u32, |at, (_, r)| {
        let at = if r.ecx & 2 != 0 {
            at.next_multiple_of(64)
        } else {
            at
        };
        at + r.eax
    })
}

/// Recorded 0xD sub-leaves of the components 2.. in `mask`.
fn components(snap: &CpuSnapshot, mask: u64) -> impl Iterator<Item = (u32, CpuidResult)> + '_ {
    (2..64u32)
        .filter(move |&i| mask & (1 << i) != 0)
        .filter_map(|i| snap.leaf(XSAVE_LEAF, i).map(|r| (i, r)))
}

fn reg_mut(r: &mut CpuidResult, reg: Reg) -> &mut u32 {
    match reg {
        Reg::Eax => &mut r.eax,
        Reg::Ebx => &mut r.ebx,
        Reg::Ecx => &mut r.ecx,
        Reg::Edx => &mut r.edx,
    }
}

/// `host` as a program under `profile` sees it: every leaf it recorded,
/// with hidden features cleared, hidden XSAVE components gone from XCR0 and
/// leaf 0xD, and 7.0 EAX no higher than the last sub-leaf left non-zero.
pub fn mask(host: &CpuSnapshot, profile: &Profile) -> CpuSnapshot {
    let visible = visible(host, profile);
    let mut out = host.clone();
    let hidden = FEATURES.iter().filter(|f| !visible.contains(f.name));
    for feat in hidden {
        for (_, _, r) in out
            .leaves
            .iter_mut()
            .filter(|(l, s, _)| (*l, *s) == (feat.leaf, feat.sub))
        {
            *reg_mut(r, feat.reg) &= !(1 << feat.bit);
        }
    }
    out.xcr0 = visible_components(host.xcr0, &visible);
    if let Some(d0) = host.leaf(XSAVE_LEAF, 0) {
        let supported = visible_components(u64::from(d0.eax) | (u64::from(d0.edx) << 32), &visible);
        let xcr0 = out.xcr0;
        let std_size = standard_size(host, xcr0);
        let max_size = standard_size(host, supported);
        let compacted_delta = compacted_size(host, host.xcr0) - compacted_size(host, xcr0);
        for (_, sub, r) in out.leaves.iter_mut().filter(|(l, _, _)| *l == XSAVE_LEAF) {
            match *sub {
                0 => {
                    r.eax = supported as u32;
                    r.edx = (supported >> 32) as u32;
                    r.ebx = std_size;
                    r.ecx = max_size;
                }
                1 => r.ebx = r.ebx.saturating_sub(compacted_delta),
                i if supported & (1 << i) == 0 => *r = CpuidResult::default(),
                _ => {}
            }
        }
        out.xsave_size = std_size;
    }
    let last_sub = out
        .leaves
        .iter()
        .filter(|(l, s, r)| *l == 7 && *s > 0 && *r != CpuidResult::default())
        .map(|(_, s, _)| *s)
        .max()
        .unwrap_or(0);
    for (_, _, r) in out.leaves.iter_mut().filter(|(l, s, _)| (*l, *s) == (7, 0)) {
        r.eax = r.eax.min(last_sub);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn regs(eax: u32, ebx: u32, ecx: u32, edx: u32) -> CpuidResult {
        CpuidResult { eax, ebx, ecx, edx }
    }

    /// A Sapphire-Rapids-like CPU: AVX-512, AMX, PKU; XCR0 x87|SSE|AVX|
    /// opmask|ZMM_Hi256|Hi16_ZMM|PKRU|XTILECFG|XTILEDATA.
    fn spr() -> CpuSnapshot {
        let leaf1 = regs(
            0x806f8,
            0,
            (1 << 20)
                | (1 << 19)
                | (1 << 9)
                | (1 << 0)
                | (1 << 23)
                | (1 << 26)
                | (1 << 27)
                | (1 << 28)
                | (1 << 12)
                | (1 << 29)
                | (1 << 13)
                | (1 << 25)
                | (1 << 1)
                | (1 << 22),
            (1 << 0)
                | (1 << 4)
                | (1 << 8)
                | (1 << 15)
                | (1 << 19)
                | (1 << 23)
                | (1 << 24)
                | (1 << 25)
                | (1 << 26),
        );
        let leaf7 = regs(
            1,
            (1 << 3)
                | (1 << 5)
                | (1 << 8)
                | (1 << 16)
                | (1 << 17)
                | (1 << 28)
                | (1 << 30)
                | (1 << 31),
            (1 << 3) | (1 << 4) | (1 << 11),
            (1 << 24) | (1 << 22) | (1 << 25),
        );
        let xcr0: u64 = 0x602e7;
        let d0 = regs(0x602e7, 11008, 11008, 0);
        CpuSnapshot {
            vendor: "GenuineIntel".into(),
            family: 6,
            model: 0x8f,
            stepping: 8,
            leaves: vec![
                (0, 0, regs(0x20, 0, 0, 0)),
                (1, 0, leaf1),
                (7, 0, leaf7),
                (7, 1, regs(1 << 5, 0, 0, 0)),
                (0xd, 0, d0),
                (0xd, 1, regs(0xf, 10752 + 16, 0, 0)),
                (0xd, 2, regs(256, 576, 0, 0)),
                (0xd, 5, regs(64, 1088, 0, 0)),
                (0xd, 6, regs(512, 1152, 0, 0)),
                (0xd, 7, regs(1024, 1664, 0, 0)),
                (0xd, 9, regs(8, 2688, 0, 0)),
                (0xd, 17, regs(64, 2752, 2, 0)),
                (0xd, 18, regs(8192, 2816, 6, 0)),
                (0x8000_0000, 0, regs(0x8000_0008, 0, 0, 0)),
                (
                    0x8000_0001,
                    0,
                    regs(0, 0, (1 << 0) | (1 << 5), (1 << 11) | (1 << 20) | (1 << 29)),
                ),
            ],
            xcr0,
            xsave_size: 11008,
        }
    }

    #[test]
    fn levels_nest() {
        let v2 = Profile::level("x86-64-v2").unwrap();
        let v3 = Profile::level("x86-64-v3").unwrap();
        let v4 = Profile::level("x86-64-v4").unwrap();
        assert_eq!(v3.intersect(&v2), v2);
        assert_eq!(v4.intersect(&v3), v3);
        assert!(v4.allows("avx512f") && !v3.allows("avx512f"));
        assert!(Profile::level("x86-64-v5").is_none());
        for name in v4.names() {
            assert!(features::by_name(name).is_some(), "{name}");
        }
    }

    #[test]
    fn names_file_parses_with_comments_and_rejects_unknown() {
        let p = Profile::from_names("# mine\nsse2\n  avx2 # wide\n\nsse\n").unwrap();
        assert_eq!(p.names().collect::<Vec<_>>(), ["avx2", "sse", "sse2"]);
        assert_eq!(Profile::from_names(&p.to_string()).unwrap(), p);
        assert_eq!(
            Profile::from_names("sse\navx9000\n"),
            Err(ProfileError::UnknownFeature {
                line: 2,
                name: "avx9000".into()
            })
        );
    }

    #[test]
    fn v3_hides_avx512_and_amx_everywhere() {
        let host = spr();
        let m = mask(&host, &Profile::level("x86-64-v3").unwrap());
        let names = features::present(&m);
        for gone in [
            "avx512f",
            "avx512bw",
            "amx_tile",
            "amx_int8",
            "avx512_bf16",
            "pku",
        ] {
            assert!(!names.contains(&gone), "{gone} still visible");
        }
        for kept in ["avx", "avx2", "fma", "sse4_2", "xsave", "osxsave"] {
            assert!(names.contains(&kept), "{kept} lost");
        }
        assert_eq!(m.xcr0, 0b111);
        let d0 = m.leaf(0xd, 0).unwrap();
        assert_eq!((d0.eax, d0.edx, d0.ebx, d0.ecx), (0b111, 0, 832, 832));
        assert_eq!(m.xsave_size, 832);
        assert_eq!(m.leaf(0xd, 5), Some(CpuidResult::default()));
        assert_eq!(m.leaf(0xd, 18), Some(CpuidResult::default()));
        assert_eq!(m.leaf(0xd, 2), host.leaf(0xd, 2));
        // Compacted: 576 + 256 for AVX, plus the host's 16 supervisor bytes.
        assert_eq!(m.leaf(0xd, 1).unwrap().ebx, 832 + 16);
        // 7.1 lost avx512_bf16, its only bit: the max sub-leaf drops to 0.
        assert_eq!(m.leaf(7, 0).unwrap().eax, 0);
        // Identity and signature stay.
        assert_eq!(m.leaf(1, 0).unwrap().eax, host.leaf(1, 0).unwrap().eax);
    }

    #[test]
    fn hiding_avx_hides_what_builds_on_it() {
        let host = spr();
        let mut names: Vec<&str> = features::present(&host);
        names.retain(|n| *n != "avx");
        let m = mask(&host, &Profile::from_names(&names.join("\n")).unwrap());
        let seen = features::present(&m);
        for gone in ["avx", "avx2", "fma", "f16c", "avx512f", "avx512vl"] {
            assert!(!seen.contains(&gone), "{gone} still visible");
        }
        assert!(seen.contains(&"amx_tile"), "AMX does not need AVX");
        assert_eq!(m.xcr0, 0x60203);
    }

    #[test]
    fn own_profile_is_identity_on_named_state() {
        let host = spr();
        let m = mask(&host, &Profile::from_snapshot(&host));
        assert_eq!(m, host);
    }

    fn arb_host() -> impl Strategy<Value = CpuSnapshot> {
        (any::<[u32; 12]>(), any::<u64>(), any::<u8>()).prop_map(|(w, x, sub7)| {
            let mut h = spr();
            let pick = |i: usize, base: u32| base & w[i] | w[i] & 0x00ff_00ff;
            for (l, s, r) in h.leaves.iter_mut() {
                match (*l, *s) {
                    (1, 0) => {
                        r.ecx = pick(0, r.ecx);
                        r.edx = pick(1, r.edx);
                    }
                    (7, 0) => {
                        r.eax = u32::from(sub7 % 3);
                        r.ebx = w[2];
                        r.ecx = w[3];
                        r.edx = w[4];
                    }
                    (7, 1) => r.eax = w[5],
                    (0x8000_0001, 0) => {
                        r.ecx = w[6];
                        r.edx = w[7];
                    }
                    _ => {}
                }
            }
            h.xcr0 &= x | 0b11;
            h
        })
    }

    fn arb_profile() -> impl Strategy<Value = Profile> {
        prop::collection::vec(any::<bool>(), FEATURES.len()).prop_map(|keep| Profile {
            allowed: FEATURES
                .iter()
                .zip(keep)
                .filter(|(_, k)| *k)
                .map(|(f, _)| f.name)
                .collect(),
        })
    }

    proptest! {
        #[test]
        fn masking_is_idempotent(host in arb_host(), p in arb_profile()) {
            let once = mask(&host, &p);
            prop_assert_eq!(mask(&once, &p), once);
        }

        #[test]
        fn masked_is_within_host_and_profile(host in arb_host(), p in arb_profile()) {
            let m = mask(&host, &p);
            let host_has = features::present(&host);
            for name in features::present(&m) {
                prop_assert!(host_has.contains(&name), "{} not on the host", name);
                prop_assert!(p.allows(name), "{} not in the profile", name);
            }
            prop_assert_eq!(m.xcr0 & !host.xcr0, 0);
            prop_assert!(m.xsave_size <= host.xsave_size.max(MIN_SIZE as u32));
            prop_assert!(features::missing_on(&m, &host).is_empty());
        }

        #[test]
        fn dependencies_are_closed(host in arb_host(), p in arb_profile()) {
            let seen = features::present(&mask(&host, &p));
            for name in &seen {
                for dep in deps_of(name) {
                    prop_assert!(seen.contains(dep), "{} visible without {}", name, dep);
                }
            }
        }

        #[test]
        fn a_smaller_profile_shows_less(host in arb_host(), a in arb_profile(), b in arb_profile()) {
            let small = mask(&host, &a.intersect(&b));
            let big = features::present(&mask(&host, &a));
            for name in features::present(&small) {
                prop_assert!(big.contains(&name), "{} appeared", name);
            }
        }
    }
}
