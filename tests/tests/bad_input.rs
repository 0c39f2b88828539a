//! What rcr must refuse, and how: a non-zero exit, one "rcr: " line naming
//! the object, the target untouched, and nothing left behind (no image, no
//! process with the pid of a refused restore).

use rcr_tests::harness::{
    assert_no_process, copy_dir, dump, list_dir, proc_state, restore, run_rcr, run_rcr_with,
    RcrRun, TestDir, Workload, RCR_TIMEOUT,
};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const IDLE: &str = env!("CARGO_BIN_EXE_wl_idle");
const SHMAP: &str = env!("CARGO_BIN_EXE_wl_shmap");
const FANOTIFY: &str = env!("CARGO_BIN_EXE_wl_fanotify");
/// The fd wl_fanotify keeps its fanotify group at.
const FANOTIFY_FD: i32 = 9;

fn run_dump(dir: &TestDir, pid: i32, img: &Path) -> RcrRun {
    let pid = pid.to_string();
    run_rcr(
        dir,
        &[
            "dump".as_ref(),
            "--tree".as_ref(),
            pid.as_ref(),
            "-D".as_ref(),
            img.as_os_str(),
        ],
    )
}

/// True when `n` appears in `text` as a whole number.
fn mentions_number(text: &str, n: i32) -> bool {
    let n = n.to_string();
    text.split(|c: char| !c.is_ascii_digit()).any(|t| t == n)
}

fn assert_mentions_pid(run: &RcrRun, pid: i32) {
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("rcr: "))
        .unwrap_or("");
    assert!(
        mentions_number(line, pid),
        "the error should name pid {pid}: {run:?}"
    );
}

/// A refused dump writes no image: the dir is absent or empty, and no
/// other new entry (a temp image dir) appeared next to it.
fn assert_no_image_left(dir: &TestDir, img: &Path, entries_before: &[String]) {
    let left = list_dir(img);
    assert!(
        left.is_empty(),
        "a refused dump left files in {}: {left:?}",
        img.display()
    );
    let img_name = img.file_name().unwrap().to_string_lossy().into_owned();
    let new: Vec<_> = dir
        .entries()
        .into_iter()
        .filter(|e| !entries_before.contains(e) && *e != img_name)
        .collect();
    assert!(
        new.is_empty(),
        "a refused dump left {new:?} in {}",
        dir.path().display()
    );
}

#[test]
fn dump_of_a_pid_that_does_not_exist_fails() {
    let dir = TestDir::new("bad-nopid");
    // A pid that just became free: ours, exited and reaped.
    let child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id() as i32;
    let mut child = child;
    child.wait().expect("wait true");
    assert_no_process(pid, "the reaped child");

    let before = dir.entries();
    let img = dir.join("img");
    let run = run_dump(&dir, pid, &img);
    run.assert_failure(&[]);
    assert_mentions_pid(&run, pid);
    assert_no_image_left(&dir, &img, &before);
}

#[test]
fn dump_of_a_kernel_thread_fails() {
    let comm = fs::read_to_string("/proc/2/comm").unwrap_or_default();
    if comm.trim() != "kthreadd" {
        eprintln!("skipped: pid 2 is {comm:?}, not kthreadd");
        return;
    }
    let dir = TestDir::new("bad-kthread");
    let before = dir.entries();
    let img = dir.join("img");
    let run = run_dump(&dir, 2, &img);
    run.assert_failure(&[]);
    assert_mentions_pid(&run, 2);
    assert_no_image_left(&dir, &img, &before);
    assert!(proc_state(2).is_some(), "kthreadd is gone?");
}

#[test]
fn unprivileged_dump_of_a_root_process_fails_and_leaves_it_running() {
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(setpriv) = setpriv else {
        eprintln!("skipped: setpriv (util-linux) is not installed");
        return;
    };
    let dir = TestDir::new("bad-unpriv");
    let mut w = Workload::spawn(&dir, Path::new(IDLE), &[], &[]);
    w.wait_ready();
    // A place the unprivileged rcr may write to, so the refusal is about
    // the target, not about the image dir.
    let out = dir.join("unpriv");
    fs::create_dir(&out).expect("mkdir unpriv");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod test dir");
    fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).expect("chmod unpriv");
    let img = out.join("img");
    let pid = w.pid.to_string();
    let wrapper: Vec<&OsStr> = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        .into_iter()
        .map(OsStr::new)
        .collect();
    let run = run_rcr_with(
        &dir,
        &wrapper,
        &[
            "dump".as_ref(),
            "--tree".as_ref(),
            pid.as_ref(),
            "-D".as_ref(),
            img.as_os_str(),
        ],
        RCR_TIMEOUT,
    );
    assert!(
        !matches!(run.status.code(), Some(126 | 127)),
        "setpriv could not run rcr as uid 65534 (is the binary readable by all?): {run:?}"
    );
    run.assert_failure(&[]);
    assert_mentions_pid(&run, w.pid);
    assert!(
        list_dir(&img).is_empty(),
        "refused dump left files: {:?}",
        list_dir(&img)
    );
    assert_eq!(
        list_dir(&out).into_iter().filter(|e| e != "img").count(),
        0,
        "refused dump left files in {out:?}"
    );
    // The target was not touched.
    assert!(w.is_running(), "the workload died after a refused dump");
    w.finish_ok();
}

