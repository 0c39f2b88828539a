//! The kind tag in each image header: which message the payload holds.

use std::fmt;

/// Which message an image file holds. The numbers are written to disk: never reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ImageKind {
    /// `inventory.img`: [`crate::pb::Inventory`].
    Inventory = 1,
    /// `pstree.img`: [`crate::pb::ProcessTree`].
    ProcessTree = 2,
    /// `core-<pid>.img`: [`crate::pb::Core`].
    Core = 3,
    /// `mm-<pid>.img`: [`crate::pb::Mm`].
    Mm = 4,
    /// `pagemap-<pid>.img`: [`crate::pb::PageMap`].
    PageMap = 5,
    /// `files.img`: [`crate::pb::FileTable`].
    FileTable = 6,
    /// `fs-<pid>.img`: [`crate::pb::FsState`].
    FsState = 7,
}

impl ImageKind {
    /// Every kind, in tag order.
    pub const ALL: [ImageKind; 7] = [
        Self::Inventory,
        Self::ProcessTree,
        Self::Core,
        Self::Mm,
        Self::PageMap,
        Self::FileTable,
        Self::FsState,
    ];

    /// The tag written in the header.
    pub fn tag(self) -> u32 {
        self as u32
    }

    /// The kind with this tag, if this build knows it.
    pub fn from_tag(tag: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.tag() == tag)
    }

    /// Short name, as in the file names (`core`, `pagemap`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Inventory => "inventory",
            Self::ProcessTree => "pstree",
            Self::Core => "core",
            Self::Mm => "mm",
            Self::PageMap => "pagemap",
            Self::FileTable => "files",
            Self::FsState => "fs",
        }
    }
}

impl fmt::Display for ImageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A tag from a file, by name when known (for error messages).
pub(crate) fn describe_tag(tag: u32) -> String {
    match ImageKind::from_tag(tag) {
        Some(kind) => format!("a {kind} image"),
        None => format!("unknown kind {tag}"),
    }
}
