//! The CPU a checkpoint ran on: recorded at dump, compared at restore; CPU
//! profiles (what a program may see) and the XSAVE areas moved to this host.

use crate::error::{Error, Result};
use nix::errno::Errno;
use rcr_arch::cpuid::{CpuSnapshot, CpuidResult};
use rcr_arch::features;
use rcr_arch::profile::{self, Profile};
use rcr_arch::xconvert::{self, XFormat};
use rcr_arch::xsave::XsaveLayout;
use rcr_images::pb;
use std::path::Path;
use std::str::FromStr;

/// This host's CPU as the inventory stores it.
pub fn host_info() -> pb::CpuInfo {
    to_info(&CpuSnapshot::host())
}

fn to_info(s: &CpuSnapshot) -> pb::CpuInfo {
    pb::CpuInfo {
        vendor: s.vendor.clone(),
        family: s.family,
        model: s.model,
        stepping: s.stepping,
        leaves: s
            .leaves
            .iter()
            .map(|&(leaf, subleaf, r)| pb::CpuidLeaf {
                leaf,
                subleaf,
                eax: r.eax,
                ebx: r.ebx,
                ecx: r.ecx,
                edx: r.edx,
            })
            .collect(),
        xcr0: s.xcr0,
        xsave_size: s.xsave_size,
        xsave_components: XsaveLayout::from_snapshot(s)
            .map(|l| l.components)
            .unwrap_or_default()
            .iter()
            .map(|c| pb::XsaveComponent {
                index: c.index,
                offset: c.offset,
                size: c.size,
                align64: c.align64,
            })
            .collect(),
        xsave_compacted: false,
    }
}

/// The snapshot an inventory's CPU record describes.
pub fn from_info(i: &pb::CpuInfo) -> CpuSnapshot {
    CpuSnapshot {
        vendor: i.vendor.clone(),
        family: i.family,
        model: i.model,
        stepping: i.stepping,
        leaves: i
            .leaves
            .iter()
            .map(|l| {
                let r = CpuidResult {
                    eax: l.eax,
                    ebx: l.ebx,
                    ecx: l.ecx,
                    edx: l.edx,
                };
                (l.leaf, l.subleaf, r)
            })
            .collect(),
        xcr0: i.xcr0,
        xsave_size: i.xsave_size,
    }
}

/// How closely the restoring CPU must match the recorded one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuCheck {
    /// Also refuse another vendor, family or model, or another XSAVE layout.
    Strict,
    /// Refuse when this CPU lacks a feature the program could have seen.
    #[default]
    Compatible,
    /// Only warn about missing features.
    None,
}

impl FromStr for CpuCheck {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "strict" => Ok(CpuCheck::Strict),
            "compatible" => Ok(CpuCheck::Compatible),
            "none" => Ok(CpuCheck::None),
            _ => Err(format!(
                "unknown CPU check {s:?}: use strict, compatible or none"
            )),
        }
    }
}

/// Compares the checkpoint's CPU with this host under `check`. Returns the
/// warnings to show; refuses, naming every missing feature, when the check
/// fails.
pub fn check_restore(inv: &pb::Inventory, check: CpuCheck) -> Result<Vec<String>> {
    let Some(saved) = &inv.cpu else {
        return Err(Error::Preflight(
            "the checkpoint does not record its CPU".into(),
        ));
    };
    let image = from_info(saved);
    let host = CpuSnapshot::host();
    let mut problems = Vec::new();
    let missing = features::missing_on(&image, &host);
    if !missing.is_empty() {
        problems.push(format!(
            "this CPU lacks features the checkpointed program may use: {}",
            missing.join(", ")
        ));
    }
    if check == CpuCheck::Strict {
        problems.extend(strict_differences(&image, &host));
    }
    match (check, problems.is_empty()) {
        (_, true) => Ok(Vec::new()),
        (CpuCheck::None, false) => Ok(problems
            .into_iter()
            .map(|p| format!("{p} (--cpu-check none: restoring anyway)"))
            .collect()),
        (_, false) => Err(Error::Preflight(problems.join("; "))),
    }
}

