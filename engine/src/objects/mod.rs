//! One module per kernel object, each with its dump and its restore side by side.

pub mod deleted;
pub mod epoll;
pub mod eventfd;
pub mod files;
pub mod fs_context;
pub mod inet_socket;
pub mod inotify;
pub mod locks;
pub mod memfd;
pub mod memory;
pub mod mm_fields;
pub mod pipe;
pub mod posix_shm;
pub mod pstree;
pub mod rlimits;
pub mod shmem;
pub mod signalfd;
pub mod signals;
pub mod sysv;
pub mod thread;
pub mod timerfd;
pub mod timers;
pub mod tty;
pub mod unix_socket;
pub mod vdso;
