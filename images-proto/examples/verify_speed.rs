//! Measures `verify_runs` over a pages file of SIZE_MIB (default 1024) MiB in runs of
//! 64 pages, in a directory given as the first argument (default: the temp dir).
//! The file is hot in the page cache, as right after a dump.
//!
//! `cargo run --release -p rcr-images --example verify_speed [DIR]`

use rcr_images::pages::PAGE_SIZE;
use rcr_images::{checksum, pages_header, pb, verify_runs};
use std::io::Write;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = std::env::var("SIZE_MIB").map_or(Ok(1024), |s| s.parse())?;
    let base = std::env::args()
        .nth(1)
        .map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base)?;
    let path = dir.path().join("pages-1.img");

    let run_pages = 64u64;
    let run_bytes = (run_pages * PAGE_SIZE) as usize;
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    out.write_all(&pages_header())?;
    let mut map = pb::PageMap::default();
    let mut data = vec![0u8; run_bytes];
    let mut offset = pages_header().len() as u64;
    for i in 0..mib * (1 << 20) / run_bytes as u64 {
        for (j, b) in data.iter_mut().enumerate() {
            *b = (i as usize ^ j) as u8;
        }
        out.write_all(&data)?;
        map.runs.push(pb::PageRun {
            vaddr: 0x7f00_0000_0000 + offset,
            nr_pages: run_pages,
            offset,
            checksum: checksum(&data),
            inherited: false,
        });
        offset += run_bytes as u64;
    }
    out.flush()?;
    drop(out);
    map.pages_file_size = offset;

    for _ in 0..6 {
        let start = Instant::now();
        verify_runs(&path, &map)?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "verify_runs: {mib} MiB in {:.3} s = {:.2} GB/s",
            secs,
            offset as f64 / secs / 1e9
        );
    }
    Ok(())
}
