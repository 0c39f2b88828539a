//! The framing around every image file but the pages file:
//!
//! ```text
//! magic b"RCRIMG\0\x01" (8) | format version u32 LE | kind tag u32 LE | payload length u64 LE
//! | payload (one prost-encoded message) | xxh3-64 of everything before it, u64 LE
//! ```

use crate::error::ImageError;
use crate::kind::ImageKind;
use crate::pb;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::xxh3_64;

/// Version of the image formats this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 2;

/// First bytes of every framed image.
pub const MAGIC: [u8; 8] = *b"RCRIMG\0\x01";

/// Bytes before the payload: magic, version, kind, payload length.
pub const HEADER_SIZE: usize = 8 + 4 + 4 + 8;

/// Bytes after the payload: the checksum.
pub const TRAILER_SIZE: usize = 8;

/// Path that errors name when decoding from memory.
const MEMORY_PATH: &str = "<memory>";

/// A message that is stored as one image file.
pub trait Image: prost::Message + Default {
    /// The kind tag its files carry.
    const KIND: ImageKind;
}

impl Image for pb::Inventory {
    const KIND: ImageKind = ImageKind::Inventory;
}
impl Image for pb::ProcessTree {
    const KIND: ImageKind = ImageKind::ProcessTree;
}
impl Image for pb::Core {
    const KIND: ImageKind = ImageKind::Core;
}
impl Image for pb::Mm {
    const KIND: ImageKind = ImageKind::Mm;
}
impl Image for pb::PageMap {
    const KIND: ImageKind = ImageKind::PageMap;
}
impl Image for pb::FileTable {
    const KIND: ImageKind = ImageKind::FileTable;
}
impl Image for pb::FsState {
    const KIND: ImageKind = ImageKind::FsState;
}

/// The whole file for `msg`: header, payload, checksum.
pub fn encode<M: Image>(msg: &M) -> Vec<u8> {
    let payload_len = msg.encoded_len();
    let mut out = Vec::with_capacity(HEADER_SIZE + payload_len + TRAILER_SIZE);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&M::KIND.tag().to_le_bytes());
    out.extend_from_slice(&(payload_len as u64).to_le_bytes());
    // Encoding into a Vec cannot run out of room.
    msg.encode_raw(&mut out);
    let sum = xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Checks the framing of `bytes` and decodes its message; errors name `"<memory>"`.
pub fn decode<M: Image>(bytes: &[u8]) -> Result<M, ImageError> {
    decode_at(Path::new(MEMORY_PATH), bytes)
}

/// Writes `msg` to `path` in one `write_all`. No fsync: the dump directory's rename is
/// the commit point, and the caller syncs before it.
pub fn write<M: Image>(path: &Path, msg: &M) -> Result<(), ImageError> {
    std::fs::write(path, encode(msg)).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads `path`, checks its framing and decodes its message.
pub fn read<M: Image>(path: &Path) -> Result<M, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_at(path, &bytes)
}

/// Reads a little-endian u32 at `at`; the caller has checked the length.
pub(crate) fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Reads a little-endian u64 at `at`; the caller has checked the length.
fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Accepts `found` if this build reads that format version. Checked before anything
/// that follows the version, since a newer format may change all of it.
pub(crate) fn check_version(path: &Path, found: u32) -> Result<(), ImageError> {
    if found > FORMAT_VERSION {
        Err(ImageError::NewerVersion {
            path: path.to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        })
    } else if found == 0 {
        Err(ImageError::UnknownVersion {
            path: path.to_path_buf(),
            found,
        })
    } else {
        Ok(())
    }
}

fn decode_at<M: Image>(path: &Path, bytes: &[u8]) -> Result<M, ImageError> {
    let owned = || PathBuf::from(path);
    if bytes.len() < HEADER_SIZE {
        return Err(ImageError::Truncated { path: owned() });
    }
    if bytes[..MAGIC.len()] != MAGIC {
        return Err(ImageError::NotAnImage { path: owned() });
    }
    check_version(path, le_u32(bytes, 8))?;
    let tag = le_u32(bytes, 12);
    if tag != M::KIND.tag() {
        return Err(ImageError::WrongKind {
            path: owned(),
            expected: M::KIND,
            found: tag,
        });
    }
    let payload_len = le_u64(bytes, 16);
    let payload_end = usize::try_from(payload_len)
        .ok()
        .and_then(|len| HEADER_SIZE.checked_add(len))
        .filter(|end| {
            end.checked_add(TRAILER_SIZE)
                .is_some_and(|e| e <= bytes.len())
        })
        .ok_or_else(|| ImageError::Truncated { path: owned() })?;
    let stored_sum = le_u64(bytes, payload_end);
    if xxh3_64(&bytes[..payload_end]) != stored_sum {
        return Err(ImageError::Checksum { path: owned() });
    }
    // Only after the checksum: a corrupt length field is reported as corruption.
    let extra = bytes.len() - payload_end - TRAILER_SIZE;
    if extra != 0 {
        return Err(ImageError::TrailingData {
            path: owned(),
            extra: extra as u64,
        });
    }
    M::decode(&bytes[HEADER_SIZE..payload_end]).map_err(|source| ImageError::Decode {
        path: owned(),
        source,
    })
}
