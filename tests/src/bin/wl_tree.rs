//! A process tree across a checkpoint. The root (its own process group,
//! started by the harness) forks:
//! - A, which calls setsid() and forks A1, which gets a process group of
//!   its own inside A's session;
//! - B, which exits at once with status [`B_EXIT`] and stays a zombie: the
//!   root reaps it only in the check, where waitpid must give that status;
//! - C, in the root's group, which writes [`DATA_LEN`] bytes into a pipe to
//!   the root and fills a `MAP_SHARED | MAP_ANONYMOUS` region it shares
//!   with the root, both before the tree is ready.
//!
//! Every process records (pid, ppid, pgid, sid) once set up and compares
//! them after the wake (the root leaves out its ppid: a restored root is
//! the child of whoever restored it). Children talk to the root over one
//! report pipe, a line each ("<name> <pid> <text>", shorter than PIPE_BUF,
//! so lines never interleave): "ready" during setup, then their verdict.
//!
//! On the wake signal the root checks itself, B's zombie and exit status,
//! C's pipe data and the shared region; writes new data into the region's
//! first half; forwards the wake to A, A1 and C; collects their verdicts
//! (C checks it sees the root's write, then writes the second half, which
//! the root checks in turn: the region must still be shared both ways);
//! reaps A and C (A reaps A1) and writes the combined verdict.
//!
//! The workload is single-threaded, so the forked children may allocate.
//! Every wait has a deadline, so a broken tree gives a verdict, not a hang.

use rcr_tests::pattern;
use rcr_tests::workload::{self, getpid, last_err, Args, Verdict, WAKE_SIGNAL};
use std::collections::BTreeMap;
use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const B_EXIT: i32 = 7;
const DATA_LEN: usize = 20_000;
const DATA_SEED: u64 = 0xc0da;
/// Words in the region shared by the root and C (4 pages).
const REGION_WORDS: usize = 2048;
/// C fills the whole region with this stream before ready.
const REGION_SEED_C: u64 = 0x5ea1;
/// The root fills the first half with this one after the wake.
const REGION_SEED_ROOT: u64 = 0x5ea2;
/// C answers in the second half with this one.
const REGION_SEED_ACK: u64 = 0x5ea3;
/// How long one step (setup, collecting verdicts, reaping) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The process identifiers that must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ids {
    pid: i32,
    ppid: i32,
    pgid: i32,
    sid: i32,
}

impl Ids {
    fn now() -> Ids {
        // SAFETY: these calls have no preconditions.
        unsafe {
            Ids {
                pid: libc::getpid(),
                ppid: libc::getppid(),
                pgid: libc::getpgid(0),
                sid: libc::getsid(0),
            }
        }
    }

    /// Records in `v` how the current ids differ from `self`.
    fn check(&self, who: &str, v: &mut Verdict) {
        v.eq(&format!("{who}: (pid, ppid, pgid, sid)"), Ids::now(), *self);
    }
}

/// The state letter, ppid, pgid and sid of any process, from /proc.
fn proc_stat(pid: i32) -> Option<(char, i32, i32, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = f.next()?.chars().next()?;
    let mut num = || f.next()?.parse().ok();
    Some((state, num()?, num()?, num()?))
}

fn pipe() -> Result<(i32, i32), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array we own.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("pipe: {}", last_err()));
    }
    Ok((fds[0], fds[1]))
}

fn close(fd: i32) {
    // SAFETY: closes a descriptor this process owns and no longer uses.
    unsafe { libc::close(fd) };
}

fn set_nonblocking(fd: i32) -> Result<(), String> {
    // SAFETY: fcntl on a descriptor we own.
    let ok = unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        fl >= 0 && libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) == 0
    };
    if !ok {
        return Err(format!("O_NONBLOCK on fd {fd}: {}", last_err()));
    }
    Ok(())
}

