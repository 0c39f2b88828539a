//! Signal state across a checkpoint:
//! - handlers with SA_SIGINFO / SA_RESTART / SA_ONSTACK / SA_NODEFER and
//!   sa_mask for several signals, two ignored signals (every signal's
//!   action is compared, not only ours);
//! - a sigaltstack, which SA_ONSTACK handlers must still run on;
//! - a blocked mask, and blocked signals pending: SIGRTMIN+5 queued twice
//!   with values (sigqueue) and SIGWINCH; after the restore they are still
//!   pending and, once unblocked, delivered with the same si_value in order;
//! - itimers real/virtual/prof armed with long intervals: still armed with
//!   the same intervals and plausible remaining values, never fired;
//! - process flags set with prctl: child subreaper, no_new_privs, and not
//!   dumpable.

use rcr_tests::sigs::{
    altstack, bits, blocked, change_mask, install_altstack, mask_of, pending, rt, sigset,
};
use rcr_tests::workload::{self, getpid, last_err, Args, Verdict};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

const ALTSTACK_SIZE: usize = 64 * 1024;
const VALUE_1: usize = 0x5eed_0001;
const VALUE_2: usize = 0x5eed_0002;
const PROBE_VALUE: usize = 77;
/// Itimers as (which, value seconds, interval seconds, slack seconds): the
/// remaining value may drop by at most `slack` between arming and checking.
const ITIMERS: [(i32, i64, i64, i64); 3] = [
    (libc::ITIMER_REAL, 900, 1000, 600),
    (libc::ITIMER_VIRTUAL, 1800, 2000, 60),
    (libc::ITIMER_PROF, 2700, 3000, 60),
];

/// Allowance above the armed value for the tick the kernel may add.
const TICK_SLACK_US: i64 = 100_000;

/// What the handlers saw, in order.
const MAX_RECORDS: usize = 16;
static RECORDS: AtomicUsize = AtomicUsize::new(0);
static REC_SIGNO: [AtomicI32; MAX_RECORDS] = [const { AtomicI32::new(0) }; MAX_RECORDS];
static REC_VALUE: [AtomicUsize; MAX_RECORDS] = [const { AtomicUsize::new(0) }; MAX_RECORDS];
static REC_CODE: [AtomicI32; MAX_RECORDS] = [const { AtomicI32::new(0) }; MAX_RECORDS];
static REC_PID: [AtomicI32; MAX_RECORDS] = [const { AtomicI32::new(0) }; MAX_RECORDS];
static REC_STACK: [AtomicUsize; MAX_RECORDS] = [const { AtomicUsize::new(0) }; MAX_RECORDS];
static TIMER_FIRES: AtomicUsize = AtomicUsize::new(0);

fn record(sig: i32, value: usize, code: i32, pid: i32) {
    let local = 0u8;
    let n = RECORDS.fetch_add(1, Ordering::SeqCst);
    if n < MAX_RECORDS {
        REC_SIGNO[n].store(sig, Ordering::SeqCst);
        REC_VALUE[n].store(value, Ordering::SeqCst);
        REC_CODE[n].store(code, Ordering::SeqCst);
        REC_PID[n].store(pid, Ordering::SeqCst);
        REC_STACK[n].store(std::ptr::addr_of!(local) as usize, Ordering::SeqCst);
    }
}

extern "C" fn on_info(sig: i32, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to SA_SIGINFO handlers; for
    // sigqueue'd and kill'ed signals the value and pid fields are set.
    let (value, code, pid) = unsafe {
        (
            (*info).si_value().sival_ptr as usize,
            (*info).si_code,
            (*info).si_pid(),
        )
    };
    record(sig, value, code, pid);
}

extern "C" fn on_plain(sig: i32) {
    record(sig, 0, 0, 0);
}

extern "C" fn on_timer(_sig: i32) {
    TIMER_FIRES.fetch_add(1, Ordering::SeqCst);
}

enum Handler {
    Info(extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void)),
    Plain(extern "C" fn(i32)),
    Ignore,
}

fn set_action(sig: i32, handler: Handler, flags: i32, mask: &[i32]) -> Result<(), String> {
    // SAFETY: a zeroed sigaction is valid; the handlers are async-signal-safe
    // (they only touch atomics).
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = match handler {
            Handler::Info(f) => f as usize,
            Handler::Plain(f) => f as usize,
            Handler::Ignore => libc::SIG_IGN,
        };
        sa.sa_flags = flags;
        sa.sa_mask = sigset(mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(format!("sigaction({sig}): {}", last_err()));
    }
    Ok(())
}

/// (handler, flags, mask bits, restorer) or the errno of sigaction().
type ActionSnap = Result<(usize, i32, u64, usize), i32>;

