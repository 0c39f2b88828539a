//! File names inside a checkpoint directory.

use std::path::{Path, PathBuf};

/// A checkpoint directory: where each image of a checkpoint lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDir {
    path: PathBuf,
}

impl ImageDir {
    /// The checkpoint directory at `path` (nothing is touched on disk).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `inventory.img`.
    pub fn inventory(&self) -> PathBuf {
        self.path.join("inventory.img")
    }

    /// `pstree.img`.
    pub fn pstree(&self) -> PathBuf {
        self.path.join("pstree.img")
    }

    /// `core-<pid>.img`.
    pub fn core(&self, pid: i32) -> PathBuf {
        self.per_task("core", pid)
    }

    /// `mm-<pid>.img`.
    pub fn mm(&self, pid: i32) -> PathBuf {
        self.per_task("mm", pid)
    }

    /// `pagemap-<pid>.img`.
    pub fn pagemap(&self, pid: i32) -> PathBuf {
        self.per_task("pagemap", pid)
    }

    /// `pages-<pid>.img`.
    pub fn pages(&self, pid: i32) -> PathBuf {
        self.per_task("pages", pid)
    }

    /// `files.img`.
    pub fn files(&self) -> PathBuf {
        self.path.join("files.img")
    }

    /// `objdata.img`: the content of shared memory, memfds and deleted files.
    pub fn objdata(&self) -> PathBuf {
        self.path.join("objdata.img")
    }

    /// `fs-<pid>.img`.
    pub fn fs(&self, pid: i32) -> PathBuf {
        self.per_task("fs", pid)
    }

    fn per_task(&self, stem: &str, pid: i32) -> PathBuf {
        self.path.join(format!("{stem}-{pid}.img"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_image() {
        let d = ImageDir::new("/ck");
        assert_eq!(d.path(), Path::new("/ck"));
        assert_eq!(d.inventory(), Path::new("/ck/inventory.img"));
        assert_eq!(d.pstree(), Path::new("/ck/pstree.img"));
        assert_eq!(d.core(42), Path::new("/ck/core-42.img"));
        assert_eq!(d.mm(42), Path::new("/ck/mm-42.img"));
        assert_eq!(d.pagemap(42), Path::new("/ck/pagemap-42.img"));
        assert_eq!(d.pages(42), Path::new("/ck/pages-42.img"));
        assert_eq!(d.files(), Path::new("/ck/files.img"));
        assert_eq!(d.objdata(), Path::new("/ck/objdata.img"));
        assert_eq!(d.fs(7), Path::new("/ck/fs-7.img"));
    }
}