fn write_all(fd: i32, mut buf: &[u8]) -> Result<(), String> {
    while !buf.is_empty() {
        // SAFETY: write from a buffer we own.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n <= 0 {
            return Err(format!("write to fd {fd}: {}", last_err()));
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Reads from a non-blocking `fd` into `buf` once data is there, waiting at
/// most until `deadline`; Ok(0) means end of file.
fn read_by(fd: i32, buf: &mut [u8], deadline: Instant) -> Result<usize, String> {
    loop {
        // SAFETY: read into a buffer we own.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = last_err();
        if err.raw_os_error() != Some(libc::EAGAIN) && err.raw_os_error() != Some(libc::EINTR) {
            return Err(format!("read fd {fd}: {err}"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("read fd {fd}: nothing after {STEP_TIMEOUT:?}"));
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own.
        unsafe { libc::poll(&mut p, 1, left.as_millis().min(1000) as i32) };
    }
}

/// The root's end of the report pipe, split into lines.
struct Reports {
    fd: i32,
    buf: Vec<u8>,
}

impl Reports {
    /// The next line as (name, pid, text).
    fn next(&mut self, deadline: Instant) -> Result<(String, i32, String), String> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line[..nl]).into_owned();
                let mut parts = line.splitn(3, ' ');
                let (Some(name), Some(pid), Some(text)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(format!("malformed report {line:?}"));
                };
                let pid = pid
                    .parse()
                    .map_err(|_| format!("malformed report {line:?}"))?;
                return Ok((name.to_string(), pid, text.to_string()));
            }
            let mut chunk = [0u8; 4096];
            match read_by(self.fd, &mut chunk, deadline)? {
                0 => return Err("report pipe closed: every child is gone".into()),
                n => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// One line from each of `names`; returns name → (pid, text).
    fn collect(
        &mut self,
        names: &[&str],
        deadline: Instant,
    ) -> Result<BTreeMap<String, (i32, String)>, String> {
        let mut got = BTreeMap::new();
        while got.len() < names.len() {
            let (name, pid, text) = self.next(deadline).map_err(|e| {
                let have: Vec<&String> = got.keys().collect();
                format!("{e} (heard from {have:?} of {names:?})")
            })?;
            if !names.contains(&name.as_str()) || got.contains_key(&name) {
                return Err(format!("unexpected report from {name} (pid {pid}): {text}"));
            }
            got.insert(name, (pid, text));
        }
        Ok(got)
    }
}

/// A child's end of the report pipe.
#[derive(Clone, Copy)]
struct Reporter {
    fd: i32,
}

impl Reporter {
    /// Writes "<name> <pid> <text>" as one line (cut short so it stays one
    /// atomic pipe write).
    fn send(&self, name: &str, text: &str) {
        let mut line = format!("{name} {} {text}", getpid());
        line.truncate(1000);
        line.push('\n');
        // Nothing to do if the root is gone: it would see nothing anyway.
        let _ = write_all(self.fd, line.as_bytes());
    }

    /// Sends the verdict; returns the child's exit code, 0 (OK) or 1 (FAIL).
    fn finish(&self, name: &str, v: Verdict) -> i32 {
        let ok = v.is_ok();
        let text = if ok {
            "OK".to_string()
        } else {
            format!("FAIL: {}", v.into_diffs().join("; "))
        };
        self.send(name, &text);
        if ok {
            0
        } else {
            1
        }
    }

    /// Setup failed: report it instead of "ready" and end the child.
    fn fail_setup(&self, name: &str, why: &str) -> ! {
        self.send(name, &format!("FAIL: setup: {why}"));
        std::process::exit(1)
    }
}

/// The region the root shares with C.
fn map_region() -> Result<&'static [AtomicU64], String> {
    let len = REGION_WORDS * 8;
    // SAFETY: a fresh shared anonymous mapping, never unmapped; AtomicU64
    // is the right view of memory another process writes.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(format!("mmap shared region: {}", last_err()));
        }
        Ok(std::slice::from_raw_parts(
            p.cast::<AtomicU64>(),
            REGION_WORDS,
        ))
    }
}

/// Which words of the shared region a step writes or checks.
#[derive(Clone, Copy)]
enum Part {
    Whole,
    FirstHalf,
    SecondHalf,
}

