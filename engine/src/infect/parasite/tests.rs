//! Infect real child processes, check every answer of the parasite against
//! what the child set up, and check the child runs on unharmed after cure.

use std::arch::asm;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use super::*;
use crate::infect::test_child::Child;

/// Where the child maps its patterned memory (fixed so the test knows it).
const REGION: u64 = 0x5000_0000_0000;
const ALTSTACK_LEN: usize = 64 * 1024;
const SEED: u64 = 0x5eed_0123_4567_89ab;
const UMASK: u32 = 0o027;

/// Values handed to the forked child through its copy of memory.
static REGION_LEN: AtomicUsize = AtomicUsize::new(0);
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);
static INPUT_FD: AtomicI32 = AtomicI32::new(-1);
static mut ALTSTACK: [u8; ALTSTACK_LEN] = [0; ALTSTACK_LEN];
/// Tests run in parallel: one child at a time reads the statics at fork.
static SPAWN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn pattern(word_index: u64) -> u64 {
    word_index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ SEED
}

fn report(byte: u8) {
    // SAFETY: write(2) of one byte to the report pipe.
    unsafe { libc::write(REPORT_FD.load(Ordering::Relaxed), [byte].as_ptr().cast(), 1) };
}

fn altstack_addr() -> usize {
    std::ptr::addr_of!(ALTSTACK) as usize
}

/// SIGUSR1 handler: reports 'h' if it runs on the alternate stack with
/// SIGUSR1 and SIGUSR2 blocked (its sa_mask), 'x' otherwise.
extern "C" fn on_usr1(_sig: i32, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let here = 0u8;
    let sp = &here as *const u8 as usize;
    let on_altstack = (altstack_addr()..altstack_addr() + ALTSTACK_LEN).contains(&sp);
    let mut mask: u64 = 0;
    // SAFETY: reads the current mask into `mask`.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            0usize,
            &mut mask,
            8usize,
        )
    };
    let want = (1u64 << (libc::SIGUSR1 - 1)) | (1u64 << (libc::SIGUSR2 - 1));
    report(if on_altstack && mask & want == want {
        b'h'
    } else {
        b'x'
    });
}

/// The child: handler, altstack, itimer, umask, subreaper, patterned
/// memory; reports 'r' and spins (or blocks in read when INPUT_FD is set).
fn state_child() -> ! {
    // SAFETY: libc calls that are raw syscalls or pure, in the forked child.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as *const () as usize;
        sa.sa_flags = libc::SA_RESTART | libc::SA_ONSTACK | libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaddset(&mut sa.sa_mask, libc::SIGUSR2);
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
        let ss = libc::stack_t {
            ss_sp: altstack_addr() as *mut _,
            ss_flags: 0,
            ss_size: ALTSTACK_LEN,
        };
        libc::sigaltstack(&ss, std::ptr::null_mut());
        let it = libc::itimerval {
            it_interval: libc::timeval {
                tv_sec: 250,
                tv_usec: 0,
            },
            it_value: libc::timeval {
                tv_sec: 500,
                tv_usec: 0,
            },
        };
        libc::setitimer(libc::ITIMER_VIRTUAL, &it, std::ptr::null_mut());
        libc::umask(UMASK);
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
        let len = REGION_LEN.load(Ordering::Relaxed);
        let p = libc::mmap(
            REGION as *mut _,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        );
        if p as u64 != REGION {
            libc::_exit(10);
        }
        let words = std::slice::from_raw_parts_mut(p as *mut u64, len / 8);
        for (i, w) in words.iter_mut().enumerate() {
            *w = pattern(i as u64);
        }
        report(b'r');
        let input = INPUT_FD.load(Ordering::Relaxed);
        if input >= 0 {
            let mut byte = 0u8;
            let n = libc::read(input, (&mut byte as *mut u8).cast(), 1);
            report(if n == 1 && byte == b'i' { b'k' } else { b'e' });
        }
        loop {
            libc::syscall(libc::SYS_sched_yield);
        }
    }
}

/// A state child with its report pipe (and input pipe if `blocking`).
struct StateChild {
    child: Child,
    reports: File,
    input: Option<File>,
}

fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds that we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds from pipe2.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

