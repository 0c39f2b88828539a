//! Shared helpers for the workload programs (`src/bin/wl_*.rs`) and the
//! end-to-end tests (`tests/*.rs`) that checkpoint and restore them.
//!
//! - [`workload`]: the protocol every workload follows (ready file, wake
//!   signal, verdict file).
//! - [`pattern`]: deterministic data so a workload can tell a wrong byte.
//! - [`regloop`]: an asm loop that holds known values in registers.
//! - [`sigs`]: signal sets, masks, pending sets and alt stacks.
//! - [`maps`]: `/proc/self/maps` lookups for workloads that check mappings.
//! - [`fdops`]: descriptor helpers for the workloads that build fd state.
//! - [`sockops`]: unix socket helpers for the socket workloads.
//! - [`ttyops`]: pseudo-terminal helpers for the terminal workloads and tests.
//! - [`harness`]: the test side: temp dirs, spawning, running `rcr`, waiting.
//! - [`rcr_run`]: `rcr run` started and watched from a test.
//! - [`unpriv`]: a plain user and a copy of `rcr` with file capabilities.

pub mod fdops;
pub mod harness;
pub mod inetops;
pub mod maps;
pub mod pattern;
pub mod rcr_run;
pub mod regloop;
pub mod sigs;
pub mod sockops;
pub mod ttyops;
pub mod unpriv;
pub mod workload;
