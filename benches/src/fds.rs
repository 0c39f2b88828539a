//! Many descriptors: dump and restore time of one process holding N file
//! descriptors of mixed kinds, and the cost per descriptor.
//!
//! The workload opens, in equal shares, regular files (a few files opened
//! many times, so many open file descriptions share an inode), dups of them,
//! pipes with bytes in flight, eventfds with counts, armed timerfds, unix
//! socketpairs with queued data and memfds with content, and one epoll
//! instance watching a descriptor of each kind. Before the dump it notes
//! every descriptor's kind, flags and offset; once woken after restore it
//! checks them again, plus the data in every pipe, socket, eventfd and memfd,
//! that dups still share their offset, and that the epoll still reports its
//! registrations, and exits 0 only if everything matches.

use std::os::fd::RawFd;

/// Descriptors the workload keeps besides its N: stdio and its files' dir.
const SPARE: u64 = 64;

/// O_LARGEFILE as fdinfo shows it.
const KERNEL_O_LARGEFILE: u32 = 0o100000;

/// RLIMIT_NOFILE's soft limit raised to the hard one; returns that limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit on ourselves with a struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_max
}

/// How many descriptors a workload may hold here: `wanted`, or fewer when
/// the hard RLIMIT_NOFILE is lower. (A restore holds each open file
/// description in rcr above the task's numbers while it places them, so
/// `wanted` near the limit may not restore.)
pub fn scaled(wanted: usize) -> usize {
    wanted.min(raise_nofile().saturating_sub(SPARE) as usize)
}

fn sys(ret: i64, what: &str) -> i64 {
    assert!(ret >= 0, "{what}: {}", std::io::Error::last_os_error());
    ret
}

/// What the workload expects of one descriptor after restore.
#[derive(PartialEq, Debug)]
struct Seen {
    fd: RawFd,
    link_kind: String,
    flags: u32,
    pos: String,
}

fn seen(fd: RawFd) -> Seen {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Pipe and socket inode numbers change across a restore; their kind not.
    let link_kind = link.split(':').next().unwrap_or_default().to_owned();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    // Ends of pipes come back with the kernel's O_LARGEFILE (they are
    // opened again through /proc), which libc calls 0 on 64-bit.
    let flags = u32::from_str_radix(&field("flags:"), 8).unwrap_or(u32::MAX);
    Seen {
        fd,
        link_kind,
        flags: flags & !KERNEL_O_LARGEFILE,
        pos: field("pos:"),
    }
}

/// The bytes a pipe or socket numbered `i` holds.
fn payload(i: usize) -> Vec<u8> {
    format!("payload {i}").into_bytes()
}

fn write_all(fd: RawFd, data: &[u8]) {
    // SAFETY: writes our own buffer to our own descriptor.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    assert_eq!(n, data.len() as isize, "write to fd {fd}");
}

fn read_some(fd: RawFd, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    // SAFETY: reads into our own buffer from our own descriptor.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), len) };
    buf.truncate(n.max(0) as usize);
    buf
}

/// Descriptors whose content the workload checks after restore.
#[derive(Default)]
struct Made {
    /// (read end, pipe or socket number) holding `payload(number)`.
    queued: Vec<(RawFd, usize)>,
    /// (eventfd, count).
    eventfds: Vec<(RawFd, u64)>,
    /// (memfd, number): holds `payload(number)`, offset at 0.
    memfds: Vec<(RawFd, usize)>,
    /// (original, dup) of regular files.
    dups: Vec<(RawFd, RawFd)>,
    /// Descriptors of each kind for the epoll to watch.
    watched: Vec<RawFd>,
}

