//! inotify, dump and restore side by side.
//!
//! fdinfo lists each watch: its wd, mask, and the watched inode with a file
//! handle. rcr opens the inode through the handle (`open_by_handle_at`, which
//! needs CAP_DAC_READ_SEARCH) and reads its path back, checking that the path
//! still names that inode. Restore adds the watches in wd order; the kernel
//! hands out wds increasing, so a gap left by a removed watch is skipped by
//! adding and removing a watch until the next wd is the saved one (the
//! IN_IGNORED events that leaves are read away). Unread events are refused.

use super::files::{bad_fdinfo, check, owned, restore_err};
use crate::error::{Error, Result};
use crate::proc::fdinfo::FdInfo;
use rcr_images::pb;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// One `inotify wd:..` line of fdinfo.
#[derive(Debug, PartialEq, Eq)]
struct WatchLine {
    wd: i32,
    ino: u64,
    /// The superblock's device in the kernel's encoding (major << 20 | minor).
    sdev: u64,
    mask: u32,
    handle_type: i32,
    handle: Vec<u8>,
}

fn parse_watch(text: &str) -> Option<WatchLine> {
    let field = |key: &str| {
        text.split_ascii_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix(':'))
    };
    let hex = |key: &str| u64::from_str_radix(field(key)?, 16).ok();
    let handle_hex = field("f_handle")?;
    let handle = (0..handle_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(handle_hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    let bytes: usize = field("fhandle-bytes").and_then(|v| usize::from_str_radix(v, 16).ok())?;
    if bytes != handle.len() {
        return None;
    }
    Some(WatchLine {
        wd: field("wd")?.parse().ok()?,
        ino: hex("ino")?,
        sdev: hex("sdev")?,
        mask: hex("mask")? as u32,
        handle_type: field("fhandle-type")?.parse().ok()?,
        handle,
    })
}

/// The user-space `dev_t` of a kernel-encoded device number.
fn user_dev(sdev: u64) -> u64 {
    libc::makedev((sdev >> 20) as u32, (sdev & 0xf_ffff) as u32)
}

/// The mount point of a mount of device `dev`, from rcr's mountinfo.
fn mount_of(dev: u64) -> Option<String> {
    let want = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let mut words = l.split(' ');
        (words.nth(2)? == want).then_some(())?;
        let point = words.nth(1)?;
        Some(point.replace("\\040", " ").replace("\\011", "\t"))
    })
}

/// The path of the inode a watch names, checked to name it still.
fn watch_path(pid: i32, fd: i32, w: &WatchLine) -> Result<String> {
    let gone = |why: String| Error::Unsupported {
        pid,
        what: format!(
            "fd {fd}: inotify watch {} whose inode {} {why}",
            w.wd, w.ino
        ),
    };
    let dev = user_dev(w.sdev);
    let mount =
        mount_of(dev).ok_or_else(|| gone(format!("is on device {dev:#x}, not mounted here")))?;
    let mount = std::fs::File::open(&mount).map_err(|e| Error::io(&mount, e))?;
    let mut handle = Vec::with_capacity(8 + w.handle.len());
    handle.extend_from_slice(&(w.handle.len() as u32).to_ne_bytes());
    handle.extend_from_slice(&w.handle_type.to_ne_bytes());
    handle.extend_from_slice(&w.handle);
    // SAFETY: the buffer is a `struct file_handle` with handle_bytes bytes
    // of handle after its 8-byte header.
    let raw = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            handle.as_mut_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        let errno = nix::errno::Errno::last();
        if errno == nix::errno::Errno::EPERM {
            return Err(gone(
                "cannot be opened by handle without CAP_DAC_READ_SEARCH".into(),
            ));
        }
        return Err(gone(format!(
            "cannot be opened by its handle ({errno}): gone?"
        )));
    }
    // SAFETY: a descriptor the kernel just gave us.
    let inode = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let link = std::fs::read_link(format!("/proc/self/fd/{}", inode.as_raw_fd()))
        .map_err(|e| gone(format!("has no path ({e})")))?;
    let path = link.to_string_lossy().into_owned();
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.dev() == dev && m.ino() == w.ino => Ok(path),
        _ => Err(gone(format!(
            "is no longer reachable by a path (last {path})"
        ))),
    }
}

