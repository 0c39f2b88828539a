//! memfds across a checkpoint: "rcr test memfd" with 10000 bytes, sealed
//! against shrinking and growing, open O_RDWR at fd 20 (offset 1234) and,
//! as a second open file description, O_RDONLY at fd 21 (offset 77); an
//! unsealable empty memfd at fd 22. After restore: name, seals, flags,
//! offsets, content, that 20 and 21 still share one memfd, and that the
//! seals still hold.

use rcr_tests::fdops::{open, place, read_fd, seek, status_flags, sys, write_fd};
use rcr_tests::pattern;
use rcr_tests::workload::{self, Verdict};
use std::ffi::CString;

const RW: i32 = 20;
const RO: i32 = 21;
const PLAIN: i32 = 22;
const NAME: &str = "rcr test memfd";
const LEN: usize = 10_000;
const RW_OFF: i64 = 1234;
const RO_OFF: i64 = 77;
const SEED: u64 = 0x3e3f;
const SEALS: i32 = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;

fn content() -> Vec<u8> {
    let mut v = vec![0u8; LEN];
    pattern::fill(&mut v, SEED, 0);
    v
}

fn memfd(name: &str, flags: u32) -> Result<i32, String> {
    let c = CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: memfd_create with a NUL-terminated name.
    Ok(sys(
        unsafe { libc::memfd_create(c.as_ptr(), flags) } as i64,
        "memfd_create",
    )? as i32)
}

fn fcntl(fd: i32, cmd: i32, arg: i32) -> Result<i32, String> {
    // SAFETY: fcntl with an integer argument.
    Ok(sys(
        unsafe { libc::fcntl(fd, cmd, arg) } as i64,
        &format!("fcntl {cmd} fd {fd}"),
    )? as i32)
}

fn build() -> Result<(), String> {
    place(memfd(NAME, libc::MFD_ALLOW_SEALING)?, RW, 0)?;
    sys(write_fd(RW, &content()) as i64, "write memfd")?;
    fcntl(RW, libc::F_ADD_SEALS, SEALS)?;
    sys(seek(RW, RW_OFF, libc::SEEK_SET), "seek")?;
    place(open(&format!("/proc/self/fd/{RW}"), libc::O_RDONLY)?, RO, 0)?;
    sys(seek(RO, RO_OFF, libc::SEEK_SET), "seek")?;
    place(memfd("plain", 0)?, PLAIN, 0)
}

fn pread(fd: i32, len: usize, off: i64) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; len];
    // SAFETY: reads into a buffer of `len` bytes we own.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), len, off) };
    buf.truncate(sys(n as i64, "pread")? as usize);
    Ok(buf)
}

fn check(v: &mut Verdict) -> Result<(), String> {
    let link = std::fs::read_link(format!("/proc/self/fd/{RW}")).map_err(|e| e.to_string())?;
    v.eq(
        "fd 20 link",
        link.to_string_lossy().into_owned(),
        format!("/memfd:{NAME} (deleted)"),
    );
    v.eq("fd 20 seals", fcntl(RW, libc::F_GET_SEALS, 0)?, SEALS);
    v.eq(
        "fd 22 seals",
        fcntl(PLAIN, libc::F_GET_SEALS, 0)?,
        libc::F_SEAL_SEAL,
    );
    v.eq("fd 20 flags", status_flags(RW)?, libc::O_RDWR);
    v.eq("fd 21 flags", status_flags(RO)?, libc::O_RDONLY);
    v.eq("fd 20 offset", seek(RW, 0, libc::SEEK_CUR), RW_OFF);
    v.eq("fd 21 offset", seek(RO, 0, libc::SEEK_CUR), RO_OFF);
    v.check(pread(RO, LEN + 1, 0)? == content(), || {
        "memfd content differs".into()
    });
    // One memfd behind both: a write through 20 shows through 21.
    sys(write_fd(RW, b"XY") as i64, "write memfd")?;
    v.eq(
        "write seen through fd 21",
        pread(RO, 2, RW_OFF)?,
        b"XY".to_vec(),
    );
    v.eq(
        "fd 21 reads on at its offset",
        read_fd(RO, 1)?,
        content()[RO_OFF as usize..][..1].to_vec(),
    );
    // F_SEAL_GROW still holds.
    sys(seek(RW, LEN as i64, libc::SEEK_SET), "seek")?;
    v.check(write_fd(RW, b"!") < 0, || {
        "a write past the end of a grow-sealed memfd succeeded".into()
    });
    Ok(())
}

fn main() {
    workload::run(|_| build(), |_, v| check(v))
}
