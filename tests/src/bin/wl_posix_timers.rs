//! POSIX timers across a checkpoint: an interval timer (CLOCK_MONOTONIC,
//! SIGRTMIN+2 with a value, every 20 ms), a one-shot CLOCK_REALTIME timer
//! 1000 s away (SIGRTMIN+3), and a one-shot timer aimed at a helper thread
//! (SIGEV_THREAD_ID, SIGRTMIN+4). A timer made and deleted first leaves a
//! gap in the ids. After restore: the same timer_t values, clocks and
//! targets in /proc/self/timers, armed with their intervals, the interval
//! timer still firing with its value, the thread timer still reaching the
//! thread, and new timers get fresh ids.

use rcr_tests::sigs::rt;
use rcr_tests::workload::{self, Verdict};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TICK_NS: i64 = 20_000_000;
const FAR_S: i64 = 1000;
const VALUE: u64 = 0x1234;
/// How long the check waits for signals that should come within milliseconds.
const PATIENCE: Duration = Duration::from_secs(10);

static TICKS: AtomicU64 = AtomicU64::new(0);
static TICK_VALUE: AtomicU64 = AtomicU64::new(0);
static THREAD_HIT: AtomicI32 = AtomicI32::new(0);
static HELPER_TID: AtomicI32 = AtomicI32::new(0);

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

extern "C" fn on_tick(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let value = unsafe { (*info).si_value().sival_ptr } as u64;
    TICK_VALUE.store(value, Ordering::SeqCst);
    TICKS.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_thread_timer(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    THREAD_HIT.store(gettid(), Ordering::SeqCst);
}

fn handle(
    sig: i32,
    f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
) -> Result<(), String> {
    // SAFETY: a zeroed sigaction is valid; the handlers only touch atomics.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = f as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigaction(sig, &sa, std::ptr::null_mut())
    };
    rcr_tests::fdops::sys(rc as i64, "sigaction").map(|_| ())
}

fn create(clock: i32, notify: i32, sig: i32, tid: i32, value: u64) -> Result<usize, String> {
    // SAFETY: a zeroed sigevent is valid; timer_create writes the id.
    unsafe {
        let mut ev: libc::sigevent = std::mem::zeroed();
        ev.sigev_notify = notify;
        ev.sigev_signo = sig;
        ev.sigev_value.sival_ptr = value as *mut libc::c_void;
        ev.sigev_notify_thread_id = tid;
        let mut id: libc::timer_t = std::ptr::null_mut();
        rcr_tests::fdops::sys(
            libc::timer_create(clock, &mut ev, &mut id) as i64,
            "timer_create",
        )?;
        Ok(id as usize)
    }
}

fn ts(ns: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: ns / 1_000_000_000,
        tv_nsec: ns % 1_000_000_000,
    }
}

fn arm(id: usize, value_ns: i64, interval_ns: i64) -> Result<(), String> {
    let spec = libc::itimerspec {
        it_interval: ts(interval_ns),
        it_value: ts(value_ns),
    };
    // SAFETY: timer_settime reads the spec we own.
    let rc = unsafe { libc::timer_settime(id as libc::timer_t, 0, &spec, std::ptr::null_mut()) };
    rcr_tests::fdops::sys(rc as i64, "timer_settime").map(|_| ())
}

/// (value, interval) in ns, or the error.
fn get(id: usize) -> Result<(i64, i64), String> {
    // SAFETY: timer_gettime writes the spec we own.
    let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::timer_gettime(id as libc::timer_t, &mut spec) };
    rcr_tests::fdops::sys(rc as i64, &format!("timer_gettime({id})"))?;
    let ns = |t: libc::timespec| t.tv_sec * 1_000_000_000 + t.tv_nsec;
    Ok((ns(spec.it_value), ns(spec.it_interval)))
}

struct Timers {
    gap: usize,
    tick: usize,
    far: usize,
    thread: usize,
}

