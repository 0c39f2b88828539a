//! rcr's checkpoint/restore engine.
//!
//! [`dump`] freezes a process and writes it into a directory of images;
//! [`restore`] brings it back with the same pid, memory, registers, files and
//! signal state; [`show`] describes a checkpoint. The `rcr` command line is a
//! thin layer over these three calls.

pub mod blob;
mod caps;
pub mod check;
pub mod cpu;
pub mod cpu_mask;
mod dump;
pub mod error;
pub mod infect;
mod objects;
mod par;
pub mod privilege;
pub mod proc;
pub mod ptrace;
mod restore;
pub mod run;
mod show;

pub use dump::{dump, DumpOptions, DumpStats};
pub use error::{Error, Result};
pub use objects::tty::follow_shell_job;
pub use restore::pids::{PidChoice, PidStrategy};
pub use restore::{restore, RestoreOptions, RestoreStats};
pub use show::show;
