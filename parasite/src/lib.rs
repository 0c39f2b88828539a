//! Code that runs inside another process, and the ABI it shares with the engine.
//!
//! Built twice: as an ordinary `no_std` library, so the engine can use the
//! `#[repr(C)]` types both sides share, and by the engine's `build.rs` with
//! `--cfg rcr_blob="parasite"` or `--cfg rcr_blob="restorer"` into flat,
//! position-independent blobs that are injected into a task.
#![no_std]

pub mod parasite_abi;
pub mod restore_abi;
pub mod sys;

#[cfg(rcr_blob)]
mod rt;

#[cfg(rcr_blob = "parasite")]
mod parasite;

#[cfg(rcr_blob = "restorer")]
mod restorer;
