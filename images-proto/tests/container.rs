//! The image container: round trips of every kind, and every way a file can be damaged.

mod strategies;

use proptest::prelude::*;
use rcr_images::container::{HEADER_SIZE, MAGIC, TRAILER_SIZE};
use rcr_images::{decode, encode, pb, read, write, Image, ImageError, ImageKind, FORMAT_VERSION};
use std::path::Path;

fn round_trip<M: Image + PartialEq + std::fmt::Debug>(msg: &M) {
    let bytes = encode(msg);
    assert_eq!(&bytes[..8], &MAGIC);
    assert_eq!(decode::<M>(&bytes).unwrap(), *msg);
}

/// Every damaged copy must be refused with a framing error: never Ok, never a panic.
fn assert_framing_error(result: Result<pb::Core, ImageError>) {
    match result {
        Err(
            ImageError::Checksum { .. }
            | ImageError::NotAnImage { .. }
            | ImageError::NewerVersion { .. }
            | ImageError::UnknownVersion { .. }
            | ImageError::WrongKind { .. }
            | ImageError::Truncated { .. },
        ) => {}
        other => panic!("damaged image gave {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn core_round_trips(msg in strategies::core()) { round_trip(&msg); }

    #[test]
    fn mm_round_trips(msg in strategies::mm()) { round_trip(&msg); }

    #[test]
    fn pagemap_round_trips(msg in strategies::pagemap()) { round_trip(&msg); }

    #[test]
    fn file_table_round_trips(msg in strategies::file_table()) { round_trip(&msg); }

    #[test]
    fn fs_state_round_trips(msg in strategies::fs_state()) { round_trip(&msg); }

    #[test]
    fn process_tree_round_trips(msg in strategies::process_tree()) { round_trip(&msg); }

    #[test]
    fn inventory_round_trips(msg in strategies::inventory()) { round_trip(&msg); }

    #[test]
    fn every_truncation_is_truncated(msg in strategies::core()) {
        let bytes = encode(&msg);
        for len in 0..bytes.len() {
            match decode::<pb::Core>(&bytes[..len]) {
                Err(ImageError::Truncated { .. }) => {}
                other => panic!("cut at {len} of {}: {other:?}", bytes.len()),
            }
        }
    }

    #[test]
    fn every_flipped_byte_is_refused(msg in strategies::core(), mask in 1u8..=255) {
        let bytes = encode(&msg);
        let mut damaged = bytes.clone();
        for at in 0..bytes.len() {
            damaged[at] ^= mask;
            assert_framing_error(decode(&damaged));
            damaged[at] ^= mask;
        }
    }
}

#[test]
fn empty_messages_round_trip() {
    round_trip(&pb::Inventory::default());
    round_trip(&pb::ProcessTree::default());
    round_trip(&pb::Core::default());
    round_trip(&pb::Mm::default());
    round_trip(&pb::PageMap::default());
    round_trip(&pb::FileTable::default());
    round_trip(&pb::FsState::default());
    assert_eq!(
        encode(&pb::Core::default()).len(),
        HEADER_SIZE + TRAILER_SIZE
    );
}

#[test]
fn kinds_have_distinct_tags() {
    for kind in ImageKind::ALL {
        assert_eq!(ImageKind::from_tag(kind.tag()), Some(kind));
    }
    assert_eq!(ImageKind::from_tag(0), None);
    assert_eq!(ImageKind::from_tag(99), None);
}

#[test]
fn newer_version_is_reported_before_the_checksum() {
    let mut bytes = encode(&pb::Core::default());
    // The checksum is left stale on purpose: a newer format may checksum differently.
    bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let err = decode::<pb::Core>(&bytes).unwrap_err();
    assert!(matches!(
        err,
        ImageError::NewerVersion { found, supported, .. } if found == 3 && supported == 2
    ));
    assert_eq!(
        err.to_string(),
        "image <memory>: format version 3 is newer than this rcr supports (2)"
    );
}

#[test]
fn wrong_kind_names_both_kinds() {
    let bytes = encode(&pb::Core::default());
    let err = decode::<pb::Mm>(&bytes).unwrap_err();
    assert!(matches!(
        err,
        ImageError::WrongKind {
            expected: ImageKind::Mm,
            found: 3,
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "image <memory>: expected a mm image, found a core image"
    );
}

#[test]
fn bad_magic_is_not_an_image() {
    let mut bytes = encode(&pb::Core::default());
    bytes[0] = b'X';
    let err = decode::<pb::Core>(&bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "image <memory>: not an rcr image (bad magic)"
    );
}

#[test]
fn appended_bytes_are_refused() {
    let mut bytes = encode(&pb::Core {
        pid: 42,
        ..Default::default()
    });
    bytes.push(0);
    assert!(matches!(
        decode::<pb::Core>(&bytes),
        Err(ImageError::TrailingData { extra: 1, .. })
    ));
}

#[test]
fn invalid_payload_with_valid_frame_is_a_decode_error() {
    let payload = [0xffu8; 3];
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&ImageKind::Core.tag().to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&payload);
    let sum = rcr_images::checksum(&bytes);
    bytes.extend_from_slice(&sum.to_le_bytes());
    let err = decode::<pb::Core>(&bytes).unwrap_err();
    assert!(matches!(err, ImageError::Decode { .. }), "{err:?}");
}

#[test]
fn write_then_read_names_the_path_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core-42.img");
    let core = pb::Core {
        pid: 42,
        comm: "sleep".into(),
        ..Default::default()
    };
    write(&path, &core).unwrap();
    assert_eq!(read::<pb::Core>(&path).unwrap(), core);

    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let err = read::<pb::Core>(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "image {}: checksum mismatch (file is corrupt)",
            path.display()
        )
    );

    let missing = dir.path().join("mm-42.img");
    let err = read::<pb::Mm>(&missing).unwrap_err();
    assert!(matches!(&err, ImageError::Io { path, .. } if path == &missing));
    assert!(err
        .to_string()
        .starts_with(&format!("image {}: ", missing.display())));
    assert!(write(Path::new("/nonexistent-dir/x.img"), &core).is_err());
}