/// What `strict` refuses beyond missing features: another CPU identity or
/// another XSAVE layout.
fn strict_differences(image: &CpuSnapshot, host: &CpuSnapshot) -> Vec<String> {
    let mut out = Vec::new();
    let id = |s: &CpuSnapshot| format!("{} family {:#x} model {:#x}", s.vendor, s.family, s.model);
    if id(image) != id(host) {
        out.push(format!(
            "the checkpoint ran on {}, this is {} (--cpu-check strict)",
            id(image),
            id(host)
        ));
    }
    let (a, b) = (
        XsaveLayout::from_snapshot(image),
        XsaveLayout::from_snapshot(host),
    );
    if a != b {
        out.push(format!(
            "the XSAVE layout differs: checkpoint xcr0 {:#x} size {}, here xcr0 {:#x} size {} \
             (--cpu-check strict)",
            image.xcr0, image.xsave_size, host.xcr0, host.xsave_size
        ));
    }
    out
}

/// A thread's saved XSAVE area in this host's standard format, so that its
/// rt_sigreturn frame restores it here. State of a component this CPU lacks
/// may be dropped only while it is in its initial state.
pub fn xsave_for_host(
    pid: i32,
    tid: i32,
    area: &[u8],
    image: Option<&XsaveLayout>,
    host: &XsaveLayout,
) -> Result<Vec<u8>> {
    let from = image.unwrap_or(host);
    xconvert::convert(area, from, host, XFormat::Standard)
        .map_err(|e| Error::Preflight(format!("process {pid} thread {tid}: {e}")))
}

/// The XSAVE layout an inventory records, if it recorded leaf 0xD.
pub fn image_layout(inv: &pb::Inventory) -> Option<XsaveLayout> {
    inv.cpu
        .as_ref()
        .and_then(|c| XsaveLayout::from_snapshot(&from_info(c)))
}

/// `rcr cpu --json`: this host's CPU record, features by name; as a
/// program under `profile` sees it, when given.
pub fn host_json(profile: Option<&CpuProfile>) -> serde_json::Value {
    snapshot_json(&profile.map_or_else(CpuSnapshot::host, CpuProfile::masked_host))
}

/// A few lines of the record for people: identity, XSAVE, features.
pub fn summary(v: &serde_json::Value) -> String {
    let names: Vec<&str> = v["features"]
        .as_array()
        .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
        .unwrap_or_default();
    format!(
        "{} family {} model {} stepping {}\nxcr0 {}, XSAVE area {} bytes, CPUID faulting: {}\n{}",
        v["vendor"].as_str().unwrap_or("?"),
        v["family"],
        v["model"],
        v["stepping"],
        v["xcr0"].as_str().unwrap_or("?"),
        v["xsave_size"],
        if v["cpuid_faulting"] == true {
            "available"
        } else {
            "not available"
        },
        names.join(" ")
    )
}

/// A CPU record as JSON; `features` is what [`CpuProfile::parse`] reads back.
fn snapshot_json(s: &CpuSnapshot) -> serde_json::Value {
    let layout = XsaveLayout::from_snapshot(s);
    serde_json::json!({
        "vendor": s.vendor,
        "family": s.family,
        "model": s.model,
        "stepping": s.stepping,
        "features": features::present(s),
        "xcr0": format!("{:#x}", s.xcr0),
        "xsave_size": s.xsave_size,
        "xsave_compacted_size": layout.as_ref().map(xconvert::compacted_size),
        "xsave_components": layout.map(|l| l.components.iter().map(|c| serde_json::json!({
            "index": c.index,
            "name": features::component_name(c.index),
            "offset": c.offset,
            "size": c.size,
            "align64": c.align64,
        })).collect::<Vec<_>>()),
        "cpuid_faulting": faulting_available().is_ok(),
        "leaves": s.leaves.iter().map(|(l, sub, r)| serde_json::json!({
            "leaf": format!("{l:#x}"),
            "subleaf": sub,
            "eax": format!("{:#010x}", r.eax),
            "ebx": format!("{:#010x}", r.ebx),
            "ecx": format!("{:#010x}", r.ecx),
            "edx": format!("{:#010x}", r.edx),
        })).collect::<Vec<_>>(),
    })
}

