//! POSIX shared memory: `shm_open` objects are files in `/dev/shm`, opened
//! and mapped like any file. What makes them special is where they live:
//! tmpfs is gone after a reboot and absent on another host, so the dump
//! saves each object the tree opens or maps (content, mode, owner) once,
//! and the restore recreates a missing one before the files are reopened.
//! An object of that name that exists with other content is refused: it is
//! not the one the tree left.

use super::objdata;
use crate::error::{Error, Result};
use rcr_images::pb;
use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Where `shm_open` puts its objects.
const SHM_DIR: &str = "/dev/shm/";

/// Dump side: every object of `/dev/shm` that `table`'s files name, once.
/// `pid` is the tree's root, named if an object cannot be read. The content
/// goes to `data`.
pub fn dump(
    pid: i32,
    table: &pb::FileTable,
    data: &mut objdata::Writer,
) -> Result<Vec<pb::PosixShm>> {
    let paths: BTreeSet<&str> = table
        .files
        .iter()
        .filter_map(|f| match &f.kind {
            Some(pb::file_entry::Kind::Reg(r)) if r.path.starts_with(SHM_DIR) => {
                Some(r.path.as_str())
            }
            _ => None,
        })
        .collect();
    paths
        .into_iter()
        .map(|path| {
            let unreadable = |e: std::io::Error| Error::Unsupported {
                pid,
                what: format!("the POSIX shared memory object {path}, which cannot be read ({e})"),
            };
            let file = std::fs::File::open(path).map_err(unreadable)?;
            let meta = file.metadata().map_err(unreadable)?;
            Ok(pb::PosixShm {
                path: path.to_string(),
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                size: meta.len(),
                runs: data.save(&file, path, meta.len())?,
            })
        })
        .collect()
}

/// Restore side: makes sure each saved object exists with its content,
/// read from the object data file `data`.
pub fn restore(saved: &[pb::PosixShm], data: &Path) -> Result<()> {
    for o in saved {
        let path = Path::new(&o.path);
        match std::fs::File::open(path) {
            Ok(now) if objdata::matches(data, &o.runs, o.size, &now, &o.path)? => continue,
            Ok(_) => {
                return Err(Error::Preflight(format!(
                    "the POSIX shared memory object {} exists with other content than \
                     the checkpoint's; remove it to restore the saved one",
                    o.path
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => recreate(o, data)?,
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok(())
}

fn recreate(o: &pb::PosixShm, data: &Path) -> Result<()> {
    let err = |e| Error::io(&o.path, e);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(o.mode)
        .open(&o.path)
        .map_err(err)?;
    f.set_len(o.size).map_err(err)?;
    objdata::fill(data, &o.runs, &f, &o.path)?;
    std::os::unix::fs::fchown(&f, Some(o.uid), Some(o.gid)).map_err(err)?;
    // The umask may have narrowed the mode at creation.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(o.mode))
        .map_err(err)
}
