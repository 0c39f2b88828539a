//! File descriptors: the `/proc/PID/fd` listing, its magic links, and
//! `/proc/PID/fdinfo/FD` (position, open flags, mount id, inode, and kind-specific
//! lines kept for the fd kinds that need them).

use super::read::Target;
use super::{split_deleted, ParseError, ProcError};

/// The content of `/proc/PID/fdinfo/FD`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdInfo {
    /// `pos`: the file offset.
    pub pos: u64,
    /// `flags`: open flags (`O_*`, printed in octal), including `O_CLOEXEC`.
    pub flags: u32,
    /// `mnt_id`: the mount the file was opened through.
    pub mnt_id: u64,
    /// `ino`: the inode number.
    pub ino: u64,
    /// Every other line as (key, value), in file order: `eventfd-count`, `tfd`,
    /// `sigmask`, `inotify` (key of a line whose first word has no colon) ...
    pub extra: Vec<(String, String)>,
}

impl FdInfo {
    /// The first `extra` value under `key`.
    pub fn extra(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses an fdinfo file. `pos`, `flags` and `mnt_id` are required (`ino` came in 5.x
/// kernels and defaults to 0).
pub fn parse_fdinfo(text: &str) -> Result<FdInfo, ParseError> {
    let mut info = FdInfo::default();
    let (mut has_pos, mut has_flags, mut has_mnt) = (false, false, false);
    for (i, line) in text.split('\n').enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let first = line.split_ascii_whitespace().next().unwrap_or_default();
        let key = first.strip_suffix(':').unwrap_or(first);
        let value = line.trim_start()[first.len()..].trim_start();
        let bad = || ParseError::new(i + 1, format!("bad {key} value '{value}'"));
        match key {
            "pos" => {
                info.pos = value.parse().map_err(|_| bad())?;
                has_pos = true;
            }
            "flags" => {
                info.flags = u32::from_str_radix(value, 8).map_err(|_| bad())?;
                has_flags = true;
            }
            "mnt_id" => {
                info.mnt_id = value.parse().map_err(|_| bad())?;
                has_mnt = true;
            }
            "ino" => info.ino = value.parse().map_err(|_| bad())?,
            _ => info.extra.push((key.to_owned(), value.to_owned())),
        }
    }
    match [(has_pos, "pos"), (has_flags, "flags"), (has_mnt, "mnt_id")]
        .into_iter()
        .find(|(seen, _)| !seen)
    {
        Some((_, key)) => Err(ParseError::new(0, format!("missing {key}"))),
        None => Ok(info),
    }
}

/// Reads `/proc/PID/fdinfo/FD`.
pub fn read_fdinfo(pid: i32, fd: i32) -> Result<FdInfo, ProcError> {
    Target::process(pid).parse(&format!("fdinfo/{fd}"), 512, parse_fdinfo)
}

/// The open descriptors of a process, sorted ascending.
pub fn list_fds(pid: i32) -> Result<Vec<i32>, ProcError> {
    Target::process(pid).list_numeric_dir("fd")
}

/// `readlink /proc/PID/fd/FD`, in the kernel's form: a path (maybe with " (deleted)"),
/// `pipe:[INO]`, `socket:[INO]`, `anon_inode:[eventfd]`, ...
pub fn read_fd_link(pid: i32, fd: i32) -> Result<String, ProcError> {
    Target::process(pid).read_link(&format!("fd/{fd}"))
}

/// What an fd link points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdTarget {
    /// A file or directory reachable by path (also `/memfd:NAME (deleted)`).
    Path {
        /// The path without the " (deleted)" suffix.
        path: String,
        /// The file was unlinked.
        deleted: bool,
    },
    /// `pipe:[INO]`.
    Pipe(u64),
    /// `socket:[INO]`.
    Socket(u64),
    /// `anon_inode:NAME` with the brackets removed: `eventfd`, `eventpoll`, `timerfd`,
    /// `signalfd`, `inotify`, `pidfd`, `bpf-map`...
    AnonInode(String),
    /// Anything else, verbatim (`net:[4026531840]`, `mnt:[..]`, ...).
    Other(String),
}

/// Classifies an fd link text.
pub fn classify_link(link: &str) -> FdTarget {
    let inode_in = |prefix: &str| {
        link.strip_prefix(prefix)?
            .strip_prefix('[')?
            .strip_suffix(']')?
            .parse::<u64>()
            .ok()
    };
    if link.starts_with('/') {
        let (path, deleted) = split_deleted(link);
        return FdTarget::Path {
            path: path.to_owned(),
            deleted,
        };
    }
    if let Some(ino) = inode_in("pipe:") {
        return FdTarget::Pipe(ino);
    }
    if let Some(ino) = inode_in("socket:") {
        return FdTarget::Socket(ino);
    }
    if let Some(name) = link.strip_prefix("anon_inode:") {
        let name = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        return FdTarget::AnonInode(name.to_owned());
    }
    FdTarget::Other(link.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn parses_regular_fdinfo() {
        // /proc/self/fdinfo/0 on the development machine.
        let info = parse_fdinfo("pos:\t0\nflags:\t0100000\nmnt_id:\t24\nino:\t3\n").unwrap();
        assert_eq!(
            info,
            FdInfo {
                pos: 0,
                flags: 0o100000, // O_LARGEFILE (libc says 0 on x86_64)
                mnt_id: 24,
                ino: 3,
                extra: vec![]
            }
        );
    }

    #[test]
    fn keeps_kind_specific_lines() {
        let eventfd = "pos:\t0\nflags:\t02004002\nmnt_id:\t16\nino:\t1057\neventfd-count:                5\neventfd-id: 3\n";
        let info = parse_fdinfo(eventfd).unwrap();
        assert_eq!(info.flags, 0o2004002);
        assert_eq!(info.extra("eventfd-count"), Some("5"));
        assert_eq!(info.extra("eventfd-id"), Some("3"));
        let inotify = "pos:\t0\nflags:\t00\nmnt_id:\t16\nino:\t1057\ninotify wd:1 ino:2 sdev:800011 mask:fff ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:0200000000000000\n";
        let info = parse_fdinfo(inotify).unwrap();
        assert_eq!(
            info.extra,
            vec![(
                "inotify".to_owned(),
                "wd:1 ino:2 sdev:800011 mask:fff ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:0200000000000000".to_owned()
            )]
        );
        let epoll = "pos:\t0\nflags:\t02\nmnt_id:\t16\nino:\t1057\ntfd:        5 events:       19 data:                5  pos:0 ino:3 sdev:5\n";
        assert_eq!(
            parse_fdinfo(epoll).unwrap().extra("tfd"),
            Some("5 events:       19 data:                5  pos:0 ino:3 sdev:5")
        );
    }

    #[test]
    fn bad_and_missing_fields_are_errors() {
        assert_eq!(
            parse_fdinfo("pos:\t0\nflags:\t9\nmnt_id:\t1\n").unwrap_err(),
            ParseError::new(2, "bad flags value '9'")
        );
        assert_eq!(
            parse_fdinfo("pos:\t0\nflags:\t0\n").unwrap_err(),
            ParseError::new(0, "missing mnt_id")
        );
    }

    #[test]
    fn classifies_links() {
        assert_eq!(classify_link("pipe:[5780]"), FdTarget::Pipe(5780));
        assert_eq!(classify_link("socket:[12]"), FdTarget::Socket(12));
        assert_eq!(
            classify_link("anon_inode:[eventfd]"),
            FdTarget::AnonInode("eventfd".into())
        );
        assert_eq!(
            classify_link("anon_inode:inotify"),
            FdTarget::AnonInode("inotify".into())
        );
        assert_eq!(
            classify_link("/tmp/a b (deleted)"),
            FdTarget::Path {
                path: "/tmp/a b".into(),
                deleted: true
            }
        );
        assert_eq!(
            classify_link("/dev/null"),
            FdTarget::Path {
                path: "/dev/null".into(),
                deleted: false
            }
        );
        assert_eq!(
            classify_link("net:[4026531840]"),
            FdTarget::Other("net:[4026531840]".into())
        );
        assert_eq!(
            classify_link("pipe:[x]"),
            FdTarget::Other("pipe:[x]".into())
        );
    }

    #[test]
    fn reads_own_fds() {
        let pid = std::process::id() as i32;
        let (r, w) = nix::unistd::pipe().unwrap();
        let fds = list_fds(pid).unwrap();
        assert!(fds.windows(2).all(|p| p[0] < p[1]));
        assert!(fds.contains(&r.as_raw_fd()) && fds.contains(&w.as_raw_fd()));
        let link = read_fd_link(pid, r.as_raw_fd()).unwrap();
        let FdTarget::Pipe(ino) = classify_link(&link) else {
            panic!("pipe link {link}");
        };
        let info = read_fdinfo(pid, w.as_raw_fd()).unwrap();
        assert_eq!(info.ino, ino);
        assert_eq!(info.flags & libc::O_ACCMODE as u32, libc::O_WRONLY as u32);
        let closed = w.as_raw_fd();
        drop(w);
        assert!(
            matches!(
                read_fdinfo(pid, closed),
                Err(ProcError::Io { pid: p, .. }) if p == pid
            ) || list_fds(pid).unwrap().contains(&closed)
        );
    }
}
