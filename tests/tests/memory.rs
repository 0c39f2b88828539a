//! Memory: a 256 MiB patterned area, holes, PROT_NONE guards, heap blocks
//! and brk, private and shared file mappings, read-only data.

use rcr_tests::harness::{roundtrip, TestDir, Workload};
use rcr_tests::maps;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

const WL: &str = env!("CARGO_BIN_EXE_wl_memory");

#[test]
fn memory_survives_dump_and_restore() {
    roundtrip("memory", Path::new(WL), &[], &["256"], 1, Duration::ZERO);
}

/// The check must be able to fail: flip one byte of the big area through
/// /proc/<pid>/mem (no rcr involved) and expect a FAIL verdict naming it.
#[test]
fn memory_check_detects_a_flipped_byte() {
    let dir = TestDir::new("memory-selftest");
    let mut w = Workload::spawn(&dir, Path::new(WL), &[], &["32"]);
    w.wait_ready();
    let text = fs::read_to_string(format!("/proc/{}/maps", w.pid)).expect("read maps");
    let big = maps::parse(&text)
        .into_iter()
        .find(|m| m.end - m.start >= 32 << 20 && m.perms == "rw-p" && m.name.is_empty())
        .expect("the 32 MiB area in the workload's maps");
    let at = (big.start + (big.end - big.start) / 2) as u64;
    let mem = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{}/mem", w.pid))
        .expect("open /proc/pid/mem");
    let mut b = [0u8; 1];
    mem.read_exact_at(&mut b, at).expect("read a byte");
    b[0] ^= 0x40;
    mem.write_all_at(&b, at).expect("write a byte");

    let (verdict, _) = w.finish();
    assert!(
        verdict.line.starts_with("FAIL") && verdict.line.contains("big area"),
        "a flipped byte went unnoticed: {verdict:?}"
    );
}
