//! Capabilities of the running rcr, for preflight checks and clear refusals.

/// CAP_SYS_RESOURCE: raising hard resource limits.
pub const CAP_SYS_RESOURCE: u32 = 24;

/// Whether rcr's effective set holds capability `cap`.
pub fn effective_has(cap: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|eff| eff & (1 << cap) != 0)
}