fn build() -> Result<Timers, String> {
    handle(rt(2), on_tick)?;
    handle(rt(4), on_thread_timer)?;
    std::thread::spawn(|| {
        HELPER_TID.store(gettid(), Ordering::SeqCst);
        loop {
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    while HELPER_TID.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let gap = create(libc::CLOCK_MONOTONIC, libc::SIGEV_NONE, 0, 0, 0)?;
    let tick = create(libc::CLOCK_MONOTONIC, libc::SIGEV_SIGNAL, rt(2), 0, VALUE)?;
    let far = create(libc::CLOCK_REALTIME, libc::SIGEV_SIGNAL, rt(3), 0, 0)?;
    let helper = HELPER_TID.load(Ordering::SeqCst);
    let thread = create(
        libc::CLOCK_MONOTONIC,
        libc::SIGEV_THREAD_ID,
        rt(4),
        helper,
        7,
    )?;
    // SAFETY: deletes the timer made above.
    rcr_tests::fdops::sys(
        unsafe { libc::timer_delete(gap as libc::timer_t) } as i64,
        "timer_delete",
    )?;
    arm(tick, TICK_NS, TICK_NS)?;
    arm(far, FAR_S * 1_000_000_000, 0)?;
    arm(thread, FAR_S * 1_000_000_000, 0)?;
    Ok(Timers {
        gap,
        tick,
        far,
        thread,
    })
}

/// Waits up to PATIENCE for `done`.
fn wait_until(done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > PATIENCE {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn check(t: &Timers, v: &mut Verdict) -> Result<(), String> {
    let me = workload::getpid();
    let helper = HELPER_TID.load(Ordering::SeqCst);
    let text = std::fs::read_to_string("/proc/self/timers").map_err(|e| e.to_string())?;
    // One line per timer: "ID: n signal: ... notify: ... ClockID: c".
    let mut listed: Vec<String> = text
        .replace("\nsignal", " signal")
        .replace("\nnotify", " notify")
        .replace("\nClockID", " ClockID")
        .lines()
        .map(str::to_owned)
        .collect();
    listed.sort();
    let mut want = vec![
        format!(
            "ID: {} signal: {}/{VALUE:016x} notify: signal/pid.{me} ClockID: 1",
            t.tick,
            rt(2)
        ),
        format!(
            "ID: {} signal: {}/{:016x} notify: signal/pid.{me} ClockID: 0",
            t.far,
            rt(3),
            0
        ),
        format!(
            "ID: {} signal: {}/{:016x} notify: signal/tid.{helper} ClockID: 1",
            t.thread,
            rt(4),
            7
        ),
    ];
    want.sort();
    v.eq("/proc/self/timers", listed, want);

    let (value, interval) = get(t.tick)?;
    v.eq("tick interval", interval, TICK_NS);
    v.check(value > 0 && value <= TICK_NS, || {
        format!("tick time left {value} ns")
    });
    for (name, id) in [("far", t.far), ("thread", t.thread)] {
        let (value, interval) = get(id)?;
        v.eq(&format!("{name} interval"), interval, 0);
        v.check(value > 0 && value <= FAR_S * 1_000_000_000, || {
            format!("{name} time left {value} ns")
        });
    }
    v.check(get(t.gap).is_err(), || "the deleted timer exists".into());

    let before = TICKS.load(Ordering::SeqCst);
    v.check(
        wait_until(|| TICKS.load(Ordering::SeqCst) >= before + 3),
        || "the interval timer stopped firing".into(),
    );
    v.eq("tick value", TICK_VALUE.load(Ordering::SeqCst), VALUE);
    arm(t.thread, 1_000_000, 0)?;
    v.check(
        wait_until(|| THREAD_HIT.load(Ordering::SeqCst) != 0),
        || "the thread timer never fired".into(),
    );
    v.eq(
        "thread timer's target",
        THREAD_HIT.load(Ordering::SeqCst),
        helper,
    );

    let fresh = create(libc::CLOCK_MONOTONIC, libc::SIGEV_NONE, 0, 0, 0)?;
    v.check(![t.tick, t.far, t.thread].contains(&fresh), || {
        format!("a new timer got id {fresh}, already in use")
    });
    Ok(())
}

fn main() {
    let args = workload::Args::init();
    let timers = build().unwrap_or_else(|e| args.fail_early(&e));
    args.signal_ready();
    workload::wait_for_wake();
    let mut v = Verdict::new();
    if let Err(e) = check(&timers, &mut v) {
        v.fail(e);
    }
    args.finish(v)
}
