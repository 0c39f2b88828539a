//! Errors of reading, writing and checking images; each names the file.

use crate::kind::describe_tag;
use crate::kind::ImageKind;
use std::fmt;
use std::path::PathBuf;

/// Why an image file could not be written, read or trusted.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be opened, read or written.
    #[error("image {}: {source}", path.display())]
    Io {
        /// The image file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file does not start with rcr's magic.
    #[error("image {}: not an rcr image (bad magic)", path.display())]
    NotAnImage {
        /// The file.
        path: PathBuf,
    },
    /// The file was written by a newer rcr whose format this build cannot read.
    #[error(
        "image {}: format version {found} is newer than this rcr supports ({supported})",
        path.display()
    )]
    NewerVersion {
        /// The image file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// The format version is 0, which no rcr ever wrote.
    #[error("image {}: format version {found} is unknown (file is corrupt)", path.display())]
    UnknownVersion {
        /// The image file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
    },
    /// The file ends before its header or payload does.
    #[error("image {}: truncated (file is shorter than its header says)", path.display())]
    Truncated {
        /// The image file.
        path: PathBuf,
    },
    /// The checksum does not match the content.
    #[error("image {}: checksum mismatch (file is corrupt)", path.display())]
    Checksum {
        /// The image file.
        path: PathBuf,
    },
    /// Bytes follow the checksum: the file was appended to or its length field is wrong.
    #[error("image {}: {extra} unexpected bytes after the checksum", path.display())]
    TrailingData {
        /// The image file.
        path: PathBuf,
        /// How many bytes follow the checksum.
        extra: u64,
    },
    /// The file holds another kind of image than the caller asked for.
    #[error("image {}: expected a {expected} image, found {}", path.display(), describe_tag(*found))]
    WrongKind {
        /// The image file.
        path: PathBuf,
        /// The kind the caller asked for.
        expected: ImageKind,
        /// The kind tag in the file.
        found: u32,
    },
    /// The framing is sound but the protobuf payload is not a valid message.
    #[error("image {}: payload does not decode: {source}", path.display())]
    Decode {
        /// The image file.
        path: PathBuf,
        /// prost's reason.
        source: prost::DecodeError,
    },
    /// The pages header's padding is not zero.
    #[error("image {}: pages header padding is not zero (file is corrupt)", path.display())]
    PagesHeader {
        /// The pages file.
        path: PathBuf,
    },
    /// The pages file's size differs from the size its page map recorded.
    #[error(
        "image {}: pages file is {found} bytes, its page map says {expected}",
        path.display()
    )]
    PagesSize {
        /// The pages file.
        path: PathBuf,
        /// `PageMap.pages_file_size`.
        expected: u64,
        /// Size on disk.
        found: u64,
    },
    /// One run of a page map is unusable.
    #[error("image {}: run at {vaddr:#x}: {problem}", path.display())]
    Run {
        /// The pages file.
        path: PathBuf,
        /// The run's first virtual address.
        vaddr: u64,
        /// What is wrong with it.
        problem: RunProblem,
    },
    /// One run of an object's data in `objdata.img` is unusable.
    #[error("image {}: data run at file offset {file_offset:#x}: {problem}", path.display())]
    DataRun {
        /// The object data file.
        path: PathBuf,
        /// The run's offset in the file.
        file_offset: u64,
        /// What is wrong with it.
        problem: String,
    },
}

/// What is wrong with one run of a page map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunProblem {
    /// The run covers no pages.
    Empty,
    /// The virtual address or the file offset is not page-aligned.
    Misaligned {
        /// The run's offset in the pages file.
        offset: u64,
    },
    /// The run starts inside the pages header.
    InHeader {
        /// The run's offset in the pages file.
        offset: u64,
    },
    /// The run ends past the end of the pages file (or its end overflows).
    PastEof {
        /// The run's offset in the pages file.
        offset: u64,
        /// Pages in the run.
        nr_pages: u64,
        /// Size of the pages file.
        file_len: u64,
    },
    /// The run's bytes in the file overlap another run's.
    Overlaps {
        /// The other run's virtual address.
        other_vaddr: u64,
    },
    /// The run's bytes do not hash to its checksum.
    Checksum,
}

impl fmt::Display for RunProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "run has no pages"),
            Self::Misaligned { offset } => {
                write!(f, "address or file offset {offset:#x} is not page-aligned")
            }
            Self::InHeader { offset } => {
                write!(f, "file offset {offset:#x} lies inside the pages header")
            }
            Self::PastEof {
                offset,
                nr_pages,
                file_len,
            } => write!(
                f,
                "{nr_pages} pages at file offset {offset:#x} run past the end of the file ({file_len} bytes)"
            ),
            Self::Overlaps { other_vaddr } => {
                write!(f, "overlaps the run at {other_vaddr:#x} in the file")
            }
            Self::Checksum => write!(f, "checksum mismatch (file is corrupt)"),
        }
    }
}
