//! The command area shared by the engine and the dump-time parasite.
//!
//! The parasite runs in a shared mapping that both rcr and the target see:
//!
//! ```text
//! [ blob | ParasiteArgs page | data area | stack ]
//! ```
//!
//! rcr starts the blob with `rdi` pointing at [`ParasiteArgs`]. Commands and
//! replies cross a `SOCK_SEQPACKET` unix socket as one [`Command`] or
//! [`Reply`] message each; bulk input and results (iovecs, signal actions)
//! live in the data area, whose address is in [`ParasiteArgs`].
//!
//! If rcr dies, the parasite sees EOF on the socket and returns the task to
//! where it was seized through `rt_sigreturn` on a frame rcr prepared.

/// Bumped whenever a type in this module changes layout or meaning.
pub const PARASITE_ABI_VERSION: u32 = 3;

/// Magic at the start of [`ParasiteArgs`], "rcrP".
pub const PARASITE_MAGIC: u32 = 0x5072_6372;

/// Set up by rcr before the parasite starts; the parasite only reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParasiteArgs {
    /// [`PARASITE_MAGIC`].
    pub magic: u32,
    /// [`PARASITE_ABI_VERSION`] of the engine that wrote this.
    pub version: u32,
    /// The target's end of the control socket.
    pub sock_fd: i32,
    /// The target's write end of the page pipe.
    pub pipe_wr_fd: i32,
    /// The target's read end of the page pipe: while the task holds it, the
    /// pipe never loses its last reader, so a dying rcr cannot make
    /// `vmsplice` raise SIGPIPE in the task.
    pub pipe_rd_fd: i32,
    /// Padding of the C layout.
    pub _pad: u32,
    /// Address of the data area, in the target.
    pub data_addr: u64,
    /// Size of the data area in bytes.
    pub data_len: u64,
    /// `rsp` for `rt_sigreturn` when rcr is gone: the frame at
    /// `sigframe_rsp - 8` holds the task's registers, XSAVE state, signal
    /// mask and altstack from when it was seized.
    pub sigframe_rsp: u64,
}

/// Command codes carried in [`Command::cmd`].
pub mod cmd {
    /// Fill the data area with [`super::Sigactions`].
    pub const GET_SIGACTIONS: u32 = 1;
    /// Fill the data area with a [`super::SigAltStack`].
    pub const GET_SIGALTSTACK: u32 = 2;
    /// Fill the data area with [`super::Itimers`].
    pub const GET_ITIMERS: u32 = 3;
    /// Fill the data area with [`super::Misc`].
    pub const GET_MISC: u32 = 4;
    /// `vmsplice` the `arg0` [`super::IoVec`]s in the data area into the
    /// page pipe; the reply's `value` is the bytes spliced. EOF on the
    /// socket while the pipe is full ends the command.
    pub const DUMP_PAGES: u32 = 5;
    /// Reply, then wait for the next message: rcr interrupts the task there
    /// and cures it, or the parasite sees EOF if rcr died first.
    pub const FINI: u32 = 6;
    /// For each of the `arg0` [`super::PosixTimerState`]s in the data area,
    /// read the time left and interval of the POSIX timer `id` names.
    pub const GET_POSIX_TIMERS: u32 = 7;
}

/// One command message, rcr → parasite.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Command {
    /// [`PARASITE_ABI_VERSION`].
    pub version: u32,
    /// One of [`cmd`].
    pub cmd: u32,
    /// First argument (meaning per command).
    pub arg0: u64,
}

/// One reply message, parasite → rcr.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// The command this answers.
    pub cmd: u32,
    /// 0 on success, else `-errno` of the failing call.
    pub status: i32,
    /// A result (bytes spliced), or on failure the address it failed at.
    pub value: u64,
}

/// The kernel's `struct sigaction` as `rt_sigaction` reads and writes it on
/// x86_64 (with an 8-byte `sigset_t`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelSigaction {
    /// `SIG_DFL` (0), `SIG_IGN` (1) or the handler address.
    pub handler: u64,
    /// `SA_*` flags.
    pub flags: u64,
    /// `sa_restorer`, the return trampoline.
    pub restorer: u64,
    /// Signals blocked while the handler runs (bit `n - 1` is signal `n`).
    pub mask: u64,
}

