//! Signal sets as bitmasks, and the calling thread's mask, pending set and
//! alternate stack, for workloads that compare them across a checkpoint.

use crate::workload::last_err;

/// SIGRTMIN + n.
pub fn rt(n: i32) -> i32 {
    libc::SIGRTMIN() + n
}

/// A sigset_t holding `signals`.
pub fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and edit a set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// A signal set as a bitmask (bit s-1 for signal s).
pub fn bits(set: &libc::sigset_t) -> u64 {
    // SAFETY: sigismember only reads the set.
    (1..=64)
        .filter(|&s| unsafe { libc::sigismember(set, s) } == 1)
        .fold(0, |m, s| m | 1 << (s - 1))
}

/// The bitmask of `signals`.
pub fn mask_of(signals: &[i32]) -> u64 {
    bits(&sigset(signals))
}

/// The calling thread's blocked mask.
pub fn blocked() -> u64 {
    // SAFETY: query-only pthread_sigmask into a set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
        bits(&set)
    }
}

/// Signals pending for the calling thread or its process, among those it
/// blocks (what sigpending() reports).
pub fn pending() -> u64 {
    // SAFETY: sigpending writes the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut set);
        bits(&set)
    }
}

/// Changes the calling thread's mask (`how`: SIG_BLOCK, SIG_UNBLOCK,
/// SIG_SETMASK).
pub fn change_mask(how: i32, signals: &[i32]) -> Result<(), String> {
    // SAFETY: pthread_sigmask with a valid set; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(how, &sigset(signals), std::ptr::null_mut()) };
    if rc != 0 {
        return Err(format!(
            "pthread_sigmask({how}, {signals:?}): {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    Ok(())
}

/// The calling thread's alternate signal stack as (sp, size, flags).
pub fn altstack() -> (usize, usize, i32) {
    // SAFETY: query-only sigaltstack into a struct we own.
    unsafe {
        let mut ss: libc::stack_t = std::mem::zeroed();
        libc::sigaltstack(std::ptr::null(), &mut ss);
        (ss.ss_sp as usize, ss.ss_size, ss.ss_flags)
    }
}

/// Gives the calling thread a new alternate stack of `size` bytes (leaked,
/// so it lives as long as the process); returns its base.
pub fn install_altstack(size: usize) -> Result<usize, String> {
    let stack: &'static mut [u8] = Box::leak(vec![0u8; size].into_boxed_slice());
    let ss = libc::stack_t {
        ss_sp: stack.as_mut_ptr().cast(),
        ss_flags: 0,
        ss_size: size,
    };
    // SAFETY: the stack is leaked, so it outlives every use of it.
    if unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) } != 0 {
        return Err(format!("sigaltstack: {}", last_err()));
    }
    Ok(stack.as_ptr() as usize)
}