impl StateChild {
    fn spawn(region_len: usize, blocking: bool) -> StateChild {
        let (reports, report_wr) = pipe();
        let (input_rd, input) = if blocking {
            let (r, w) = pipe();
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        let guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        REGION_LEN.store(region_len, Ordering::Relaxed);
        REPORT_FD.store(report_wr.as_raw_fd(), Ordering::Relaxed);
        INPUT_FD.store(
            input_rd.as_ref().map_or(-1, |f| f.as_raw_fd()),
            Ordering::Relaxed,
        );
        // The fds are O_CLOEXEC but fork keeps them; the child has no exec.
        let child = Child::spawn(state_child);
        drop(guard);
        let mut me = StateChild {
            child,
            reports,
            input,
        };
        assert_eq!(me.next_report(), b'r');
        me
    }

    /// The next byte the child reports, bounded by the test wait limit.
    fn next_report(&mut self) -> u8 {
        let mut pfd = libc::pollfd {
            fd: self.reports.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = crate::infect::test_child::WAIT_LIMIT.as_millis() as i32;
        // SAFETY: poll on one pollfd.
        assert_eq!(
            unsafe { libc::poll(&mut pfd, 1, ms) },
            1,
            "child {} did not report",
            self.child.pid
        );
        let mut b = [0u8];
        self.reports.read_exact(&mut b).unwrap();
        b[0]
    }

    fn stop(&self) {
        std::thread::sleep(std::time::Duration::from_millis(50));
        ptrace::seize(self.child.pid, ptrace::default_options()).unwrap();
        ptrace::interrupt(self.child.pid).unwrap();
        assert_eq!(self.child.wait(), Stop::Interrupt);
    }

    fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.pid))
            .unwrap()
            .count()
    }
}

fn temp_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("rcr-infect-{tag}-{}.img", std::process::id()))
}

#[test]
fn parasite_reads_task_state_dumps_pages_and_cures_cleanly() {
    const LEN: usize = 64 << 20;
    let mut sc = StateChild::spawn(LEN, false);
    let pid = sc.child.pid;
    sc.stop();
    let regs_before = ptrace::get_regs(pid).unwrap();
    let xstate_before = ptrace::get_xstate(pid).unwrap();
    let mask_before = ptrace::get_sigmask(pid).unwrap();
    let fds_before = sc.fd_count();

    let mut p = Parasite::infect(pid).unwrap();
    assert!(sc.child.maps().contains("/memfd:rcr-parasite"));

    let acts = p.get_sigactions().unwrap();
    let usr1 = acts.actions[libc::SIGUSR1 as usize - 1];
    assert_eq!(usr1.handler, on_usr1 as *const () as usize as u64);
    let flags = (libc::SA_RESTART | libc::SA_ONSTACK | libc::SA_SIGINFO) as u64;
    assert_eq!(usr1.flags & flags, flags);
    assert_eq!(usr1.mask, 1 << (libc::SIGUSR2 - 1));
    assert_eq!(acts.actions[libc::SIGUSR2 as usize - 1].handler, 0);
    assert_eq!(acts.actions[libc::SIGKILL as usize - 1], Default::default());

    let ss = p.get_sigaltstack().unwrap();
    assert_eq!(
        (ss.sp, ss.size, ss.flags),
        (altstack_addr() as u64, ALTSTACK_LEN as u64, 0)
    );

    let it = p.get_itimers().unwrap();
    assert_eq!((it.virt.interval.sec, it.virt.interval.usec), (250, 0));
    assert!(
        it.virt.value.sec > 400 && it.virt.value.sec <= 500,
        "{:?}",
        it.virt
    );
    assert_eq!(it.real.value, Default::default());

    let misc = p.get_misc().unwrap();
    assert_eq!(misc.umask, UMASK as i64);
    assert_eq!(misc.pdeathsig, libc::SIGKILL as i64);
    assert_eq!(misc.child_subreaper, 1);
    assert_eq!(misc.dumpable, 1);
    assert_eq!(misc.no_new_privs, 0);
    assert_eq!(misc.cpuid_enabled, 1);
    assert!(misc.brk > 0 && misc.clear_child_tid > 0, "{misc:?}");
    let personality = std::fs::read_to_string(format!("/proc/{pid}/personality")).unwrap();
    assert_eq!(
        misc.personality,
        i64::from_str_radix(personality.trim(), 16).unwrap()
    );

    // Pages: one split page (unaligned iovecs) then page-sized iovecs, more
    // than fit one command, written after a 4 KiB gap in the file.
    let mut iovs = vec![(REGION, 100), (REGION + 100, 4096 - 100)];
    iovs.extend((1..LEN as u64 / 4096).map(|i| (REGION + i * 4096, 4096)));
    let path = temp_path("pages");
    let out = File::create(&path).unwrap();
    assert_eq!(p.dump_pages(&iovs, &out, 4096).unwrap(), LEN as u64);
    let data = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(data.len(), 4096 + LEN);
    assert!(data[..4096].iter().all(|&b| b == 0));
    for (i, w) in data[4096..].chunks_exact(8).enumerate() {
        assert_eq!(
            u64::from_ne_bytes(w.try_into().unwrap()),
            pattern(i as u64),
            "word {i}"
        );
    }

    p.cure().unwrap();
    assert_eq!(ptrace::get_regs(pid).unwrap(), regs_before);
    assert_eq!(ptrace::get_xstate(pid).unwrap(), xstate_before);
    assert_eq!(ptrace::get_sigmask(pid).unwrap(), mask_before);
    assert!(!sc.child.maps().contains("rcr-parasite"));
    assert_eq!(sc.fd_count(), fds_before);

    sc.child.detach_and_check_alive();
    // SAFETY: signal our own child.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    assert_eq!(sc.next_report(), b'h');
}