#[test]
fn dump_of_an_unsupported_fd_is_refused_and_leaves_the_process_untouched() {
    let dir = TestDir::new("bad-fanotify");
    let mut w = Workload::spawn(&dir, Path::new(FANOTIFY), &[], &[]);
    w.wait_ready();
    let before = dir.entries();
    let img = dir.join("img");
    let run = run_dump(&dir, w.pid, &img);
    run.assert_failure(&[&format!("fd {FANOTIFY_FD}"), "fanotify"]);
    assert_no_image_left(&dir, &img, &before);
    assert!(w.is_running(), "the workload died after a refused dump");
    w.finish_ok();
}

#[test]
fn restore_from_a_missing_dir_fails() {
    let dir = TestDir::new("bad-nodir");
    let img = dir.join("no-such-image");
    let run = run_rcr(&dir, &["restore".as_ref(), "-D".as_ref(), img.as_os_str()]);
    run.assert_failure(&[&img.to_string_lossy()]);
    assert!(!img.exists(), "restore created {}", img.display());
}

/// Dumps wl_idle, keeps a pristine copy, corrupts the image, and expects
/// the restore to be refused with `keyword` before any process exists;
/// then the pristine copy restores, so the refusal was about the fault.
fn corrupted_image_is_refused(name: &str, keyword: &str, corrupt: impl FnOnce(&Path, i32)) {
    corrupted_image_of_is_refused((IDLE, &[]), name, keyword, corrupt);
}

/// [`corrupted_image_is_refused`] for workload `wl` with its parameters.
fn corrupted_image_of_is_refused(
    (wl, params): (&str, &[&str]),
    name: &str,
    keyword: &str,
    corrupt: impl FnOnce(&Path, i32),
) {
    let dir = TestDir::new(name);
    let mut w = Workload::spawn(&dir, Path::new(wl), &[], params);
    w.wait_ready();
    let img = dir.join("img");
    dump(&dir, &mut w, &img, &[]);
    let pristine = dir.join("pristine");
    copy_dir(&img, &pristine);
    corrupt(&img, w.pid);

    let run = run_rcr(&dir, &["restore".as_ref(), "-D".as_ref(), img.as_os_str()]);
    run.assert_failure(&[keyword]);
    assert_no_process(w.pid, "after a refused restore");

    restore(&dir, &mut w, &pristine);
    w.finish_ok();
}

fn image_file(img: &Path, name: &str) -> PathBuf {
    let p = img.join(name);
    assert!(
        p.is_file(),
        "no {name} in the image; it holds {:?}",
        list_dir(img)
    );
    p
}

#[test]
fn truncated_core_image_is_refused() {
    corrupted_image_is_refused("bad-truncated", "truncated", |img, pid| {
        let p = image_file(img, &format!("core-{pid}.img"));
        let len = fs::metadata(&p).expect("stat core image").len();
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .expect("open core image");
        f.set_len(len / 2).expect("truncate core image");
    });
}

#[test]
fn flipped_byte_in_pages_is_refused() {
    corrupted_image_is_refused("bad-checksum", "checksum", |img, pid| {
        let p = image_file(img, &format!("pages-{pid}.img"));
        let len = fs::metadata(&p).expect("stat pages image").len();
        assert!(
            len > 4096,
            "pages image has no data past its header ({len} bytes)"
        );
        flip_byte(&p, 4096 + (len - 4096) / 2);
    });
}

#[test]
fn flipped_byte_in_shared_memory_data_is_refused() {
    corrupted_image_of_is_refused((SHMAP, &["anon"]), "bad-objdata", "checksum", |img, _| {
        let p = image_file(img, "objdata.img");
        // The first run starts right after the header page.
        flip_byte(&p, 4096);
    });
}

fn flip_byte(p: &Path, at: u64) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .expect("open image");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read image byte");
    b[0] ^= 0xff;
    f.write_all_at(&b, at).expect("write image byte");
}

#[test]
fn newer_format_version_is_refused() {
    corrupted_image_is_refused("bad-version", "newer", |img, _| {
        let p = image_file(img, "inventory.img");
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .expect("open inventory");
        f.write_all_at(&999u32.to_le_bytes(), 8)
            .expect("write version");
    });
}