/// A CPU profile and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuProfile {
    /// The allowed features.
    pub profile: Profile,
    /// The text it was parsed from.
    pub spec: String,
}

impl CpuProfile {
    /// Parses `x86-64-v2|v3|v4`, a file of feature names (one a line, `#`
    /// comments), an `rcr cpu --json` output or a checkpoint directory; a
    /// comma-separated list of these is their intersection.
    pub fn parse(spec: &str) -> Result<CpuProfile> {
        let mut out: Option<Profile> = None;
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let p = Self::one(part)?;
            out = Some(match out {
                Some(o) => o.intersect(&p),
                None => p,
            });
        }
        let profile = out.ok_or_else(|| Error::Preflight("empty CPU profile".into()))?;
        Ok(CpuProfile {
            profile,
            spec: spec.to_string(),
        })
    }

    fn one(part: &str) -> Result<Profile> {
        if let Some(p) = Profile::level(part) {
            return Ok(p);
        }
        let path = Path::new(part);
        if path.is_dir() {
            let inv: pb::Inventory =
                rcr_images::read(&rcr_images::ImageDir::new(path).inventory())?;
            let cpu = inv.cpu.ok_or_else(|| Error::Invalid {
                path: path.into(),
                what: "the checkpoint does not record its CPU".into(),
            })?;
            return Ok(Profile::from_snapshot(&from_info(&cpu)));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Preflight(format!(
                    "CPU profile {part:?} is neither x86-64-v2, x86-64-v3, x86-64-v4 nor an \
                     existing file or checkpoint directory"
                ))
            } else {
                Error::io(path, e)
            }
        })?;
        let bad = |what: String| Error::Invalid {
            path: path.into(),
            what,
        };
        if text.trim_start().starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| bad(format!("not `rcr cpu --json` output: {e}")))?;
            let names = v["features"]
                .as_array()
                .ok_or_else(|| bad("no \"features\" list (not `rcr cpu --json` output)".into()))?
                .iter()
                .filter_map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join("\n");
            return Profile::from_names(&names).map_err(|e| bad(e.to_string()));
        }
        Profile::from_names(&text).map_err(|e| bad(e.to_string()))
    }

    /// The profile as a checkpoint records it.
    pub fn record(&self) -> pb::CpuProfileRecord {
        pb::CpuProfileRecord {
            spec: self.spec.clone(),
            features: self.profile.names().map(String::from).collect(),
        }
    }

    /// The profile a checkpoint recorded.
    pub fn from_record(r: &pb::CpuProfileRecord) -> Result<CpuProfile> {
        let profile = Profile::from_names(&r.features.join("\n"))
            .map_err(|e| Error::Preflight(format!("the recorded CPU profile {}: {e}", r.spec)))?;
        Ok(CpuProfile {
            profile,
            spec: r.spec.clone(),
        })
    }

    /// This host as a program under the profile sees it.
    pub fn masked_host(&self) -> CpuSnapshot {
        profile::mask(&CpuSnapshot::host(), &self.profile)
    }
}

/// How a profile is enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProfileMode {
    /// CPUID faulting: every CPUID the program runs traps and rcr answers it.
    #[default]
    Faulting,
    /// Only glibc's dispatch is steered, through `GLIBC_TUNABLES` read at
    /// program start: for programs started later, and only what glibc checks.
    GlibcHwcaps,
}

impl FromStr for ProfileMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "trap" | "faulting" => Ok(ProfileMode::Faulting),
            "glibc" | "glibc-hwcaps" => Ok(ProfileMode::GlibcHwcaps),
            _ => Err(format!(
                "unknown CPU profile mode {s:?}: use trap (CPUID faulting) or glibc"
            )),
        }
    }
}

