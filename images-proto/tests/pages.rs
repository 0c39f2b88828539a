//! The pages file: header checks and run verification.

use rcr_images::pages::{check_run_layout, PAGE_SIZE};
use rcr_images::{
    check_pages_header, checksum, pages_header, pb, verify_runs, ImageError, RunProblem,
    FORMAT_VERSION, PAGES_HEADER_SIZE,
};
use std::path::{Path, PathBuf};

/// A pages file with one run per entry of `runs` (vaddr, pages), each page filled with a
/// pattern of its own, and the page map that describes it.
fn write_pages(dir: &Path, runs: &[(u64, u64)]) -> (PathBuf, pb::PageMap) {
    let mut file = pages_header().to_vec();
    let mut map = pb::PageMap::default();
    for &(vaddr, nr_pages) in runs {
        let offset = file.len() as u64;
        let start = file.len();
        for i in 0..nr_pages * PAGE_SIZE {
            file.push((vaddr / PAGE_SIZE + i * 7 + i / 4096) as u8);
        }
        map.runs.push(pb::PageRun {
            vaddr,
            nr_pages,
            offset,
            checksum: checksum(&file[start..]),
            inherited: false,
        });
    }
    map.pages_file_size = file.len() as u64;
    let path = dir.join("pages-42.img");
    std::fs::write(&path, &file).unwrap();
    (path, map)
}

fn run_problem(result: Result<(), ImageError>) -> (u64, RunProblem) {
    match result {
        Err(ImageError::Run { vaddr, problem, .. }) => (vaddr, problem),
        other => panic!("expected a run error, got {other:?}"),
    }
}

#[test]
fn header_round_trips() {
    let header = pages_header();
    assert_eq!(&header[..8], b"RCRPAGES");
    assert_eq!(&header[8..12], &FORMAT_VERSION.to_le_bytes());
    check_pages_header(Path::new("p"), &header).unwrap();
}

#[test]
fn damaged_headers_are_refused() {
    let p = Path::new("pages-1.img");
    let good = pages_header();
    assert!(matches!(
        check_pages_header(p, &good[..100]),
        Err(ImageError::Truncated { .. })
    ));
    let mut h = good;
    h[0] = b'X';
    assert!(matches!(
        check_pages_header(p, &h),
        Err(ImageError::NotAnImage { .. })
    ));
    let mut h = good;
    h[8..12].copy_from_slice(&7u32.to_le_bytes());
    h[100] = 1; // A newer format may use the padding: the version is reported first.
    assert!(matches!(
        check_pages_header(p, &h),
        Err(ImageError::NewerVersion { found: 7, .. })
    ));
    let mut h = good;
    h[4000] = 1;
    assert!(matches!(
        check_pages_header(p, &h),
        Err(ImageError::PagesHeader { .. })
    ));
}

#[test]
fn good_file_verifies() {
    let dir = tempfile::tempdir().unwrap();
    // 300 pages is more than one read chunk: the streamed hash must equal the one-shot one.
    let (path, map) = write_pages(
        dir.path(),
        &[(0x7f00_0000_0000, 300), (0x1000, 1), (0x40_0000, 3)],
    );
    verify_runs(&path, &map).unwrap();
    verify_runs(&path, &pb::PageMap::default()).unwrap();
}

#[test]
fn inherited_runs_have_no_bytes_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut map) = write_pages(dir.path(), &[(0x1000, 2)]);
    map.runs.push(pb::PageRun {
        vaddr: 0x9000,
        nr_pages: 1000,
        offset: 0,
        checksum: 0,
        inherited: true,
    });
    verify_runs(&path, &map).unwrap();
    map.runs[1].inherited = false;
    assert!(
        verify_runs(&path, &map).is_err(),
        "a data run in the header"
    );
}

#[test]
fn flipped_byte_in_page_data_names_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (path, map) = write_pages(dir.path(), &[(0x1000, 2), (0x7f00_0000_0000, 3)]);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = (map.runs[1].offset + 2 * PAGE_SIZE + 17) as usize;
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let err = verify_runs(&path, &map).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "image {}: run at 0x7f0000000000: checksum mismatch (file is corrupt)",
            path.display()
        )
    );
}

#[test]
fn run_past_eof_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut map) = write_pages(dir.path(), &[(0x1000, 2), (0x5000, 1)]);
    map.runs[1].nr_pages = 2;
    let (vaddr, problem) = run_problem(verify_runs(&path, &map));
    assert_eq!(vaddr, 0x5000);
    assert!(matches!(problem, RunProblem::PastEof { nr_pages: 2, .. }));
    // An end that overflows u64 is past the end too, not a panic.
    map.runs[1].nr_pages = u64::MAX / 2;
    assert!(matches!(
        run_problem(verify_runs(&path, &map)).1,
        RunProblem::PastEof { .. }
    ));
}

#[test]
fn truncated_file_differs_from_recorded_size() {
    let dir = tempfile::tempdir().unwrap();
    let (path, map) = write_pages(dir.path(), &[(0x1000, 2)]);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(PAGES_HEADER_SIZE + PAGE_SIZE).unwrap();
    assert!(matches!(
        verify_runs(&path, &map),
        Err(ImageError::PagesSize { .. })
    ));
    f.set_len(100).unwrap();
    assert!(matches!(
        verify_runs(&path, &map),
        Err(ImageError::Truncated { .. })
    ));
}

#[test]
fn layout_problems_are_named() {
    let p = Path::new("pages-1.img");
    let len = PAGES_HEADER_SIZE + 4 * PAGE_SIZE;
    let run = |vaddr, nr_pages, offset| pb::PageRun {
        vaddr,
        nr_pages,
        offset,
        checksum: 0,
        inherited: false,
    };
    let map = |runs| pb::PageMap {
        pages_file_size: len,
        runs,
    };
    let problem = |m: pb::PageMap| run_problem(check_run_layout(p, &m, len));

    assert_eq!(
        problem(map(vec![run(0x1000, 0, 4096)])).1,
        RunProblem::Empty
    );
    assert_eq!(
        problem(map(vec![run(0x1001, 1, 4096)])).1,
        RunProblem::Misaligned { offset: 4096 }
    );
    assert_eq!(
        problem(map(vec![run(0x1000, 1, 4097)])).1,
        RunProblem::Misaligned { offset: 4097 }
    );
    assert_eq!(
        problem(map(vec![run(0x1000, 1, 0)])).1,
        RunProblem::InHeader { offset: 0 }
    );
    assert_eq!(
        problem(map(vec![run(0x1000, 2, 4096), run(0x9000, 2, 8192)])),
        (
            0x9000,
            RunProblem::Overlaps {
                other_vaddr: 0x1000
            }
        )
    );
    check_run_layout(
        p,
        &map(vec![run(0x9000, 2, 12288), run(0x1000, 2, 4096)]),
        len,
    )
    .unwrap();
}

#[test]
fn first_bad_run_in_map_order_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let runs: Vec<(u64, u64)> = (0..40)
        .map(|i| (0x10_0000 + i * 0x10_000, 1 + i % 3))
        .collect();
    let (path, map) = write_pages(dir.path(), &runs);
    let mut bytes = std::fs::read(&path).unwrap();
    for bad in [31, 17, 35] {
        bytes[map.runs[bad].offset as usize] ^= 1;
    }
    std::fs::write(&path, &bytes).unwrap();
    for _ in 0..20 {
        assert_eq!(
            run_problem(verify_runs(&path, &map)),
            (runs[17].0, RunProblem::Checksum)
        );
    }
}