/// The words of `part`, and the index of the first one.
fn words(region: &[AtomicU64], part: Part) -> (&[AtomicU64], usize) {
    let half = REGION_WORDS / 2;
    match part {
        Part::Whole => (region, 0),
        Part::FirstHalf => (&region[..half], 0),
        Part::SecondHalf => (&region[half..], half),
    }
}

/// Word k of the region gets word k of the stream `seed`.
fn fill(region: &[AtomicU64], part: Part, seed: u64) {
    let (ws, first) = words(region, part);
    for (i, w) in ws.iter().enumerate() {
        w.store(pattern::word(seed, (first + i) as u64), Ordering::SeqCst);
    }
}

/// Records in `v` where `part` of the region differs from the stream `seed`.
fn check_words(what: &str, region: &[AtomicU64], part: Part, seed: u64, v: &mut Verdict) {
    let (ws, first) = words(region, part);
    let bad: Vec<usize> = (first..first + ws.len())
        .filter(|&k| region[k].load(Ordering::SeqCst) != pattern::word(seed, k as u64))
        .collect();
    if let Some(at) = bad.first() {
        v.fail(format!(
            "{what}: {} words differ, first at word {at}",
            bad.len()
        ));
    }
}

/// waitpid(pid) polled until `deadline`; None when it has not exited then.
fn reap(pid: i32, deadline: Instant) -> Result<Option<i32>, String> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our child with a status pointer we own.
        match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
            0 if Instant::now() >= deadline => return Ok(None),
            0 => std::thread::sleep(Duration::from_millis(10)),
            p if p == pid => return Ok(Some(status)),
            _ => return Err(format!("waitpid({pid}): {}", last_err())),
        }
    }
}

/// Records in `v` unless `who` (pid) exits normally with `code` by the
/// deadline.
fn expect_exit(who: &str, pid: i32, code: i32, deadline: Instant, v: &mut Verdict) {
    match reap(pid, deadline) {
        Ok(Some(status)) => v.eq(
            &format!("{who} (pid {pid}): exit status"),
            (libc::WIFEXITED(status), libc::WEXITSTATUS(status)),
            (true, code),
        ),
        Ok(None) => v.fail(format!(
            "{who} (pid {pid}): still running after {STEP_TIMEOUT:?}"
        )),
        Err(e) => v.fail(format!("{who}: {e}")),
    }
}

/// Records in `v` unless the ids are related as `want` says (a setup check).
fn expect_ids(who: &str, got: Ids, want: (i32, i32, i32), v: &mut Verdict) {
    v.eq(
        &format!("{who}: (ppid, pgid, sid) after setup"),
        (got.ppid, got.pgid, got.sid),
        want,
    );
}

/// A child's setup result: the ids, or why it failed.
fn setup_ids(who: &str, want: (i32, i32, i32)) -> Result<Ids, String> {
    let ids = Ids::now();
    let mut v = Verdict::new();
    expect_ids(who, ids, want, &mut v);
    if v.is_ok() {
        Ok(ids)
    } else {
        Err(v.into_diffs().join("; "))
    }
}

fn child_a(rep: Reporter, root: Ids) -> i32 {
    // SAFETY: setsid has no memory preconditions.
    if unsafe { libc::setsid() } < 0 {
        rep.fail_setup("A", &format!("setsid: {}", last_err()));
    }
    let me = getpid();
    let ids = setup_ids("A", (root.pid, me, me)).unwrap_or_else(|e| rep.fail_setup("A", &e));
    let a1 =
        workload::fork_child(|| child_a1(rep, ids)).unwrap_or_else(|e| rep.fail_setup("A", &e));
    // Both sides set A1's group, so it is set whichever runs first; the
    // child's own call may already have done it.
    // SAFETY: setpgid on our own child.
    unsafe { libc::setpgid(a1, a1) };
    rep.send("A", "ready");
    workload::wait_for_wake();
    let mut v = Verdict::new();
    ids.check("A", &mut v);
    expect_exit("A1", a1, 0, Instant::now() + STEP_TIMEOUT, &mut v);
    rep.finish("A", v)
}