/// `--fds-workload N`: holds about N descriptors, then checks them.
pub fn fds_workload(n: usize) -> ! {
    crate::tree::prepare_workload();
    raise_nofile();
    let dir = std::env::temp_dir().join(format!("rcr-bench-fds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("workload dir");
    let paths: Vec<std::ffi::CString> = (0..16)
        .map(|i| {
            let p = dir.join(format!("f{i}"));
            std::fs::write(&p, vec![b'x'; 4096]).expect("workload file");
            std::ffi::CString::new(p.to_string_lossy().as_bytes()).expect("no NUL")
        })
        .collect();
    let share = n / 8;
    let mut made = Made::default();
    let mut fds: Vec<RawFd> = Vec::with_capacity(n);
    // SAFETY (whole block): plain descriptor syscalls on our own
    // descriptors and buffers; every result is checked.
    unsafe {
        for i in 0..share * 2 {
            let fd = sys(
                libc::open(paths[i % paths.len()].as_ptr(), libc::O_RDWR) as i64,
                "open",
            ) as RawFd;
            libc::lseek(fd, (i % 4096) as i64, libc::SEEK_SET);
            fds.push(fd);
            if i < share {
                let dup = sys(libc::dup(fd) as i64, "dup") as RawFd;
                made.dups.push((fd, dup));
                fds.push(dup);
            }
        }
        for i in 0..share / 2 {
            let mut p = [0; 2];
            sys(libc::pipe2(p.as_mut_ptr(), 0) as i64, "pipe2");
            write_all(p[1], &payload(i));
            made.queued.push((p[0], i));
            fds.extend(p);
        }
        for i in 0..share {
            let fd = sys(libc::eventfd(i as u32 + 1, 0) as i64, "eventfd") as RawFd;
            made.eventfds.push((fd, i as u64 + 1));
            fds.push(fd);
        }
        for _ in 0..share {
            let fd = sys(
                libc::timerfd_create(libc::CLOCK_MONOTONIC, 0) as i64,
                "timerfd_create",
            ) as RawFd;
            let spec = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 3600,
                    tv_nsec: 0,
                },
                it_value: libc::timespec {
                    tv_sec: 3600,
                    tv_nsec: 0,
                },
            };
            sys(
                libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) as i64,
                "timerfd_settime",
            );
            fds.push(fd);
        }
        for i in 0..share / 2 {
            let mut s = [0; 2];
            sys(
                libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, s.as_mut_ptr()) as i64,
                "socketpair",
            );
            write_all(s[0], &payload(i));
            made.queued.push((s[1], i));
            fds.extend(s);
        }
        for i in 0..share {
            let fd = sys(libc::memfd_create(c"bench".as_ptr(), 0) as i64, "memfd") as RawFd;
            write_all(fd, &payload(i));
            libc::lseek(fd, 0, libc::SEEK_SET);
            made.memfds.push((fd, i));
            fds.push(fd);
        }
    }
    made.watched = vec![
        made.queued[0].0,
        made.eventfds[0].0,
        made.queued[made.queued.len() - 1].0,
    ];
    // SAFETY: epoll_create1 and epoll_ctl on our own descriptors.
    let epfd = unsafe {
        let ep = sys(libc::epoll_create1(0) as i64, "epoll_create1") as RawFd;
        for &fd in &made.watched {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: fd as u64,
            };
            sys(
                libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) as i64,
                "epoll_ctl",
            );
        }
        ep
    };
    fds.push(epfd);
    let before: Vec<Seen> = fds.iter().map(|&fd| seen(fd)).collect();
    crate::tree::say_ready();
    crate::tree::wait_for_wake();
    let ok = check(&fds, &before, &made, epfd);
    let _ = std::fs::remove_dir_all(&dir);
    std::process::exit(if ok { 0 } else { 1 });
}

