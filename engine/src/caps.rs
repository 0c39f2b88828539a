//! Capabilities of the running rcr, for preflight checks and clear refusals.

/// CAP_SYS_RESOURCE: raising hard resource limits.
pub const CAP_SYS_RESOURCE: u32 = 24;

/// Whether rcr's effective set holds capability `cap`.
pub fn effective_has(cap: u32) -> bool {
    crate::privilege::CapSets::own().eff & (1 << cap) != 0
}
