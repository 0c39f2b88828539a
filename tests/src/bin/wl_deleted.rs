//! A regular file deleted while open: 5000 bytes, mode 0640, open O_RDWR at
//! fd 20 (offset 321) and O_RDONLY at fd 21 (offset 0), then unlinked.
//! After restore: both fds still hold one deleted file with that path,
//! content, mode, flags and offsets, and a write through one shows through
//! the other.

use rcr_tests::fdops::{open, place, read_fd, seek, status_flags, sys, write_fd};
use rcr_tests::pattern;
use rcr_tests::workload::{self, Args, Verdict};
use std::os::unix::fs::MetadataExt;

const RW: i32 = 20;
const RO: i32 = 21;
const LEN: usize = 5000;
const RW_OFF: i64 = 321;
const MODE: u32 = 0o640;
const SEED: u64 = 0xde1;

fn content() -> Vec<u8> {
    let mut v = vec![0u8; LEN];
    pattern::fill(&mut v, SEED, 0);
    v
}

fn path(args: &Args) -> String {
    args.dir().join("gone.txt").to_string_lossy().into_owned()
}

fn build(args: &Args) -> Result<(), String> {
    let p = path(args);
    std::fs::write(&p, content()).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(MODE))
        .map_err(|e| e.to_string())?;
    place(open(&p, libc::O_RDWR)?, RW, 0)?;
    sys(seek(RW, RW_OFF, libc::SEEK_SET), "seek")?;
    place(open(&p, libc::O_RDONLY)?, RO, 0)?;
    std::fs::remove_file(&p).map_err(|e| e.to_string())
}

fn meta(fd: i32) -> Result<std::fs::Metadata, String> {
    std::fs::metadata(format!("/proc/self/fd/{fd}")).map_err(|e| e.to_string())
}

fn check(args: &Args, v: &mut Verdict) -> Result<(), String> {
    let link = std::fs::read_link(format!("/proc/self/fd/{RW}")).map_err(|e| e.to_string())?;
    v.eq(
        "fd 20 link",
        link.to_string_lossy().into_owned(),
        format!("{} (deleted)", path(args)),
    );
    let (m20, m21) = (meta(RW)?, meta(RO)?);
    v.eq("fd 20 mode", m20.mode() & 0o7777, MODE);
    v.eq("fd 20 links", m20.nlink(), 0);
    v.eq("one file behind 20 and 21", m21.ino(), m20.ino());
    v.eq("fd 20 flags", status_flags(RW)?, libc::O_RDWR);
    v.eq("fd 21 flags", status_flags(RO)?, libc::O_RDONLY);
    v.eq("fd 20 offset", seek(RW, 0, libc::SEEK_CUR), RW_OFF);
    v.eq("fd 21 offset", seek(RO, 0, libc::SEEK_CUR), 0);
    v.check(read_fd(RO, LEN + 1)? == content(), || {
        "deleted file content differs".into()
    });
    sys(write_fd(RW, b"XY") as i64, "write")?;
    sys(seek(RO, RW_OFF, libc::SEEK_SET), "seek")?;
    v.eq("write seen through fd 21", read_fd(RO, 2)?, b"XY".to_vec());
    v.check(!std::path::Path::new(&path(args)).exists(), || {
        "the deleted file has a name again".into()
    });
    Ok(())
}

fn main() {
    workload::run(build, check)
}
