//! x86_64 facts as pure code: register sets, the XSAVE layout, the rt_sigreturn
//! frame, CPUID reading, feature sets and masks. No syscalls beyond `cpuid`.

mod bytes;
pub mod cpuid;
pub mod features;
pub mod profile;
pub mod regs;
pub mod sigframe;
pub mod xconvert;
pub mod xsave;
