//! Loading a checkpoint and checking it whole before anything is created:
//! versions, checksums (page data included), and every cross-reference.

use crate::error::{Error, Result};
use crate::objects::{files, memory};
use rcr_images::pb::{self, VmaKind};
use rcr_images::{self as images, ImageDir};
use std::path::{Path, PathBuf};

/// Everything a single-process checkpoint holds, checked.
pub struct Checkpoint {
    pub inventory: pb::Inventory,
    pub process: pb::ProcessEntry,
    pub core: pb::Core,
    pub mm: pb::Mm,
    pub pagemap: pb::PageMap,
    pub fs: pb::FsState,
    pub files: pb::FileTable,
    pub pages_path: PathBuf,
}

/// Reads and checks every image in `dir`.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    if !dir.is_dir() {
        return Err(Error::NoImageDir {
            path: dir.to_path_buf(),
        });
    }
    let d = ImageDir::new(dir);
    let inventory: pb::Inventory = images::read(&d.inventory())?;
    let tree: pb::ProcessTree = images::read(&d.pstree())?;
    let invalid = |what: String| Error::Invalid {
        path: dir.to_path_buf(),
        what,
    };
    let [process] = tree.processes.as_slice() else {
        return Err(invalid(format!(
            "it holds {} processes; restoring process trees is not supported yet",
            tree.processes.len()
        )));
    };
    if process.pid != inventory.root_pid {
        return Err(invalid(format!(
            "the process tree's root {} is not the inventory's {}",
            process.pid, inventory.root_pid
        )));
    }
    let pid = process.pid;
    let core: pb::Core = images::read(&d.core(pid))?;
    let mm: pb::Mm = images::read(&d.mm(pid))?;
    let pagemap: pb::PageMap = images::read(&d.pagemap(pid))?;
    let fs: pb::FsState = images::read(&d.fs(pid))?;
    let file_table: pb::FileTable = images::read(&d.files())?;
    let pages_path = d.pages(pid);
    images::pages::verify_runs(&pages_path, &pagemap)?;
    let ckpt = Checkpoint {
        inventory,
        process: process.clone(),
        core,
        mm,
        pagemap,
        fs,
        files: file_table,
        pages_path,
    };
    check_references(&ckpt).map_err(invalid)?;
    Ok(ckpt)
}

fn check_references(c: &Checkpoint) -> std::result::Result<(), String> {
    let pid = c.process.pid;
    if c.core.pid != pid {
        return Err(format!("core-{pid}.img describes pid {}", c.core.pid));
    }
    if c.core.threads.first().map(|t| t.tid) != Some(pid) {
        return Err(format!("process {pid}'s first thread is not its leader"));
    }
    let mut tids = std::collections::HashSet::new();
    if let Some(t) = c
        .core
        .threads
        .iter()
        .find(|t| t.tid <= 0 || !tids.insert(t.tid))
    {
        return Err(format!(
            "process {pid} lists thread {} twice or with a bad id",
            t.tid
        ));
    }
    memory::validate(&c.mm.vmas, &c.pagemap.runs)?;
    let has = |id: u32| files::reg_by_id(&c.files, id).is_some();
    for v in &c.mm.vmas {
        let file_backed = matches!(v.kind(), VmaKind::FilePrivate | VmaKind::FileShared);
        if file_backed && !has(v.file_id) {
            return Err(format!(
                "VMA {:#x} maps file id {} which is not stored",
                v.start, v.file_id
            ));
        }
        if v.kind() == VmaKind::Unspecified {
            return Err(format!("VMA {:#x} has no kind", v.start));
        }
    }
    if c.mm.exe_file_id != 0 && !has(c.mm.exe_file_id) {
        return Err(format!(
            "the exe file id {} is not stored",
            c.mm.exe_file_id
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for fd in &c.fs.fds {
        if fd.fd < 0 || !seen.insert(fd.fd) {
            return Err(format!("fd {} is negative or stored twice", fd.fd));
        }
        if files::file_by_id(&c.files, fd.file_id).is_none() {
            return Err(format!(
                "fd {} refers to file id {} which is not stored",
                fd.fd, fd.file_id
            ));
        }
    }
    files::check_table(&c.files, &c.fs.fds)
}
