//! Private memory inherited across fork and never written since stays
//! shared copy-on-write through a dump and restore: the image holds it
//! once, and the restored tree's memory does not grow by a copy per process.

use rcr_tests::harness::{dump, pss_bytes, restore, TestDir, Workload};
use std::path::Path;

const WL: &str = env!("CARGO_BIN_EXE_wl_cow");
const MIB: u64 = 1 << 20;
/// The region the root fills before forking five processes.
const REGION_MIB: u64 = 32;

#[test]
fn memory_shared_since_fork_stays_shared() {
    let dir = TestDir::new("cow");
    let mut w = Workload::spawn(&dir, Path::new(WL), &[], &[&REGION_MIB.to_string()]);
    w.wait_ready();
    assert_eq!(w.descendants.len(), 5, "descendants: {:?}", w.descendants);
    let tree: Vec<i32> = std::iter::once(w.pid)
        .chain(w.descendants.iter().copied())
        .collect();
    let before = pss_bytes(&tree);
    let img = dir.join("img");
    dump(&dir, &mut w, &img, &[]);
    // Each process wrote at most 1 MiB of its own: the region is saved once.
    let saved: u64 = std::fs::read_dir(&img)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        saved < (REGION_MIB + 16) * MIB,
        "pages files hold {} MiB for a {REGION_MIB} MiB region shared by 6 processes",
        saved / MIB
    );
    restore(&dir, &mut w, &img);
    let after = pss_bytes(&tree);
    // Unshared, the region alone would add 5 x 32 MiB.
    assert!(
        after < before + 16 * MIB,
        "PSS of the tree: {} MiB before the dump, {} MiB after the restore",
        before / MIB,
        after / MIB
    );
    w.finish_ok();
}

/// Without rcr in between, every process finds what it must.
#[test]
fn cow_workload_checks_itself() {
    let dir = TestDir::new("cow-plain");
    let mut w = Workload::spawn(&dir, Path::new(WL), &[], &["8"]);
    w.wait_ready();
    assert_eq!(w.descendants.len(), 5, "descendants: {:?}", w.descendants);
    w.finish_ok();
}
