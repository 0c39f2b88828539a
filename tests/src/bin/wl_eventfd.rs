//! eventfds across a checkpoint: a semaphore eventfd at fd 9 (count 5,
//! O_NONBLOCK) and a plain one at fd 10 whose count needs more than 32
//! bits. After restore: flags, semaphore mode, counts, and both still count.

use rcr_tests::fdops::{fdinfo_value, place, status_flags, sys};
use rcr_tests::workload::{self, Verdict};

const SEM: i32 = 9;
const PLAIN: i32 = 10;
const SEM_COUNT: u32 = 5;
const PLAIN_COUNT: u64 = 0x1_0000_0005;

fn eventfd(count: u64, flags: i32, at: i32) -> Result<(), String> {
    // SAFETY: eventfd takes plain integers.
    let fd = sys(unsafe { libc::eventfd(0, flags) } as i64, "eventfd")? as i32;
    write_count(fd, count)?;
    place(fd, at, 0)
}

fn write_count(fd: i32, count: u64) -> Result<(), String> {
    // SAFETY: writes 8 bytes from a u64 we own.
    let n = unsafe { libc::write(fd, (&count as *const u64).cast(), 8) };
    sys(n as i64, &format!("write eventfd {fd}"))?;
    Ok(())
}

fn read_count(fd: i32) -> Result<u64, String> {
    let mut count = 0u64;
    // SAFETY: reads 8 bytes into a u64 we own.
    let n = unsafe { libc::read(fd, (&mut count as *mut u64).cast(), 8) };
    sys(n as i64, &format!("read eventfd {fd}"))?;
    Ok(count)
}

fn build() -> Result<(), String> {
    eventfd(
        SEM_COUNT.into(),
        libc::EFD_SEMAPHORE | libc::EFD_NONBLOCK,
        SEM,
    )?;
    eventfd(PLAIN_COUNT, 0, PLAIN)
}

fn check(v: &mut Verdict) -> Result<(), String> {
    v.eq(
        "fd 9 flags",
        status_flags(SEM)?,
        libc::O_RDWR | libc::O_NONBLOCK,
    );
    v.eq("fd 10 flags", status_flags(PLAIN)?, libc::O_RDWR);
    v.eq(
        "fd 9 eventfd-semaphore",
        fdinfo_value(SEM, "eventfd-semaphore")?,
        "1".to_owned(),
    );
    v.eq("semaphore read", read_count(SEM)?, 1);
    v.eq(
        "semaphore count after one read",
        fdinfo_value(SEM, "eventfd-count")?,
        format!("{:x}", SEM_COUNT - 1),
    );
    v.eq("plain read", read_count(PLAIN)?, PLAIN_COUNT);
    write_count(PLAIN, 3)?;
    v.eq("plain read after a write", read_count(PLAIN)?, 3);
    Ok(())
}

fn main() {
    workload::run(|_| build(), |_, v| check(v))
}