/// Whether every descriptor came back as it was; prints what differs.
fn check(fds: &[RawFd], before: &[Seen], made: &Made, epfd: RawFd) -> bool {
    let mut ok = true;
    let mut fail = |what: String| {
        eprintln!("fds workload: {what}");
        ok = false;
    };
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    // stdio, the listing's own descriptor, and ours.
    if open != fds.len() + 4 {
        fail(format!(
            "{open} descriptors open, expected {}",
            fds.len() + 4
        ));
    }
    for (fd, was) in fds.iter().zip(before) {
        let now = seen(*fd);
        if &now != was {
            fail(format!("{was:?} is now {now:?}"));
        }
    }
    for &(fd, i) in &made.queued {
        if read_some(fd, 64) != payload(i) {
            fail(format!("fd {fd} lost its queued bytes"));
        }
    }
    for &(fd, count) in &made.eventfds {
        if read_some(fd, 8) != count.to_ne_bytes() {
            fail(format!("eventfd {fd} lost its count {count}"));
        }
    }
    for &(fd, i) in &made.memfds {
        if read_some(fd, 64) != payload(i) {
            fail(format!("memfd {fd} lost its content"));
        }
    }
    for &(fd, dup) in &made.dups {
        // SAFETY: lseek on our own descriptors.
        let (a, b) = unsafe {
            let a = libc::lseek(fd, 7, libc::SEEK_CUR);
            (a, libc::lseek(dup, 0, libc::SEEK_CUR))
        };
        if a != b {
            fail(format!(
                "fd {fd} and its dup {dup} no longer share an offset"
            ));
        }
    }
    // The bytes were read above: only the last eventfd write makes one ready.
    // SAFETY: writes a count to our own eventfd, waits on our own epoll.
    let ready = unsafe {
        write_all(made.watched[1], &1u64.to_ne_bytes());
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
        libc::epoll_wait(epfd, evs.as_mut_ptr(), 4, 0) == 1 && evs[0].u64 == made.watched[1] as u64
    };
    if !ready {
        fail("the epoll no longer reports its eventfd".into());
    }
    ok
}

/// `--fds N`: dump and restore of the workload, median of `runs`.
pub fn fds(wanted: usize, runs: usize, base: &std::path::Path) {
    crate::tree::become_subreaper();
    let n = scaled(wanted);
    if n < wanted {
        println!(
            "note: hard RLIMIT_NOFILE is {} here (raising it needs CAP_SYS_RESOURCE); \
             measuring {n} descriptors instead of {wanted}",
            raise_nofile()
        );
    }
    let mut results = Vec::new();
    for run in 0..runs {
        let dir = base.join(format!("rcr-bench-fds-{}-{run}", std::process::id()));
        let args = ["--fds-workload".into(), n.to_string()];
        results.push(crate::tree::round_trip(
            &args,
            &dir,
            rcr_engine::PidChoice::Auto,
        ));
    }
    let median = |f: fn(&crate::tree::RoundTrip) -> f64| crate::median(results.iter().map(f));
    let (dump_s, restore_s) = (median(|r| r.dump_s), median(|r| r.restore_s));
    let freeze_s = median(|r| r.freeze_s);
    let per = |s: f64| s * 1e6 / n as f64;
    println!("rcr benchmark: 1 process, {n} file descriptors of mixed kinds, median of {runs}");
    times_table("per fd", [dump_s, freeze_s, restore_s], per);
    println!(
        "{}",
        serde_json::json!({
            "fds": n, "runs": runs, "dump_ms": dump_s * 1e3, "freeze_ms": freeze_s * 1e3,
            "restore_ms": restore_s * 1e3, "dump_us_per_fd": per(dump_s),
            "restore_us_per_fd": per(restore_s),
        })
    );
}

/// Dump, freeze and restore times, in total and per item (`per`).
pub fn times_table(per_what: &str, times: [f64; 3], per: impl Fn(f64) -> f64) {
    println!("{:<28}{:>12}{:>18}", "", "total", per_what);
    for (name, s) in ["dump", "freeze", "restore"].into_iter().zip(times) {
        println!(
            "{name:<28}{:>12}{:>18}",
            format!("{:.1} ms", s * 1e3),
            format!("{:.1} µs", per(s))
        );
    }
}
