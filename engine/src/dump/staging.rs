//! The directory a dump writes into: a hidden sibling of the target, renamed
//! into place only when every image is complete, so a crash or an error
//! never leaves something that looks like a good checkpoint.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A dump's images while they are being written.
pub struct Staging {
    target: PathBuf,
    tmp: PathBuf,
    committed: bool,
}

impl Staging {
    /// Prepares to write a checkpoint into `target`, which must not exist or
    /// be empty.
    pub fn create(target: &Path) -> Result<Staging> {
        if let Ok(mut entries) = std::fs::read_dir(target) {
            if entries.next().is_some() {
                return Err(Error::DirNotEmpty {
                    path: target.to_path_buf(),
                });
            }
        }
        let name = target
            .file_name()
            .ok_or_else(|| Error::io(target, std::io::Error::other("not a directory name")))?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = parent.join(format!(
            ".{}.rcr-partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Staging {
            target: target.to_path_buf(),
            tmp,
            committed: false,
        })
    }

    /// Where the images go for now.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Makes the checkpoint visible under its real name.
    pub fn commit(mut self) -> Result<()> {
        if self.target.exists() {
            std::fs::remove_dir(&self.target).map_err(|e| Error::io(&self.target, e))?;
        }
        std::fs::rename(&self.tmp, &self.target).map_err(|e| Error::io(&self.target, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_renames_and_drop_cleans() {
        let base = std::env::temp_dir().join(format!("rcr-staging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let target = base.join("ckpt");
        let s = Staging::create(&target).unwrap();
        std::fs::write(s.path().join("x"), b"1").unwrap();
        let tmp = s.path().to_path_buf();
        drop(s);
        assert!(!tmp.exists() && !target.exists());
        let s = Staging::create(&target).unwrap();
        std::fs::write(s.path().join("x"), b"1").unwrap();
        s.commit().unwrap();
        assert!(target.join("x").exists());
        assert!(matches!(
            Staging::create(&target),
            Err(Error::DirNotEmpty { .. })
        ));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