/// Number of signals `rt_sigaction` knows on x86_64.
pub const NSIG: usize = 64;

/// Result of [`cmd::GET_SIGACTIONS`]: `actions[n - 1]` is signal `n`.
/// SIGKILL and SIGSTOP have no action and are left zeroed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sigactions {
    /// One entry per signal 1..=64.
    pub actions: [KernelSigaction; NSIG],
}

/// Result of [`cmd::GET_SIGALTSTACK`]: the kernel's `stack_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigAltStack {
    /// Base of the alternate stack.
    pub sp: u64,
    /// `SS_DISABLE`, `SS_ONSTACK`, `SS_AUTODISARM`.
    pub flags: i32,
    /// Padding of the C layout.
    pub _pad: i32,
    /// Size in bytes.
    pub size: u64,
}

/// The kernel's `struct timeval`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeval {
    /// Seconds.
    pub sec: i64,
    /// Microseconds.
    pub usec: i64,
}

/// The kernel's `struct itimerval`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Itimerval {
    /// Reload value.
    pub interval: Timeval,
    /// Time to the next expiry; zero when disarmed.
    pub value: Timeval,
}

/// Result of [`cmd::GET_ITIMERS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Itimers {
    /// `ITIMER_REAL`.
    pub real: Itimerval,
    /// `ITIMER_VIRTUAL`.
    pub virt: Itimerval,
    /// `ITIMER_PROF`.
    pub prof: Itimerval,
}

/// Result of [`cmd::GET_MISC`]: per-task values only a syscall inside the
/// task can read. Each is the raw syscall result: negative means `-errno`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Misc {
    /// The program break (`brk(0)`).
    pub brk: i64,
    /// `PR_GET_PDEATHSIG`.
    pub pdeathsig: i64,
    /// `PR_GET_DUMPABLE`.
    pub dumpable: i64,
    /// `PR_GET_NO_NEW_PRIVS`.
    pub no_new_privs: i64,
    /// `PR_GET_CHILD_SUBREAPER`.
    pub child_subreaper: i64,
    /// `PR_GET_TID_ADDRESS`: the clear-child-tid address.
    pub clear_child_tid: i64,
    /// `ARCH_GET_CPUID`: 1 when CPUID runs normally, 0 when it faults.
    pub cpuid_enabled: i64,
    /// `personality(0xffffffff)`.
    pub personality: i64,
    /// The umask.
    pub umask: i64,
}

/// The kernel's `struct timespec`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: i64,
}

/// The kernel's `struct itimerspec`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Itimerspec {
    pub interval: Timespec,
    /// Time to the next expiry; zero when disarmed.
    pub value: Timespec,
}

/// One POSIX timer for [`cmd::GET_POSIX_TIMERS`]: rcr fills `id`, the
/// parasite `status` (0 or `-errno` of `timer_gettime`) and `spec`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PosixTimerState {
    pub id: i32,
    pub status: i32,
    pub spec: Itimerspec,
}

/// One `struct iovec` for [`cmd::DUMP_PAGES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoVec {
    /// Start address in the target.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
}

/// At most this many iovecs go into one `vmsplice` call (the kernel's `UIO_MAXIOV`).
pub const VMSPLICE_MAX_IOVS: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_the_kernel() {
        assert_eq!(size_of::<KernelSigaction>(), 32);
        assert_eq!(size_of::<Sigactions>(), 32 * 64);
        assert_eq!(size_of::<SigAltStack>(), 24);
        assert_eq!(offset_of!(SigAltStack, size), 16);
        assert_eq!(size_of::<Itimerval>(), 32);
        assert_eq!(size_of::<Itimers>(), 96);
        assert_eq!(size_of::<IoVec>(), 16);
        assert_eq!(size_of::<Itimerspec>(), 32);
        assert_eq!(size_of::<PosixTimerState>(), 40);
        assert_eq!(size_of::<Command>(), 16);
        assert_eq!(size_of::<Reply>(), 16);
        assert_eq!(size_of::<ParasiteArgs>(), 48);
    }
}