fn child_a1(rep: Reporter, a: Ids) -> i32 {
    // SAFETY: setpgid on ourselves.
    if unsafe { libc::setpgid(0, 0) } != 0 {
        rep.fail_setup("A1", &format!("setpgid: {}", last_err()));
    }
    let me = getpid();
    let ids = setup_ids("A1", (a.pid, me, a.sid)).unwrap_or_else(|e| rep.fail_setup("A1", &e));
    rep.send("A1", "ready");
    workload::wait_for_wake();
    let mut v = Verdict::new();
    ids.check("A1", &mut v);
    rep.finish("A1", v)
}

fn child_b() -> i32 {
    B_EXIT
}

fn child_c(rep: Reporter, root: Ids, data_w: i32, region: &[AtomicU64]) -> i32 {
    let ids =
        setup_ids("C", (root.pid, root.pgid, root.sid)).unwrap_or_else(|e| rep.fail_setup("C", &e));
    fill(region, Part::Whole, REGION_SEED_C);
    let mut data = vec![0u8; DATA_LEN];
    pattern::fill(&mut data, DATA_SEED, 0);
    write_all(data_w, &data).unwrap_or_else(|e| rep.fail_setup("C", &e));
    rep.send("C", "ready");
    workload::wait_for_wake();
    let mut v = Verdict::new();
    ids.check("C", &mut v);
    check_words(
        "C: shared region's first half (the root's write)",
        region,
        Part::FirstHalf,
        REGION_SEED_ROOT,
        &mut v,
    );
    check_words(
        "C: shared region's second half (own write)",
        region,
        Part::SecondHalf,
        REGION_SEED_C,
        &mut v,
    );
    fill(region, Part::SecondHalf, REGION_SEED_ACK);
    rep.finish("C", v)
}

/// The root's view of its tree.
struct Tree {
    root: Ids,
    a: i32,
    a1: i32,
    b: i32,
    c: i32,
    reports: Reports,
    data_r: i32,
    region: &'static [AtomicU64],
}

/// The children, in the order of the report names used below.
const CHILDREN: [&str; 3] = ["A", "A1", "C"];

/// Forks the tree and waits until every child is ready and B a zombie.
/// `kids` collects every child pid as soon as it exists, so a failed setup
/// can end them.
fn build(kids: &mut Vec<i32>) -> Result<Tree, String> {
    let root = Ids::now();
    let (rep_r, rep_w) = pipe()?;
    let rep = Reporter { fd: rep_w };
    let a = workload::fork_child(|| child_a(rep, root))?;
    kids.push(a);
    let b = workload::fork_child(child_b)?;
    kids.push(b);
    // Made after A and B exist, so only the root and C share them.
    let region = map_region()?;
    let (data_r, data_w) = pipe()?;
    let c = workload::fork_child(|| {
        close(data_r);
        child_c(rep, root, data_w, region)
    })?;
    kids.push(c);
    close(rep_w);
    close(data_w);
    set_nonblocking(rep_r)?;
    set_nonblocking(data_r)?;

    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut reports = Reports {
        fd: rep_r,
        buf: Vec::new(),
    };
    let ready = reports.collect(&CHILDREN, deadline)?;
    let pid_of = |name: &str| ready.get(name).map_or(0, |r| r.0);
    let a1 = pid_of("A1");
    kids.push(a1);
    for (name, (pid, text)) in &ready {
        if text != "ready" {
            return Err(format!("{name} (pid {pid}): {text}"));
        }
    }
    if (pid_of("A"), pid_of("C")) != (a, c) {
        return Err(format!(
            "ready reports name pids {ready:?}, forked A {a}, C {c}"
        ));
    }
    while proc_stat(b).is_none_or(|s| s.0 != 'Z') {
        if Instant::now() >= deadline {
            return Err(format!("B (pid {b}) is no zombie: {:?}", proc_stat(b)));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Tree {
        root,
        a,
        a1,
        b,
        c,
        reports,
        data_r,
        region,
    })
}

/// Ends the children of a failed setup (A1 is known only once it reported).
fn end_children(kids: &[i32]) {
    for &pid in kids.iter().filter(|&&p| p > 0) {
        // SAFETY: kill a process this tree forked.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + STEP_TIMEOUT;
    for &pid in kids {
        let _ = reap(pid, deadline);
    }
}

/// B is still a zombie of ours in the root's group, and reaping it gives
/// its exit status.
fn check_b(t: &Tree, v: &mut Verdict) {
    match proc_stat(t.b) {
        Some((state, ppid, pgid, _)) => v.eq(
            &format!("B (pid {}): (state, ppid, pgid)", t.b),
            (state, ppid, pgid),
            ('Z', t.root.pid, t.root.pgid),
        ),
        None => v.fail(format!("B (pid {}): no such process", t.b)),
    }
    // A zombie is reaped at once; anything else would not end by itself.
    expect_exit("B", t.b, B_EXIT, Instant::now(), v);
}

/// C's bytes are all in the pipe, and nothing more.
fn check_c_pipe(t: &Tree, v: &mut Verdict) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut data = vec![0u8; DATA_LEN];
    let mut have = 0;
    while have < DATA_LEN {
        match read_by(t.data_r, &mut data[have..], deadline) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) => {
                v.fail(format!("C's pipe: {e}"));
                break;
            }
        }
    }
    v.eq("C's pipe: bytes read", have, DATA_LEN);
    if let Some((at, count)) = pattern::mismatches(&data[..have], DATA_SEED, 0) {
        v.fail(format!("C's pipe: {count} bytes differ, first at {at}"));
    }
    let mut extra = [0u8; 16];
    // SAFETY: read into a buffer we own from our non-blocking pipe end.
    let n = unsafe { libc::read(t.data_r, extra.as_mut_ptr().cast(), extra.len()) };
    let err = last_err().raw_os_error();
    v.check(n == -1 && err == Some(libc::EAGAIN), || {
        format!("C's pipe after the data: read gave {n} (errno {err:?}), want EAGAIN")
    });
}

