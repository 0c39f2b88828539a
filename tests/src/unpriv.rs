//! A plain user for the tests that run rcr without root, and a copy of
//! `rcr` carrying file capabilities for it.

use crate::harness::{rcr_bin, TestDir};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A user made for one test and removed when dropped.
pub struct TestUser {
    pub uid: u32,
    name: String,
    /// Made by writing /etc/passwd ourselves (no useradd on this host).
    by_hand: bool,
}

/// The first uid, from 61000 on, that /etc/passwd does not name.
fn free_uid(passwd: &str, salt: u32) -> u32 {
    let taken: Vec<u32> = passwd
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect();
    (61000 + salt % 2000..)
        .find(|u| !taken.contains(u))
        .expect("a free uid")
}

fn has_useradd() -> bool {
    ["/usr/sbin/useradd", "/sbin/useradd", "/usr/bin/useradd"]
        .iter()
        .any(|p| Path::new(p).exists())
}

/// Runs a user-management command, retrying while another test holds the
/// passwd lock.
fn manage(program: &str, args: &[&str]) -> bool {
    for _ in 0..50 {
        let ok = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

impl TestUser {
    /// Makes a user with no home, no login shell and its own group.
    pub fn new(tag: &str) -> TestUser {
        let salt = std::process::id() * 7 + tag.len() as u32 * 131;
        let name = format!("rcrt{}{}", std::process::id() % 100_000, tag);
        let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
        let uid = free_uid(&passwd, salt);
        let by_hand = !has_useradd();
        if by_hand {
            let mut text = passwd;
            text.push_str(&format!("{name}:x:{uid}:{uid}::/nonexistent:/bin/false\n"));
            fs::write("/etc/passwd", text).expect("write /etc/passwd");
        } else {
            let id = uid.to_string();
            assert!(
                manage(
                    "useradd",
                    &["-M", "-N", "-u", &id, "-s", "/bin/false", &name]
                ),
                "useradd {name} failed"
            );
        }
        TestUser { uid, name, by_hand }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        if self.by_hand {
            let prefix = format!("{}:", self.name);
            let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
            let kept: String = passwd
                .lines()
                .filter(|l| !l.starts_with(&prefix))
                .map(|l| format!("{l}\n"))
                .collect();
            let _ = fs::write("/etc/passwd", kept);
        } else {
            manage("userdel", &[&self.name]);
        }
    }
}

/// The capabilities a user's rcr needs on this host:
/// `cap_checkpoint_restore`, and `cap_sys_ptrace` where Yama restricts
/// ptrace.
pub fn needed_caps() -> u64 {
    use rcr_engine::privilege::{CAP_CHECKPOINT_RESTORE, CAP_SYS_PTRACE};
    let yama = fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .map(|s| s.trim() != "0")
        .unwrap_or(false);
    1 << CAP_CHECKPOINT_RESTORE | if yama { 1 << CAP_SYS_PTRACE } else { 0 }
}

/// A copy of `rcr` in `dir` with file capabilities `caps` (written as the
/// `security.capability` attribute, as setcap would), runnable by anyone.
pub fn capped_rcr(dir: &TestDir, name: &str, caps: u64) -> PathBuf {
    capped_copy(&rcr_bin(), &dir.join(name), caps)
}

/// Copies the rcr binary `rcr` to `path` with file capabilities `caps`,
/// runnable by anyone; returns `path`.
pub fn capped_copy(rcr: &Path, path: &Path, caps: u64) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    fs::copy(rcr, path).expect("copy rcr");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod rcr");
    if caps != 0 {
        let value = rcr_engine::privilege::file_caps_xattr(caps);
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
        // SAFETY: setxattr reads the NUL-terminated strings and `value`.
        let rc = unsafe {
            libc::setxattr(
                c_path.as_ptr(),
                c"security.capability".as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(
            rc,
            0,
            "setxattr security.capability on {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    path.to_path_buf()
}