fn actions() -> Vec<ActionSnap> {
    (1..=64)
        .map(|s| {
            // SAFETY: querying (act = NULL) into a zeroed struct we own.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(s, std::ptr::null(), &mut old) != 0 {
                    return Err(last_err().raw_os_error().unwrap_or(0));
                }
                Ok((
                    old.sa_sigaction,
                    old.sa_flags,
                    bits(&old.sa_mask),
                    old.sa_restorer.map_or(0, |f| f as usize),
                ))
            }
        })
        .collect()
}

fn queue(sig: i32, value: usize) -> Result<(), String> {
    // SAFETY: sigqueue to ourselves with a plain integer value.
    let rc = unsafe {
        libc::sigqueue(
            getpid(),
            sig,
            libc::sigval {
                sival_ptr: value as *mut _,
            },
        )
    };
    if rc != 0 {
        return Err(format!("sigqueue({sig}): {}", last_err()));
    }
    Ok(())
}

fn kill_self(sig: i32) {
    // SAFETY: sends a signal to ourselves.
    unsafe { libc::kill(getpid(), sig) };
}

fn getitimer(which: i32) -> libc::itimerval {
    // SAFETY: getitimer writes the struct we own.
    unsafe {
        let mut it: libc::itimerval = std::mem::zeroed();
        libc::getitimer(which, &mut it);
        it
    }
}

fn micros(tv: libc::timeval) -> i64 {
    tv.tv_sec * 1_000_000 + tv.tv_usec
}

/// Sets up everything; returns the alt stack's base.
fn build() -> Result<usize, String> {
    let stack_base = install_altstack(ALTSTACK_SIZE)?;
    set_flags()?;
    use libc::{SA_NODEFER, SA_ONSTACK, SA_RESTART, SA_SIGINFO};
    set_action(
        libc::SIGUSR2,
        Handler::Info(on_info),
        SA_SIGINFO | SA_RESTART | SA_ONSTACK,
        &[libc::SIGHUP, libc::SIGWINCH],
    )?;
    set_action(
        libc::SIGHUP,
        Handler::Plain(on_plain),
        SA_RESTART,
        &[libc::SIGTERM, rt(1)],
    )?;
    set_action(
        libc::SIGWINCH,
        Handler::Plain(on_plain),
        0,
        &[libc::SIGUSR2],
    )?;
    set_action(
        rt(3),
        Handler::Info(on_info),
        SA_SIGINFO | SA_ONSTACK | SA_NODEFER,
        &[libc::SIGUSR2, rt(4)],
    )?;
    set_action(rt(5), Handler::Info(on_info), SA_SIGINFO, &[])?;
    set_action(libc::SIGINT, Handler::Ignore, 0, &[])?;
    set_action(libc::SIGQUIT, Handler::Ignore, SA_RESTART, &[libc::SIGHUP])?;
    for sig in [libc::SIGALRM, libc::SIGVTALRM, libc::SIGPROF] {
        set_action(sig, Handler::Plain(on_timer), SA_RESTART, &[])?;
    }

    change_mask(libc::SIG_BLOCK, &[rt(5), libc::SIGWINCH, libc::SIGTTIN])?;
    queue(rt(5), VALUE_1)?;
    queue(rt(5), VALUE_2)?;
    kill_self(libc::SIGWINCH);

    for (which, value, interval, _) in ITIMERS {
        let it = libc::itimerval {
            it_interval: libc::timeval {
                tv_sec: interval,
                tv_usec: 0,
            },
            it_value: libc::timeval {
                tv_sec: value,
                tv_usec: 0,
            },
        };
        // SAFETY: setitimer reads the struct we own.
        if unsafe { libc::setitimer(which, &it, std::ptr::null_mut()) } != 0 {
            return Err(format!("setitimer({which}): {}", last_err()));
        }
    }
    Ok(stack_base)
}

/// An expected delivery: (signal, Some((si_value, si_code, si_pid)) for
/// SA_SIGINFO handlers, whether it ran on the alt stack).
type Expected = (i32, Option<(usize, i32, i32)>, bool);

struct Snapshot {
    actions: Vec<ActionSnap>,
    blocked: u64,
    pending: u64,
    altstack: (usize, usize, i32),
    /// PR_GET_CHILD_SUBREAPER, PR_GET_NO_NEW_PRIVS, PR_GET_DUMPABLE.
    flags: (i32, i32, i32),
}

fn flags() -> (i32, i32, i32) {
    let mut subreaper: libc::c_int = -1;
    // SAFETY: prctl queries of this process; the first writes into `subreaper`.
    unsafe {
        libc::prctl(
            libc::PR_GET_CHILD_SUBREAPER,
            &mut subreaper as *mut libc::c_int,
        );
        (
            subreaper,
            libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
            libc::prctl(libc::PR_GET_DUMPABLE),
        )
    }
}

/// The flags the workload sets; each differs from a fresh process's.
fn set_flags() -> Result<(), String> {
    // SAFETY: prctl on this process only.
    let failed = unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) != 0
            || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_DUMPABLE, 0) != 0
    };
    match failed {
        true => Err(format!("prctl: {}", last_err())),
        false => Ok(()),
    }
}