fn check(mut t: Tree) -> Verdict {
    let mut v = Verdict::new();
    let (now, was) = (Ids::now(), t.root);
    v.eq(
        "root: (pid, pgid, sid)",
        (now.pid, now.pgid, now.sid),
        (was.pid, was.pgid, was.sid),
    );
    check_b(&t, &mut v);
    check_c_pipe(&t, &mut v);
    check_words(
        "root: shared region (C's write)",
        t.region,
        Part::Whole,
        REGION_SEED_C,
        &mut v,
    );
    fill(t.region, Part::FirstHalf, REGION_SEED_ROOT);

    let pids = [t.a, t.a1, t.c];
    for (name, pid) in CHILDREN.iter().zip(pids) {
        // SAFETY: kill a process of this tree.
        if unsafe { libc::kill(pid, WAKE_SIGNAL) } != 0 {
            v.fail(format!("waking {name} (pid {pid}): {}", last_err()));
        }
    }
    let deadline = Instant::now() + STEP_TIMEOUT;
    match t.reports.collect(&CHILDREN, deadline) {
        Ok(verdicts) => {
            for (name, pid) in CHILDREN.iter().zip(pids) {
                let (got_pid, text) = &verdicts[*name];
                v.eq(&format!("{name}: pid in its report"), *got_pid, pid);
                v.check(text == "OK", || format!("{name} (pid {pid}) says {text}"));
            }
        }
        Err(e) => v.fail(format!("collecting verdicts: {e}")),
    }
    check_words(
        "root: shared region's second half (C's answer)",
        t.region,
        Part::SecondHalf,
        REGION_SEED_ACK,
        &mut v,
    );
    expect_exit("A", t.a, 0, deadline, &mut v);
    expect_exit("C", t.c, 0, deadline, &mut v);
    // SAFETY: waitpid with WNOHANG and a null status pointer.
    let rc = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
    v.check(rc == -1, || {
        format!("children left after reaping all: waitpid gave {rc}")
    });
    v
}

fn main() {
    let args = Args::init();
    let mut kids = Vec::new();
    let tree = build(&mut kids).unwrap_or_else(|e| {
        end_children(&kids);
        args.fail_early(&e)
    });
    args.signal_ready_with_descendants(&[tree.a, tree.a1, tree.b, tree.c]);
    workload::wait_for_wake();
    let v = check(tree);
    args.finish(v)
}