/// Reads the watches of fd `fd`; refuses unread events and watches whose
/// inode has no path.
pub fn dump_inotify(pid: i32, fd: i32, info: &FdInfo, flags: u32) -> Result<pb::Inotify> {
    let own = super::files::task_fd(pid, fd)?;
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int we own.
    if unsafe { libc::ioctl(own.as_raw_fd(), libc::FIONREAD, &mut unread) } < 0 {
        return Err(Error::sys(
            pid,
            "FIONREAD on an inotify descriptor",
            nix::errno::Errno::last(),
        ));
    }
    if unread > 0 {
        return Err(Error::Unsupported {
            pid,
            what: format!("inotify fd {fd} with {unread} bytes of unread events"),
        });
    }
    let mut watches = Vec::new();
    for (_, text) in info.extra.iter().filter(|(k, _)| k == "inotify") {
        let w = parse_watch(text).ok_or_else(|| bad_fdinfo(pid, fd, "inotify watch"))?;
        watches.push(pb::InotifyWatch {
            wd: w.wd,
            mask: w.mask,
            path: watch_path(pid, fd, &w)?,
            dev: user_dev(w.sdev),
            ino: w.ino,
        });
    }
    watches.sort_by_key(|w| w.wd);
    Ok(pb::Inotify { flags, watches })
}

/// A new inotify instance with the saved watches under their saved wds.
pub fn restore_inotify(i: &pb::Inotify) -> Result<OwnedFd> {
    let flags = libc::IN_CLOEXEC | (i.flags as i32 & libc::O_NONBLOCK);
    // SAFETY: inotify_init1 takes plain integers.
    let fd = owned(unsafe { libc::inotify_init1(flags) }, "inotify_init1")?;
    let mut skipped = false;
    for w in &i.watches {
        let path = CString::new(w.path.as_str())
            .map_err(|_| Error::Preflight(format!("inotify path {} holds a NUL byte", w.path)))?;
        loop {
            // SAFETY: adds a watch by a NUL-terminated path. IN_DONT_FOLLOW:
            // the saved path names the watched inode itself.
            let got = unsafe {
                libc::inotify_add_watch(
                    fd.as_raw_fd(),
                    path.as_ptr(),
                    w.mask | libc::IN_DONT_FOLLOW,
                )
            };
            if got < 0 {
                return Err(restore_err(&format!(
                    "inotify watch {} on {}",
                    w.wd, w.path
                )));
            }
            if got == w.wd {
                break;
            }
            if got > w.wd {
                return Err(Error::Preflight(format!(
                    "inotify watch {} on {} came back as wd {got}",
                    w.wd, w.path
                )));
            }
            // SAFETY: removes the watch just added.
            check(
                unsafe { libc::inotify_rm_watch(fd.as_raw_fd(), got) } as i64,
                "inotify_rm_watch",
            )?;
            skipped = true;
        }
    }
    if skipped {
        drain(&fd)?;
    }
    Ok(fd)
}

/// Reads away the events queued on `fd` (the IN_IGNORED of skipped wds).
fn drain(fd: &OwnedFd) -> Result<()> {
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int we own.
    check(
        unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut queued) } as i64,
        "FIONREAD on an inotify descriptor",
    )?;
    let mut buf = vec![0u8; queued as usize];
    if !buf.is_empty() {
        // SAFETY: reads at most buf.len() bytes into it; that many are queued.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        check(n as i64, "reading skipped inotify events")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_watch_lines() {
        // From the development machine: a watch on /tmp/lockexp (ext4 on 254:0).
        let w = parse_watch("wd:1 ino:a1c07e sdev:fe00000 mask:102 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:7ec0a100948bea16").unwrap();
        assert_eq!(
            w,
            WatchLine {
                wd: 1,
                ino: 0xa1c07e,
                sdev: 0xfe00000,
                mask: 0x102,
                handle_type: 1,
                handle: vec![0x7e, 0xc0, 0xa1, 0x00, 0x94, 0x8b, 0xea, 0x16],
            }
        );
        assert_eq!(user_dev(w.sdev), libc::makedev(254, 0));
        assert_eq!(
            parse_watch("wd:1 ino:2 sdev:3 mask:4 fhandle-bytes:8 fhandle-type:1 f_handle:00"),
            None
        );
    }

    #[test]
    fn watches_come_back_with_their_wds() {
        let dir = std::env::temp_dir().join(format!("rcr-inotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, b"").unwrap();
        let watch = |wd, path: &std::path::Path| pb::InotifyWatch {
            wd,
            mask: libc::IN_MODIFY,
            path: path.to_string_lossy().into_owned(),
            ..Default::default()
        };
        let saved = pb::Inotify {
            flags: libc::O_NONBLOCK as u32,
            watches: vec![watch(2, &dir), watch(5, &file)],
        };
        let fd = restore_inotify(&saved).unwrap();
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
        assert!(info.contains("wd:2 ") && info.contains("wd:5 "), "{info}");
        std::fs::write(&file, b"x").unwrap();
        let mut buf = [0u8; 256];
        // SAFETY: reads into a buffer we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n >= 16, "no event after the write");
        let wd = i32::from_ne_bytes(buf[..4].try_into().unwrap());
        assert!(wd == 2 || wd == 5, "event from wd {wd}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