#[test]
fn parasite_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<Parasite>();
}

#[test]
fn task_blocked_in_read_continues_after_cure() {
    let mut sc = StateChild::spawn(4096, true);
    let pid = sc.child.pid;
    sc.stop();
    assert_eq!(
        ptrace::get_regs(pid).unwrap().orig_rax,
        libc::SYS_read as u64
    );
    let mut p = Parasite::infect(pid).unwrap();
    assert_eq!(p.get_misc().unwrap().umask, UMASK as i64);
    p.cure().unwrap();
    sc.child.detach_and_check_alive();
    use std::io::Write;
    sc.input.as_mut().unwrap().write_all(b"i").unwrap();
    assert_eq!(sc.next_report(), b'k');
}

#[test]
fn unreadable_pages_name_their_address_and_the_parasite_goes_on() {
    let sc = StateChild::spawn(4096, false);
    let pid = sc.child.pid;
    sc.stop();
    let mut p = Parasite::infect(pid).unwrap();
    let out = File::create(temp_path("efault")).unwrap();
    let bad = 0x1000_0000u64;
    let err = p
        .dump_pages(&[(REGION, 4096), (bad, 4096)], &out, 0)
        .unwrap_err();
    std::fs::remove_file(temp_path("efault")).unwrap();
    assert!(
        matches!(err, InfectError::Unspliceable { addr, .. } if addr == bad),
        "{err}"
    );
    assert_eq!(p.get_misc().unwrap().umask, UMASK as i64);
    p.cure().unwrap();
    sc.child.detach_and_check_alive();
}

#[test]
fn dropping_an_uncured_parasite_restores_the_task() {
    let mut sc = StateChild::spawn(4096, false);
    let pid = sc.child.pid;
    sc.stop();
    let regs_before = ptrace::get_regs(pid).unwrap();
    drop(Parasite::infect(pid).unwrap());
    assert_eq!(ptrace::get_regs(pid).unwrap(), regs_before);
    assert!(!sc.child.maps().contains("rcr-parasite"));
    sc.child.detach_and_check_alive();
    // SAFETY: signal our own child.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    assert_eq!(sc.next_report(), b'h');
}

/// Rounds of [`checking_loop`]; the test reads the child's copy.
static ROUNDS: AtomicU64 = AtomicU64::new(0);
const CHECK_R12: u64 = 0x0123_4567_89ab_cdef;
const CHECK_R13: u64 = 0xfedc_ba98_7654_3210;
/// Exit status of a checking child that found a register changed or a
/// syscall failed.
const CHECK_FAILED: i32 = 7;
/// Blocked by the checking child, so its mask differs from the parasite's.
const CHILD_BLOCKED: u64 = 1 << (libc::SIGUSR2 - 1);