/// `arch_prctl` codes of `<asm/prctl.h>`.
const ARCH_SET_CPUID: i32 = 0x1012;

/// Whether this kernel and CPU can make CPUID fault: asks for "CPUID
/// enabled" in rcr itself (what it already is), which the kernel refuses
/// with ENODEV where faulting is not supported.
pub fn faulting_available() -> Result<()> {
    // SAFETY: ARCH_SET_CPUID with 1 keeps CPUID working in this thread; it
    // touches no memory.
    let ret = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SET_CPUID, 1) };
    if ret == 0 {
        return Ok(());
    }
    let errno = Errno::last();
    let why = if errno == Errno::ENODEV {
        " (this CPU or kernel cannot make CPUID fault: it lacks the cpuid_fault feature)"
    } else {
        ""
    };
    Err(Error::Preflight(format!(
        "a CPU profile needs CPUID faulting, and arch_prctl(ARCH_SET_CPUID) fails here with \
         {errno}{why}"
    )))
}

/// glibc's names (`glibc.cpu.hwcaps`) for features it dispatches on.
const GLIBC_NAMES: &[(&str, &str)] = &[
    ("avx", "AVX"),
    ("avx2", "AVX2"),
    ("fma", "FMA"),
    ("fma4", "FMA4"),
    ("f16c", "F16C"),
    ("bmi1", "BMI1"),
    ("bmi2", "BMI2"),
    ("abm", "LZCNT"),
    ("movbe", "MOVBE"),
    ("popcnt", "POPCNT"),
    ("sse4_1", "SSE4_1"),
    ("sse4_2", "SSE4_2"),
    ("ssse3", "SSSE3"),
    ("erms", "ERMS"),
    ("fsrm", "FSRM"),
    ("rtm", "RTM"),
    ("xsave", "XSAVE"),
    ("xsavec", "XSAVEC"),
    ("osxsave", "OSXSAVE"),
    ("avx512f", "AVX512F"),
    ("avx512dq", "AVX512DQ"),
    ("avx512cd", "AVX512CD"),
    ("avx512bw", "AVX512BW"),
    ("avx512vl", "AVX512VL"),
    ("avx512er", "AVX512ER"),
    ("avx512pf", "AVX512PF"),
    ("avx_vnni", "AVX_VNNI"),
];

