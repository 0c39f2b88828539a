//! One module per kernel object, each with its dump and its restore side by side.

pub mod files;
pub mod fs_context;
pub mod memory;
pub mod mm_fields;
pub mod pstree;
pub mod rlimits;
pub mod shmem;
pub mod signals;
pub mod thread;
pub mod timers;
pub mod vdso;