/// Sets SIGPIPE to its default action (the harness ignores it, as Rust
/// programs do), blocks SIGUSR2, then loops: syscall `nr` (`rdi` = a 5 ms timespec,
/// `rsi` = 0), check that it returned 0 and that r12, r13, xmm5 and the
/// upper half of ymm5 still hold what was put there, count a round. Exits
/// with [`CHECK_FAILED`] on any difference.
fn checking_loop(nr: i64) -> ! {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 5_000_000,
    };
    // SAFETY: raw syscalls and register-only code in the forked child; the
    // loop only writes ROUNDS.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            &CHILD_BLOCKED,
            0usize,
            8usize,
        );
        asm!(
            "vmovq xmm5, r12",
            "vinsertf128 ymm5, ymm5, xmm5, 1",
            "2:",
            "mov rax, r15",
            "mov rdi, r14",
            "xor esi, esi",
            "syscall",
            "test rax, rax",
            "jnz 3f",
            "mov rax, {r13}",
            "cmp r13, rax",
            "jne 3f",
            "vmovq rax, xmm5",
            "cmp rax, r12",
            "jne 3f",
            "vextractf128 xmm6, ymm5, 1",
            "vmovq rax, xmm6",
            "cmp rax, r12",
            "jne 3f",
            "lock inc qword ptr [rip + {rounds}]",
            "jmp 2b",
            "3:",
            "mov edi, {failed}",
            "mov eax, {exit_group}",
            "syscall",
            "ud2",
            r13 = const CHECK_R13,
            rounds = sym ROUNDS,
            failed = const CHECK_FAILED,
            exit_group = const libc::SYS_exit_group,
            in("r12") CHECK_R12,
            in("r13") CHECK_R13,
            in("r14") &ts,
            in("r15") nr,
            options(noreturn),
        )
    }
}

fn yielding_checker() -> ! {
    checking_loop(libc::SYS_sched_yield)
}

fn sleeping_checker() -> ! {
    checking_loop(libc::SYS_nanosleep)
}

/// The child's [`ROUNDS`].
fn rounds(pid: i32) -> u64 {
    let mut buf = [0u8; 8];
    let local = [std::io::IoSliceMut::new(&mut buf)];
    let remote = [nix::sys::uio::RemoteIoVec {
        base: std::ptr::addr_of!(ROUNDS) as usize,
        len: 8,
    }];
    nix::sys::uio::process_vm_readv(nix::unistd::Pid::from_raw(pid), &mut { local }, &remote)
        .unwrap();
    u64::from_ne_bytes(buf)
}

/// Waits (bounded) until the child has counted `more` rounds past now,
/// failing if it exits meanwhile.
fn assert_counts_on(pid: i32, more: u64) {
    let deadline = Instant::now() + crate::infect::test_child::WAIT_LIMIT;
    let mut target = None;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child, without blocking.
        let ret = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) };
        assert_eq!(ret, 0, "child {pid} ended, status {status:#x}");
        let now = rounds(pid);
        if now >= *target.get_or_insert(now + more) {
            return;
        }
        assert!(Instant::now() < deadline, "child {pid} stopped counting");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Waits (bounded) until the parasite has filled the pipe.