/// The `GLIBC_TUNABLES` value that keeps glibc from dispatching on host
/// features the profile hides, and the hidden features glibc has no switch
/// for (visible to the program all the same).
pub fn glibc_tunables(p: &CpuProfile) -> (String, Vec<&'static str>) {
    let host = CpuSnapshot::host();
    let visible = profile::visible(&host, &p.profile);
    let hidden: Vec<&'static str> = features::present(&host)
        .into_iter()
        .filter(|n| !visible.contains(n))
        .collect();
    let (named, unnamed): (Vec<_>, Vec<_>) = hidden
        .into_iter()
        .partition(|n| GLIBC_NAMES.iter().any(|(f, _)| f == n));
    let caps: Vec<String> = named
        .iter()
        .filter_map(|n| GLIBC_NAMES.iter().find(|(f, _)| f == n))
        .map(|(_, g)| format!("-{g}"))
        .collect();
    (format!("glibc.cpu.hwcaps={}", caps.join(",")), unnamed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(info: pb::CpuInfo) -> pb::Inventory {
        pb::Inventory {
            cpu: Some(info),
            ..Default::default()
        }
    }

    #[test]
    fn host_round_trips_and_passes_every_check() {
        let info = host_info();
        assert_eq!(to_info(&from_info(&info)), info);
        for check in [CpuCheck::Strict, CpuCheck::Compatible, CpuCheck::None] {
            assert_eq!(
                check_restore(&inventory(info.clone()), check).unwrap(),
                Vec::<String>::new()
            );
        }
    }

    #[test]
    fn a_richer_cpu_is_refused_by_name_unless_none() {
        let mut info = host_info();
        for l in info
            .leaves
            .iter_mut()
            .filter(|l| (l.leaf, l.subleaf) == (7, 0))
        {
            l.ebx |= 1 << 16; // avx512f
            l.edx |= 1 << 24; // amx_tile
        }
        let host = features::present(&CpuSnapshot::host());
        let inv = inventory(info);
        let lacks: Vec<&str> = ["avx512f", "amx_tile"]
            .into_iter()
            .filter(|n| !host.contains(n))
            .collect();
        match check_restore(&inv, CpuCheck::Compatible) {
            Ok(w) => assert!(lacks.is_empty() && w.is_empty()),
            Err(e) => {
                let msg = e.to_string();
                assert!(!lacks.is_empty());
                for n in &lacks {
                    assert!(msg.contains(n), "{msg}");
                }
            }
        }
        let warned = check_restore(&inv, CpuCheck::None).unwrap();
        assert_eq!(warned.is_empty(), lacks.is_empty());
        for n in &lacks {
            assert!(warned[0].contains(n), "{warned:?}");
        }
    }

    #[test]
    fn strict_refuses_another_model_that_compatible_accepts() {
        let mut info = host_info();
        info.model ^= 1;
        let inv = inventory(info);
        check_restore(&inv, CpuCheck::Compatible).unwrap();
        let msg = check_restore(&inv, CpuCheck::Strict)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("model") && msg.contains("strict"), "{msg}");
    }

    #[test]
    fn checks_and_modes_parse() {
        assert_eq!("strict".parse(), Ok(CpuCheck::Strict));
        assert_eq!("none".parse(), Ok(CpuCheck::None));
        assert!("lenient".parse::<CpuCheck>().is_err());
        assert_eq!("glibc-hwcaps".parse(), Ok(ProfileMode::GlibcHwcaps));
        assert_eq!("glibc".parse(), Ok(ProfileMode::GlibcHwcaps));
        assert_eq!("trap".parse(), Ok(ProfileMode::Faulting));
    }

    #[test]
    fn profiles_parse_levels_lists_and_json() {
        let v2 = CpuProfile::parse("x86-64-v2").unwrap();
        assert!(v2.profile.allows("sse4_2") && !v2.profile.allows("avx"));
        let back = CpuProfile::from_record(&v2.record()).unwrap();
        assert_eq!(back, v2);
        let both = CpuProfile::parse("x86-64-v3,x86-64-v2").unwrap();
        assert_eq!(both.profile, v2.profile);
        let dir = std::env::temp_dir().join(format!("rcr-cpu-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("host.json");
        std::fs::write(&json, host_json(None).to_string()).unwrap();
        let host = CpuProfile::parse(json.to_str().unwrap()).unwrap();
        assert_eq!(host.profile, Profile::from_snapshot(&CpuSnapshot::host()));
        let list = dir.join("list");
        std::fs::write(&list, "sse2 # base\navx512f\nbogus\n").unwrap();
        let err = CpuProfile::parse(list.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus") && err.contains("line 3"), "{err}");
        assert!(CpuProfile::parse("/no/such/profile")
            .unwrap_err()
            .to_string()
            .contains("x86-64-v2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn glibc_tunables_hide_what_the_profile_hides() {
        let p = CpuProfile::parse("x86-64-v2").unwrap();
        let (t, _) = glibc_tunables(&p);
        assert!(t.starts_with("glibc.cpu.hwcaps="));
        if features::present(&CpuSnapshot::host()).contains(&"avx2") {
            assert!(t.contains("-AVX2"), "{t}");
        }
        assert!(!t.contains("-SSE4_2"), "{t}");
    }

    #[test]
    fn faulting_probe_matches_the_kernel_flag() {
        let flag = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("flags"))
            .is_some_and(|l| l.split_whitespace().any(|w| w == "cpuid_fault"));
        match faulting_available() {
            Ok(()) => assert!(flag),
            Err(e) => {
                assert!(!flag);
                assert!(e.to_string().contains("ENODEV"), "{e}");
            }
        }
    }
}
