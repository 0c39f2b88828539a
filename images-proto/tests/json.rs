//! `rcr show` JSON: bytes as hex, enums by proto name, oneofs by field name.

use rcr_images::pb;
use serde_json::json;

#[test]
fn bytes_are_lowercase_hex() {
    let core = pb::Core {
        pid: 7,
        threads: vec![pb::ThreadCore {
            tid: 7,
            xsave: vec![0xde, 0xad, 0x0b, 0xEF],
            pending: vec![pb::SigInfo {
                signo: 10,
                raw: vec![0, 1, 0xff],
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let v = serde_json::to_value(&core).unwrap();
    assert_eq!(v["pid"], json!(7));
    assert_eq!(v["threads"][0]["xsave"], json!("dead0bef"));
    assert_eq!(v["threads"][0]["pending"][0]["raw"], json!("0001ff"));
    assert_eq!(v["threads"][0]["regs"], json!(null));
}

#[test]
fn enums_are_names_and_unknown_values_numbers() {
    let mm = pb::Mm {
        vmas: vec![
            pb::Vma {
                kind: pb::VmaKind::AnonPrivate as i32,
                ..Default::default()
            },
            pb::Vma {
                kind: pb::VmaKind::VvarVclock as i32,
                ..Default::default()
            },
            pb::Vma {
                kind: 99,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let v = serde_json::to_value(&mm).unwrap();
    assert_eq!(v["vmas"][0]["kind"], json!("ANON_PRIVATE"));
    assert_eq!(v["vmas"][1]["kind"], json!("VVAR_VCLOCK"));
    assert_eq!(v["vmas"][2]["kind"], json!(99));
}

#[test]
fn oneof_variants_are_field_names() {
    let files = pb::FileTable {
        files: vec![pb::FileEntry {
            id: 3,
            kind: Some(pb::file_entry::Kind::Reg(pb::RegFile {
                path: "/etc/hosts".into(),
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let v = serde_json::to_value(&files).unwrap();
    assert_eq!(v["files"][0]["id"], json!(3));
    assert_eq!(v["files"][0]["kind"]["reg"]["path"], json!("/etc/hosts"));
}

#[test]
fn to_hex_of_nothing_is_empty() {
    assert_eq!(rcr_images::json::to_hex(&[]), "");
    assert_eq!(rcr_images::json::to_hex(&[0x0a]), "0a");
}