fn wait_until_full(pipe: &File) {
    let deadline = Instant::now() + crate::infect::test_child::WAIT_LIMIT;
    // SAFETY: F_GETPIPE_SZ on a pipe we hold.
    let size = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_GETPIPE_SZ) };
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        assert_eq!(
            unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut queued) },
            0
        );
        if queued == size {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pipe holds {queued} of {size} bytes"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// How far rcr got before it died.
#[derive(Clone, Copy)]
enum DeathAt {
    /// Between commands, the parasite waiting for the next.
    Idle,
    /// After FINI, before the cure.
    Fini,
    /// During DUMP_PAGES, the page pipe full and nobody draining it.
    DumpingPages,
}

/// Infects a checking child from a thread that then dies the way rcr would:
/// its fds close, and its exit makes the kernel detach the task (the
/// tracer is that thread). Checks the task goes on with its registers,
/// signal mask and fds as they were.
fn check_task_outlives_rcr(body: fn() -> !, death: DeathAt) {
    let child = Child::spawn(body);
    let pid = child.pid;
    assert_counts_on(pid, 1);
    let mask_before = crate::proc::status::read_status(pid).unwrap().sig_blk;
    assert_eq!(mask_before, CHILD_BLOCKED);
    let fds_before = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();

    std::thread::spawn(move || {
        ptrace::seize(pid, ptrace::default_options()).unwrap();
        ptrace::interrupt(pid).unwrap();
        let stop = ptrace::wait_stop_timeout(pid, crate::infect::test_child::WAIT_LIMIT);
        assert_eq!(stop.unwrap(), Some(Stop::Interrupt));
        // Never dropped, so never cured; rcr's view of the shared area
        // leaks with it, as with a killed rcr.
        let mut p = std::mem::ManuallyDrop::new(Parasite::infect(pid).unwrap());
        p.get_misc().unwrap();
        match death {
            DeathAt::Idle => {}
            DeathAt::Fini => {
                p.call(cmd::FINI, 0).unwrap();
            }
            DeathAt::DumpingPages => {
                // One page many times over: more than any pipe holds.
                let page = std::ptr::addr_of!(ROUNDS) as u64 & !(PAGE as u64 - 1);
                let count = 4096;
                for i in 0..count {
                    let iov = IoVec {
                        base: page,
                        len: PAGE as u64,
                    };
                    p.area.write(p.layout.data + i * size_of::<IoVec>(), &iov);
                }
                p.send(cmd::DUMP_PAGES, count as u64).unwrap();
                // rcr's read end goes first: the parasite must neither wake
                // up nor get SIGPIPE then.
                let pipe = p.pipe.take().unwrap();
                wait_until_full(&pipe);
                drop(pipe);
            }
        }
        p.sock = None;
        p.pipe = None;
    })
    .join()
    .unwrap();

    assert_counts_on(pid, 20);
    let status = crate::proc::status::read_status(pid).unwrap();
    assert_eq!(status.tracer_pid, 0);
    assert_eq!(status.sig_blk, mask_before);
    assert_eq!(
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count(),
        fds_before
    );
}

#[test]
fn spinning_task_runs_on_when_rcr_dies_between_commands() {
    check_task_outlives_rcr(yielding_checker, DeathAt::Idle);
}

#[test]
fn sleeping_task_sleeps_on_when_rcr_dies_after_fini() {
    check_task_outlives_rcr(sleeping_checker, DeathAt::Fini);
}

#[test]
fn task_runs_on_when_rcr_dies_mid_page_dump() {
    check_task_outlives_rcr(yielding_checker, DeathAt::DumpingPages);
}

/// Not a check: prints infect+cure latency and dump throughput
/// (`cargo test -- --ignored --nocapture measure`).
#[test]
#[ignore]
fn measure_infect_cure_and_dump_throughput() {
    const LEN: usize = 1 << 30;
    let sc = StateChild::spawn(LEN, false);
    let pid = sc.child.pid;
    sc.stop();
    let rounds = 20;
    let t = Instant::now();
    for _ in 0..rounds {
        Parasite::infect(pid).unwrap().cure().unwrap();
    }
    println!("infect+cure: {:?} per round", t.elapsed() / rounds);
    let mut task = RemoteTask::new(pid).unwrap();
    let t = Instant::now();
    for _ in 0..1000 {
        task.syscall(libc::SYS_getpid, [0; 6]).unwrap();
    }
    println!("remote syscall: {:?} each", t.elapsed() / 1000);
    task.restore_regs().unwrap();
    let mut p = Parasite::infect(pid).unwrap();
    let t = Instant::now();
    for _ in 0..1000 {
        p.get_misc().unwrap();
    }
    println!("parasite command round trip: {:?} each", t.elapsed() / 1000);
    for dir in ["/tmp", "/dev/shm"] {
        let path =
            std::path::Path::new(dir).join(format!("rcr-infect-bench-{}.img", std::process::id()));
        let whole = vec![(REGION, LEN as u64)];
        let pages: Vec<_> = (0..LEN as u64 / 4096)
            .map(|i| (REGION + i * 4096, 4096))
            .collect();
        for (label, iovs) in [
            ("one 1 GiB iovec", &whole),
            ("4 KiB iovecs", &pages),
            ("one 1 GiB iovec", &whole),
        ] {
            let out = File::create(&path).unwrap();
            let t = Instant::now();
            assert_eq!(p.dump_pages(iovs, &out, 0).unwrap(), LEN as u64);
            let secs = t.elapsed().as_secs_f64();
            println!(
                "dump_pages to {dir}, {label}: {:.2} GB/s ({secs:.3} s)",
                LEN as f64 / secs / 1e9
            );
        }
        std::fs::remove_file(&path).unwrap();
    }
    p.cure().unwrap();
    sc.child.detach_and_check_alive();
}
