//! Resource limits, dump and restore.

use crate::error::{Error, Result};
use rcr_images::pb;
use rcr_parasite::restore_abi::RlimitEntry;

/// Number of resources the kernel has (RLIM_NLIMITS).
const NLIMITS: u32 = 16;

/// Dump side: every limit of `pid`, read from outside with prlimit.
pub fn dump_rlimits(pid: i32) -> Result<Vec<pb::Rlimit>> {
    (0..NLIMITS)
        .map(|resource| {
            let (cur, max) = prlimit(pid, resource)?;
            Ok(pb::Rlimit { resource, cur, max })
        })
        .collect()
}

fn prlimit(pid: i32, resource: u32) -> Result<(u64, u64)> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit64 only writes `old`.
    let ret = unsafe { libc::prlimit64(pid, resource as _, std::ptr::null(), &mut old) };
    if ret != 0 {
        return Err(Error::sys(pid, "prlimit", nix::errno::Errno::last()));
    }
    Ok((old.rlim_cur, old.rlim_max))
}

/// Restore side: the limits to set in the new task, which starts with rcr's.
/// A hard limit above rcr's own cannot be raised without CAP_SYS_RESOURCE:
/// such a limit is kept at rcr's hard limit and reported in `warnings`.
pub fn restore_rlimits(
    saved: &[pb::Rlimit],
    warnings: &mut Vec<String>,
) -> Result<Vec<RlimitEntry>> {
    let mut out = Vec::new();
    for l in saved.iter().filter(|l| l.resource < NLIMITS) {
        let (cur, max) = prlimit(0, l.resource)?;
        if (cur, max) == (l.cur, l.max) {
            continue;
        }
        let (new_cur, new_max) = clamp(l.cur, l.max, max, can_raise_hard());
        if new_max != l.max {
            warnings.push(format!(
                "resource limit {} had hard limit {}, above rcr's {}; kept at {} \
                 (raising it needs CAP_SYS_RESOURCE)",
                name(l.resource),
                l.max,
                max,
                new_max
            ));
        }
        out.push(RlimitEntry {
            resource: l.resource,
            _pad: 0,
            cur: new_cur,
            max: new_max,
        });
    }
    Ok(out)
}

fn clamp(cur: u64, max: u64, our_max: u64, can_raise: bool) -> (u64, u64) {
    if can_raise || max <= our_max {
        (cur, max)
    } else {
        (cur.min(our_max), our_max)
    }
}

fn can_raise_hard() -> bool {
    crate::caps::effective_has(crate::caps::CAP_SYS_RESOURCE)
}

fn name(resource: u32) -> &'static str {
    const NAMES: [&str; 16] = [
        "RLIMIT_CPU",
        "RLIMIT_FSIZE",
        "RLIMIT_DATA",
        "RLIMIT_STACK",
        "RLIMIT_CORE",
        "RLIMIT_RSS",
        "RLIMIT_NPROC",
        "RLIMIT_NOFILE",
        "RLIMIT_MEMLOCK",
        "RLIMIT_AS",
        "RLIMIT_LOCKS",
        "RLIMIT_SIGPENDING",
        "RLIMIT_MSGQUEUE",
        "RLIMIT_NICE",
        "RLIMIT_RTPRIO",
        "RLIMIT_RTTIME",
    ];
    NAMES.get(resource as usize).copied().unwrap_or("RLIMIT_?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_only_unraisable_hard_limits() {
        assert_eq!(clamp(10, 20, 30, false), (10, 20));
        assert_eq!(clamp(10, 50, 30, false), (10, 30));
        assert_eq!(clamp(40, 50, 30, false), (30, 30));
        assert_eq!(clamp(40, 50, 30, true), (40, 50));
    }

    #[test]
    fn own_limits_read_back() {
        let limits = dump_rlimits(std::process::id() as i32).unwrap();
        assert_eq!(limits.len(), 16);
        let mut warnings = Vec::new();
        assert!(restore_rlimits(&limits, &mut warnings).unwrap().is_empty());
        assert!(warnings.is_empty());
    }
}
