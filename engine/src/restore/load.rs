//! Loading a checkpoint and checking it whole before anything is created:
//! versions, checksums (page data included), and every cross-reference.
//! Processes are read and checked in parallel (see [`crate::par`]).

use crate::error::{Error, Result};
use crate::objects::{files, memory, pstree};
use rcr_images::pb::{self, VmaKind};
use rcr_images::{self as images, ImageDir};
use std::path::{Path, PathBuf};

/// Everything a checkpoint holds, checked.
pub struct Checkpoint {
    pub inventory: pb::Inventory,
    /// The tree, root first, parents before children.
    pub processes: Vec<Process>,
    pub files: pb::FileTable,
    /// `objdata.img`, its runs checked.
    pub objdata: PathBuf,
}

/// One process: its ids, and its images unless it is a zombie.
pub struct Process {
    pub entry: pb::ProcessEntry,
    pub images: Option<ProcessImages>,
}

/// The images of one live process.
pub struct ProcessImages {
    pub core: pb::Core,
    pub mm: pb::Mm,
    pub pagemap: pb::PageMap,
    pub fs: pb::FsState,
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
    pstree::check(&tree.processes)
        .and_then(|()| crate::objects::pid_ns::check(&tree.processes))
        .map_err(invalid)?;
    if tree.processes[0].pid != inventory.root_pid {
        return Err(invalid(format!(
            "the process tree's root {} is not the inventory's {}",
            tree.processes[0].pid, inventory.root_pid
        )));
    }
    let files: pb::FileTable = images::read(&d.files())?;
    // Processes are read and their pages checksummed several at a time;
    // nothing is created before all of them passed.
    let processes = crate::par::map(&tree.processes, |entry| {
        let images = if entry.zombie {
            None
        } else {
            let pid = entry.pid;
            let images = ProcessImages {
                core: images::read(&d.core(pid))?,
                mm: images::read(&d.mm(pid))?,
                pagemap: images::read(&d.pagemap(pid))?,
                fs: images::read(&d.fs(pid))?,
                pages_path: d.pages(pid),
            };
            images::pages::verify_runs(&images.pages_path, &images.pagemap)?;
            check_references(entry, &images, &files).map_err(invalid)?;
            Some(images)
        };
        Ok(Process {
            entry: entry.clone(),
            images,
        })
    })?;
    let all_fds: Vec<pb::Fd> = processes
        .iter()
        .filter_map(|p| p.images.as_ref())
        .flat_map(|i| i.fs.fds.iter().cloned())
        .collect();
    files::check_table(&files, &all_fds).map_err(invalid)?;
    let objdata = d.objdata();
    images::objdata::verify(&objdata, &data_objects(&files, &inventory))?;
    Ok(Checkpoint {
        inventory,
        processes,
        files,
        objdata,
    })
}

/// The size and data runs of every object whose content is in objdata.img.
fn data_objects<'a>(
    files: &'a pb::FileTable,
    inventory: &'a pb::Inventory,
) -> Vec<(u64, &'a [pb::DataRun])> {
    let shmem = files.shmem.iter().map(|s| (s.size, &s.runs[..]));
    let memfds = files.memfds.iter().map(|m| (m.size, &m.runs[..]));
    let deleted = files.deleted.iter().map(|d| (d.size, &d.runs[..]));
    let posix = files.posix_shm.iter().map(|p| (p.size, &p.runs[..]));
    let sysv = inventory.sysv.iter().flat_map(|s| &s.shm);
    let sysv = sysv.map(|s| (s.size, &s.runs[..]));
    let objects = shmem.chain(memfds).chain(deleted).chain(posix);
    objects.chain(sysv).collect()
}

fn check_references(
    entry: &pb::ProcessEntry,
    c: &ProcessImages,
    files: &pb::FileTable,
) -> std::result::Result<(), String> {
    let pid = entry.pid;
    if c.core.pid != pid {
        return Err(format!("core-{pid}.img describes pid {}", c.core.pid));
    }
    let tids: Vec<i32> = c.core.threads.iter().map(|t| t.tid).collect();
    if tids != entry.threads {
        return Err(format!(
            "process {pid}'s threads {tids:?} are not the tree's {:?}",
            entry.threads
        ));
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
    let has = |id: u32| files::reg_by_id(files, id).is_some();
    for v in &c.mm.vmas {
        let file_backed = matches!(v.kind(), VmaKind::FilePrivate | VmaKind::FileShared);
        if file_backed && !files::mappable(files, v.file_id) {
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
    crate::objects::locks::check(&c.fs)?;
    let mut seen = std::collections::HashSet::new();
    for fd in &c.fs.fds {
        if fd.fd < 0 || !seen.insert(fd.fd) {
            return Err(format!("fd {} is negative or stored twice", fd.fd));
        }
        if files::file_by_id(files, fd.file_id).is_none() {
            return Err(format!(
                "fd {} refers to file id {} which is not stored",
                fd.fd, fd.file_id
            ));
        }
    }
    Ok(())
}
