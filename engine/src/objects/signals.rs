//! Signal state: handlers, pending signals (dump and restore side by side).
//! The blocked mask and sigaltstack travel in each thread's core and come back
//! through the rt_sigreturn frame (see `thread.rs`).

use rcr_images::pb;
use rcr_parasite::restore_abi::{KernelSigaction, PendingSignal};

/// Signals whose action cannot be changed or queried meaningfully.
fn fixed(signo: u32) -> bool {
    signo == libc::SIGKILL as u32 || signo == libc::SIGSTOP as u32
}

/// Dump side: keeps every handler that is not the default.
pub fn dump_sigactions(
    actions: impl IntoIterator<Item = (u32, KernelSigaction)>,
) -> Vec<pb::SigAction> {
    actions
        .into_iter()
        .filter(|(signo, a)| !fixed(*signo) && *a != KernelSigaction::default())
        .map(|(signo, a)| pb::SigAction {
            signo,
            handler: a.handler,
            flags: a.flags,
            restorer: a.restorer,
            mask: a.mask,
        })
        .collect()
}

/// Restore side: the action of every signal 1..=64, default where none was
/// saved, because the new task starts with rcr's own handlers. Returns the
/// set of signals to install (bit n-1 for signal n) and the actions.
pub fn restore_sigactions(saved: &[pb::SigAction]) -> (u64, [KernelSigaction; 64]) {
    let mut actions = [KernelSigaction::default(); 64];
    let mut set = 0u64;
    for signo in 1..=64u32 {
        if !fixed(signo) {
            set |= 1 << (signo - 1);
        }
    }
    for a in saved
        .iter()
        .filter(|a| (1..=64).contains(&a.signo) && !fixed(a.signo))
    {
        actions[a.signo as usize - 1] = KernelSigaction {
            handler: a.handler,
            flags: a.flags,
            restorer: a.restorer,
            mask: a.mask,
        };
    }
    (set, actions)
}

/// Dump side: a queued signal as PTRACE_PEEKSIGINFO gave it.
pub fn dump_pending(raw: &[u8; 128]) -> pb::SigInfo {
    pb::SigInfo {
        signo: u32::from_ne_bytes(raw[0..4].try_into().expect("4 bytes")),
        raw: raw.to_vec(),
    }
}

/// Restore side: pending signals to queue again, in their saved order.
pub fn restore_pending(saved: &[pb::SigInfo]) -> Vec<PendingSignal> {
    saved
        .iter()
        .map(|s| {
            let mut siginfo = [0u8; 128];
            let n = s.raw.len().min(128);
            siginfo[..n].copy_from_slice(&s.raw[..n]);
            PendingSignal {
                signo: s.signo,
                _pad: 0,
                siginfo,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_not_stored_but_are_restored() {
        let handler = KernelSigaction {
            handler: 0x401000,
            flags: 0x0400_0004,
            restorer: 0x402000,
            mask: 1 << 9,
        };
        let saved = dump_sigactions([
            (10, handler),
            (12, KernelSigaction::default()),
            (9, handler),
        ]);
        assert_eq!(saved.len(), 1);
        assert_eq!(saved[0].signo, 10);
        let (set, actions) = restore_sigactions(&saved);
        assert_eq!(actions[9], handler);
        assert_eq!(actions[11], KernelSigaction::default());
        assert_ne!(set & (1 << 11), 0, "signal 12 is reset to default");
        assert_eq!(set & (1 << 8), 0, "SIGKILL is never touched");
        assert_eq!(set & (1 << 18), 0, "SIGSTOP is never touched");
    }

    #[test]
    fn pending_keeps_siginfo_and_order() {
        let mut raw = [0u8; 128];
        raw[0..4].copy_from_slice(&12u32.to_ne_bytes());
        raw[24] = 0x5a;
        let s = dump_pending(&raw);
        assert_eq!(s.signo, 12);
        let out = restore_pending(std::slice::from_ref(&s));
        assert_eq!(out[0].siginfo, raw);
        assert_eq!(out[0].signo, 12);
    }
}