fn snapshot() -> Snapshot {
    Snapshot {
        actions: actions(),
        blocked: blocked(),
        pending: pending(),
        altstack: altstack(),
        flags: flags(),
    }
}

fn check(before: &Snapshot, stack_base: usize) -> Verdict {
    let mut v = Verdict::new();
    let after = snapshot();
    for (i, (a, b)) in after.actions.iter().zip(&before.actions).enumerate() {
        if a != b {
            v.fail(format!(
                "sigaction of signal {}: got {a:x?}, want {b:x?}",
                i + 1
            ));
        }
    }
    v.eq("blocked mask", after.blocked, before.blocked);
    v.eq("pending set", after.pending, before.pending);
    v.eq(
        "pending set (expected signals)",
        after.pending,
        mask_of(&[rt(5), libc::SIGWINCH]),
    );
    v.eq(
        "sigaltstack (sp, size, flags)",
        after.altstack,
        before.altstack,
    );
    v.eq(
        "(subreaper, no_new_privs, dumpable)",
        after.flags,
        (1, 1, 0),
    );
    v.eq("flags before", before.flags, (1, 1, 0));
    v.eq(
        "handlers run while waiting",
        RECORDS.load(Ordering::SeqCst),
        0,
    );

    for (which, value, interval, slack) in ITIMERS {
        let it = getitimer(which);
        v.eq(
            &format!("itimer {which} interval (us)"),
            micros(it.it_interval),
            interval * 1_000_000,
        );
        let left = micros(it.it_value);
        // The kernel adds up to a tick to CPU timers when arming them.
        let max = value * 1_000_000 + TICK_SLACK_US;
        v.check(left > (value - slack) * 1_000_000 && left <= max, || {
            format!(
                "itimer {which} remaining {left} us, want in ({}, {}] s",
                value - slack,
                value
            )
        });
    }
    v.eq(
        "itimer signals delivered",
        TIMER_FIRES.load(Ordering::SeqCst),
        0,
    );

    // Live behaviour: the ignored signal does nothing; SA_ONSTACK handlers
    // run on the alt stack, others do not; the pending signals arrive.
    kill_self(libc::SIGINT);
    if let Err(e) = queue(libc::SIGUSR2, PROBE_VALUE) {
        v.fail(e);
    }
    if let Err(e) = queue(rt(3), PROBE_VALUE + 1) {
        v.fail(e);
    }
    kill_self(libc::SIGHUP);
    for sig in [rt(5), libc::SIGWINCH] {
        if let Err(e) = change_mask(libc::SIG_UNBLOCK, &[sig]) {
            v.fail(e);
        }
    }

    let pid = getpid();
    let on_alt = |sp: usize| sp >= stack_base && sp < stack_base + ALTSTACK_SIZE;
    let want: [Expected; 6] = [
        (
            libc::SIGUSR2,
            Some((PROBE_VALUE, libc::SI_QUEUE, pid)),
            true,
        ),
        (rt(3), Some((PROBE_VALUE + 1, libc::SI_QUEUE, pid)), true),
        (libc::SIGHUP, None, false),
        (rt(5), Some((VALUE_1, libc::SI_QUEUE, pid)), false),
        (rt(5), Some((VALUE_2, libc::SI_QUEUE, pid)), false),
        (libc::SIGWINCH, None, false),
    ];
    let n = RECORDS.load(Ordering::SeqCst);
    v.eq("signals delivered after the check began", n, want.len());
    for (i, &(sig, info, alt)) in want.iter().enumerate().take(n.min(MAX_RECORDS)) {
        let got_sig = REC_SIGNO[i].load(Ordering::SeqCst);
        v.eq(&format!("delivery {i}: signal"), got_sig, sig);
        if let Some((value, code, sender)) = info {
            v.eq(
                &format!("delivery {i} (signal {sig}): si_value"),
                REC_VALUE[i].load(Ordering::SeqCst),
                value,
            );
            v.eq(
                &format!("delivery {i} (signal {sig}): si_code"),
                REC_CODE[i].load(Ordering::SeqCst),
                code,
            );
            v.eq(
                &format!("delivery {i} (signal {sig}): si_pid"),
                REC_PID[i].load(Ordering::SeqCst),
                sender,
            );
        }
        let sp = REC_STACK[i].load(Ordering::SeqCst);
        v.eq(
            &format!("delivery {i} (signal {sig}) on the alt stack"),
            on_alt(sp),
            alt,
        );
    }
    v.eq("pending after unblocking", pending(), 0);
    v
}

fn main() {
    let args = Args::init();
    let stack_base = build().unwrap_or_else(|e| args.fail_early(&e));
    let before = snapshot();
    args.signal_ready();
    workload::wait_for_wake();
    let v = check(&before, stack_base);
    args.finish(v)
}
