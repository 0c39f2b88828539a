//! System V IPC: shared memory segments, semaphore sets and message queues.
//!
//! Which objects belong to the checkpoint: those of rcr's IPC namespace
//! (the tree must share it) that the tree attaches (shm) or whose last
//! users, as the kernel records them in `/proc/sysvipc/*`, are processes of
//! the tree: a segment's creator or last attacher, a queue's last sender or
//! receiver, a semaphore's last operator. Objects the tree never touched
//! are not its state and are left alone.
//!
//! The dump saves keys, ids, owner, mode and contents (segment bytes in
//! objdata.img, semaphore values, messages read with `MSG_COPY` without
//! consuming them).
//! When the dump kills the tree it removes these objects too: they belong to
//! the checkpoint now. The restore recreates each with its id (writing
//! `/proc/sys/kernel/{shm,sem,msg}_next_id` first), refuses when an object
//! with that id or key exists, and removes what it created if the restore
//! fails. An attached segment comes back as a shared mapping of the
//! segment's own memory object (opened through `/proc/self/map_files` while
//! rcr attaches it), so writes stay visible both ways; such a mapping is not
//! a SysV attachment: `shmdt` on it fails and it does not count in
//! `shm_nattch` (so the dump refuses a segment only when it has more
//! attachments than the tree has mappings of it). A segment removed while
//! mapped is no IPC object any more, only shared memory, and is saved as
//! such.

use super::objdata;
use crate::error::{Error, Result};
use crate::proc::maps::MapName;
use rcr_images::pb;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;

/// `shm_perm.mode` bit of a segment removed while still attached.
const SHM_DEST: u32 = 0o1000;

/// The kinds of objects, with what differs between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Shm,
    Sem,
    Msg,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Shm => "SysV shared memory segment",
            Kind::Sem => "SysV semaphore set",
            Kind::Msg => "SysV message queue",
        }
    }

    fn proc_table(self) -> &'static str {
        match self {
            Kind::Shm => "/proc/sysvipc/shm",
            Kind::Sem => "/proc/sysvipc/sem",
            Kind::Msg => "/proc/sysvipc/msg",
        }
    }

    fn next_id_path(self) -> &'static str {
        match self {
            Kind::Shm => "/proc/sys/kernel/shm_next_id",
            Kind::Sem => "/proc/sys/kernel/sem_next_id",
            Kind::Msg => "/proc/sys/kernel/msg_next_id",
        }
    }

    /// Columns of `/proc/sysvipc/*`: (uid, gid) and the pids of the
    /// object's last users.
    fn columns(self) -> (usize, &'static [usize]) {
        match self {
            // key shmid perms size cpid lpid nattch uid gid ...
            Kind::Shm => (7, &[4, 5]),
            // key semid perms nsems uid gid ...
            Kind::Sem => (4, &[]),
            // key msqid perms cbytes qnum lspid lrpid uid gid ...
            Kind::Msg => (7, &[5, 6]),
        }
    }

    fn remove(self, id: i32) -> i64 {
        // SAFETY: IPC_RMID takes no buffer.
        unsafe {
            match self {
                Kind::Shm => libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) as i64,
                Kind::Sem => libc::semctl(id, 0, libc::IPC_RMID) as i64,
                Kind::Msg => libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) as i64,
            }
        }
    }
}

/// One row of a `/proc/sysvipc/*` table.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    perm: pb::SysvPerm,
    /// Pids of the object's last users (0: none).
    pids: Vec<i32>,
    /// shm: size; sem: nsems; msg: qnum.
    count: u64,
    /// shm: nattch.
    nattch: u64,
}

/// Parses a `/proc/sysvipc/*` table (a header line, then one object a line).
fn parse_table(kind: Kind, text: &str) -> std::result::Result<Vec<Row>, String> {
    let (uid_col, pid_cols) = kind.columns();
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize| -> std::result::Result<i64, String> {
                f.get(i)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("{}: bad line {line:?}", kind.proc_table()))
            };
            let mode = f
                .get(2)
                .and_then(|s| u32::from_str_radix(s, 8).ok())
                .ok_or_else(|| format!("{}: bad mode in {line:?}", kind.proc_table()))?;
            let count_col = if kind == Kind::Msg { 4 } else { 3 };
            Ok(Row {
                perm: pb::SysvPerm {
                    key: num(0)? as i32,
                    id: num(1)? as i32,
                    uid: num(uid_col)? as u32,
                    gid: num(uid_col + 1)? as u32,
                    mode,
                },
                pids: pid_cols
                    .iter()
                    .map(|&c| num(c).map(|p| p as i32))
                    .collect::<std::result::Result<_, _>>()?,
                count: num(count_col)? as u64,
                nattch: if kind == Kind::Shm { num(6)? as u64 } else { 0 },
            })
        })
        .collect()
}

fn read_table(kind: Kind) -> Result<Vec<Row>> {
    let text =
        std::fs::read_to_string(kind.proc_table()).map_err(|e| Error::io(kind.proc_table(), e))?;
    parse_table(kind, &text).map_err(Error::Preflight)
}

fn sys_err(kind: Kind, id: i32, what: &str) -> Error {
    Error::Preflight(format!(
        "{} id {id}: {what}: {}",
        kind.name(),
        std::io::Error::last_os_error()
    ))
}

/// Dump side: the SysV objects of the tree `pids`. Refuses a tree in
/// another IPC namespace, and segments also attached outside the tree.
/// Segment content goes to `data`.
pub fn dump(pids: &[i32], data: &mut objdata::Writer) -> Result<pb::SysvIpc> {
    let own_ns =
        std::fs::read_link("/proc/self/ns/ipc").map_err(|e| Error::io("/proc/self/ns/ipc", e))?;
    for &pid in pids {
        let path = format!("/proc/{pid}/ns/ipc");
        if std::fs::read_link(&path).map_err(|e| Error::io(&path, e))? != own_ns {
            return Err(Error::Unsupported {
                pid,
                what: "an IPC namespace other than rcr's".into(),
            });
        }
    }
    let mut attached: BTreeMap<i32, u64> = BTreeMap::new();
    for &pid in pids {
        let maps = crate::proc::maps::read_maps(pid)?;
        for m in maps.iter().filter(|m| m.shared && is_segment(&m.name)) {
            *attached.entry(m.inode as i32).or_default() += 1;
        }
    }
    let ours = |r: &Row| r.pids.iter().any(|p| pids.contains(p));
    let mut out = pb::SysvIpc::default();
    for r in read_table(Kind::Shm)? {
        let maps = attached.get(&r.perm.id).copied().unwrap_or(0);
        if maps == 0 && !ours(&r) {
            continue;
        }
        // A mapping restored by rcr is not counted as an attachment, so
        // only more attachments than the tree's mappings betray another user.
        if r.nattch > maps {
            return Err(Error::Unsupported {
                pid: pids[0],
                what: format!(
                    "{} id {} (key {}): attached {} times, {maps} of them in the tree",
                    Kind::Shm.name(),
                    r.perm.id,
                    r.perm.key,
                    r.nattch
                ),
            });
        }
        if r.perm.mode & SHM_DEST != 0 {
            // Its VMAs are plain shared memory (see `removed`).
            continue;
        }
        out.shm.push(pb::SysvShm {
            runs: save_segment(r.perm.id, r.count, data)?,
            size: r.count,
            perm: Some(r.perm),
        });
    }
    for r in read_table(Kind::Sem)? {
        let Some((values, last)) = read_semaphores(r.perm.id, r.count as usize)? else {
            continue;
        };
        if last.iter().any(|p| pids.contains(p)) {
            out.sem.push(pb::SysvSem {
                perm: Some(r.perm),
                values,
            });
        }
    }
    for r in read_table(Kind::Msg)?.into_iter().filter(|r| ours(r)) {
        out.msg.push(read_queue(r)?);
    }
    Ok(out)
}

/// Whether a mapping is a SysV shm attachment (its inode is the segment id).
pub fn is_segment(name: &MapName) -> bool {
    matches!(name, MapName::Path { path, deleted: true } if path.starts_with("/SYSV"))
}

/// Whether segment `id` was removed while mapped: marked `SHM_DEST`, or
/// gone altogether (a mapping rcr restored does not keep it alive). No one
/// can reach it by id any more, so its mappings are saved and restored as
/// plain shared anonymous memory.
pub fn removed(id: i32) -> bool {
    // SAFETY: shmid_ds is plain data; IPC_STAT fills it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes into the struct we own.
    let listed = unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } == 0;
    !listed || u32::from(ds.shm_perm.mode) & SHM_DEST != 0
}

/// Attaches `id` in rcr, with `flags`, for the duration of `f`.
fn with_attached<T>(id: i32, flags: i32, f: impl FnOnce(*mut libc::c_void) -> T) -> Result<T> {
    // SAFETY: a fresh attachment at an address the kernel picks, detached below.
    let addr = unsafe { libc::shmat(id, std::ptr::null(), flags) };
    if addr as isize == -1 {
        return Err(sys_err(Kind::Shm, id, "shmat in rcr"));
    }
    let out = f(addr);
    // SAFETY: detaches exactly the attachment made above.
    unsafe { libc::shmdt(addr) };
    Ok(out)
}

/// Saves segment `id`'s `size` bytes to `data`, read through its object.
fn save_segment(id: i32, size: u64, data: &mut objdata::Writer) -> Result<Vec<pb::DataRun>> {
    let fd = with_attached(id, libc::SHM_RDONLY, |addr| open_mapped(addr as u64, size))??;
    data.save(&File::from(fd), &format!("SysV segment {id}"), size)
}

/// Each semaphore's value and the pid of its last operation; `None` for a
/// set rcr may not read (another user's, so not the tree's: an
/// unprivileged rcr runs as the tree's user).
fn read_semaphores(id: i32, n: usize) -> Result<Option<(Vec<u32>, Vec<i32>)>> {
    let mut values = vec![0u16; n];
    // SAFETY: GETALL writes `nsems` shorts into the array we own.
    if unsafe { libc::semctl(id, 0, libc::GETALL, values.as_mut_ptr()) } < 0 {
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::EACCES) {
            return Ok(None);
        }
        return Err(sys_err(Kind::Sem, id, "semctl GETALL"));
    }
    let last = (0..n)
        // SAFETY: GETPID takes no argument.
        .map(|i| unsafe { libc::semctl(id, i as i32, libc::GETPID) })
        .collect();
    Ok(Some((values.into_iter().map(u32::from).collect(), last)))
}

fn msq_stat(id: i32) -> Result<libc::msqid_ds> {
    // SAFETY: msqid_ds is plain data; IPC_STAT fills it.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes into the struct we own.
    if unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) } < 0 {
        return Err(sys_err(Kind::Msg, id, "msgctl IPC_STAT"));
    }
    Ok(ds)
}

/// Reads a queue's messages without taking them (`MSG_COPY`).
fn read_queue(r: Row) -> Result<pb::SysvMsgQueue> {
    let id = r.perm.id;
    let qbytes = msq_stat(id)?.msg_qbytes;
    let mut buf = vec![0u8; 8 + qbytes as usize];
    let mut messages = Vec::with_capacity(r.count as usize);
    for i in 0..r.count as i64 {
        // SAFETY: receives into the buffer we own, `qbytes` bytes of text
        // after the type.
        let n = unsafe {
            libc::msgrcv(
                id,
                buf.as_mut_ptr().cast(),
                qbytes as usize,
                i,
                libc::IPC_NOWAIT | libc::MSG_COPY,
            )
        };
        if n < 0 {
            return Err(Error::Preflight(format!(
                "{} id {id} (key {}): reading message {i} with MSG_COPY (needs \
                 CONFIG_CHECKPOINT_RESTORE): {}",
                Kind::Msg.name(),
                r.perm.key,
                std::io::Error::last_os_error()
            )));
        }
        let mtype = i64::from_ne_bytes(buf[..8].try_into().expect("8 bytes"));
        messages.push(pb::SysvMsg {
            mtype,
            text: buf[8..8 + n as usize].to_vec(),
        });
    }
    Ok(pb::SysvMsgQueue {
        perm: Some(r.perm),
        qbytes,
        messages,
    })
}

fn all_objects(ipc: &pb::SysvIpc) -> impl Iterator<Item = (Kind, pb::SysvPerm)> + '_ {
    let shm = ipc
        .shm
        .iter()
        .map(|o| (Kind::Shm, o.perm.unwrap_or_default()));
    let sem = ipc
        .sem
        .iter()
        .map(|o| (Kind::Sem, o.perm.unwrap_or_default()));
    let msg = ipc
        .msg
        .iter()
        .map(|o| (Kind::Msg, o.perm.unwrap_or_default()));
    shm.chain(sem).chain(msg)
}

/// Dump side, after the tree is killed: removes the objects it saved.
pub fn remove(ipc: &pb::SysvIpc) -> Result<()> {
    for (kind, perm) in all_objects(ipc) {
        if kind.remove(perm.id) < 0 {
            return Err(sys_err(kind, perm.id, "removing it after the dump"));
        }
    }
    Ok(())
}

/// Restore side: the objects rcr created, removed again on drop unless
/// [`Created::keep`] is called once the tree runs.
#[derive(Default)]
pub struct Created {
    made: Vec<(Kind, i32)>,
    /// Each attached segment's memory object, by id, for the VMAs to map.
    pub segments: BTreeMap<i32, OwnedFd>,
}

impl Created {
    pub fn keep(&mut self) {
        self.made.clear();
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        for &(kind, id) in &self.made {
            kind.remove(id);
        }
    }
}

/// Restore side: recreates every saved object with its id, key, owner,
/// mode and contents (read from the object data file `data`).
pub fn restore(ipc: &pb::SysvIpc, data: &Path) -> Result<Created> {
    let mut created = Created::default();
    for (kind, perm) in all_objects(ipc) {
        if let Some(existing) = read_table(kind)?
            .into_iter()
            .find(|r| r.perm.id == perm.id || (perm.key != 0 && r.perm.key == perm.key))
        {
            return Err(Error::Preflight(format!(
                "{} id {} (key {}) cannot be restored: id {} (key {}) exists on this host",
                kind.name(),
                perm.id,
                perm.key,
                existing.perm.id,
                existing.perm.key
            )));
        }
    }
    for shm in &ipc.shm {
        let perm = shm.perm.unwrap_or_default();
        let id = create(&mut created, Kind::Shm, &perm, |flags| {
            // SAFETY: shmget takes plain integers.
            unsafe { libc::shmget(perm.key, shm.size as usize, flags) }
        })?;
        set_shm_owner(id, &perm)?;
        let file = File::from(with_attached(id, 0, |addr| {
            open_mapped(addr as u64, shm.size)
        })??);
        // Runs lie inside the segment: checked at load.
        objdata::fill(data, &shm.runs, &file, &format!("SysV segment {id}"))?;
        created.segments.insert(id, file.into());
    }
    for sem in &ipc.sem {
        let perm = sem.perm.unwrap_or_default();
        let n = sem.values.len() as i32;
        let id = create(&mut created, Kind::Sem, &perm, |flags| {
            // SAFETY: semget takes plain integers.
            unsafe { libc::semget(perm.key, n, flags) }
        })?;
        let mut values: Vec<u16> = sem.values.iter().map(|&v| v as u16).collect();
        // SAFETY: SETALL reads `nsems` shorts from the array we own.
        if unsafe { libc::semctl(id, 0, libc::SETALL, values.as_mut_ptr()) } < 0 {
            return Err(sys_err(Kind::Sem, id, "semctl SETALL"));
        }
        // SAFETY: semid_ds is plain data; IPC_STAT fills it.
        let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: IPC_STAT and IPC_SET use the struct we own.
        let ok = unsafe {
            libc::semctl(id, 0, libc::IPC_STAT, &mut ds) == 0 && {
                set_perm(&mut ds.sem_perm, &perm);
                libc::semctl(id, 0, libc::IPC_SET, &mut ds) == 0
            }
        };
        if !ok {
            return Err(sys_err(Kind::Sem, id, "semctl IPC_SET"));
        }
    }
    for q in &ipc.msg {
        let perm = q.perm.unwrap_or_default();
        let id = create(&mut created, Kind::Msg, &perm, |flags| {
            // SAFETY: msgget takes plain integers.
            unsafe { libc::msgget(perm.key, flags) }
        })?;
        let mut ds = msq_stat(id)?;
        set_perm(&mut ds.msg_perm, &perm);
        ds.msg_qbytes = q.qbytes;
        // SAFETY: IPC_SET reads the struct we own.
        if unsafe { libc::msgctl(id, libc::IPC_SET, &mut ds) } < 0 {
            return Err(sys_err(
                Kind::Msg,
                id,
                "msgctl IPC_SET (a queue size above msgmnb needs CAP_SYS_RESOURCE)",
            ));
        }
        for m in &q.messages {
            let mut buf = m.mtype.to_ne_bytes().to_vec();
            buf.extend_from_slice(&m.text);
            // SAFETY: sends from the buffer we own: the type, then the text.
            if unsafe { libc::msgsnd(id, buf.as_ptr().cast(), m.text.len(), libc::IPC_NOWAIT) } < 0
            {
                return Err(sys_err(Kind::Msg, id, "msgsnd"));
            }
        }
    }
    Ok(created)
}

fn set_perm(p: &mut libc::ipc_perm, saved: &pb::SysvPerm) {
    p.uid = saved.uid;
    p.gid = saved.gid;
    p.mode = (saved.mode & 0o777) as u16;
}

fn set_shm_owner(id: i32, perm: &pb::SysvPerm) -> Result<()> {
    // SAFETY: shmid_ds is plain data; IPC_STAT fills it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT and IPC_SET use the struct we own.
    let ok = unsafe {
        libc::shmctl(id, libc::IPC_STAT, &mut ds) == 0 && {
            set_perm(&mut ds.shm_perm, perm);
            libc::shmctl(id, libc::IPC_SET, &mut ds) == 0
        }
    };
    if !ok {
        return Err(sys_err(Kind::Shm, id, "shmctl IPC_SET"));
    }
    Ok(())
}

/// Makes one object with the saved id: sets the kernel's next id, calls
/// `get` with the creation flags and checks the id it got.
fn create(
    created: &mut Created,
    kind: Kind,
    perm: &pb::SysvPerm,
    get: impl FnOnce(i32) -> i32,
) -> Result<i32> {
    std::fs::write(kind.next_id_path(), perm.id.to_string()).map_err(|e| {
        Error::Preflight(format!(
            "{} id {}: writing {}: {e} (this needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN)",
            kind.name(),
            perm.id,
            kind.next_id_path()
        ))
    })?;
    let id = get(libc::IPC_CREAT | libc::IPC_EXCL | (perm.mode & 0o777) as i32);
    if id < 0 {
        return Err(sys_err(kind, perm.id, "creating it"));
    }
    created.made.push((kind, id));
    if id != perm.id {
        return Err(Error::Preflight(format!(
            "{} id {}: the kernel gave id {id}",
            kind.name(),
            perm.id
        )));
    }
    Ok(id)
}

/// Opens the memory object behind rcr's own attachment at `start`.
fn open_mapped(start: u64, size: u64) -> Result<OwnedFd> {
    let page = crate::objects::memory::PAGE_SIZE;
    crate::objects::shmem::open_mapping(start, start + size.div_ceil(page) * page, "a SysV segment")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_tables() {
        let shm = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n\
                   0      32769  1600                  8192  4242  4243      2     0     0     0     0 1700000000          0 1700000000                  8192                     0\n";
        let rows = parse_table(Kind::Shm, shm).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].perm.id, 32769);
        assert_eq!(rows[0].perm.mode, 0o1600);
        assert_eq!(rows[0].pids, vec![4242, 4243]);
        assert_eq!((rows[0].count, rows[0].nattch), (8192, 2));
        let sem = "       key      semid perms      nsems   uid   gid  cuid  cgid      otime      ctime\n\
                   1234          5   600          3  1000  1001     0     0          0 1700000000\n";
        let rows = parse_table(Kind::Sem, sem).unwrap();
        assert_eq!(
            (rows[0].perm.key, rows[0].perm.uid, rows[0].perm.gid),
            (1234, 1000, 1001)
        );
        assert_eq!(rows[0].count, 3);
        let msg = "       key      msqid perms      cbytes       qnum lspid lrpid   uid   gid  cuid  cgid      stime      rtime      ctime\n\
                   0          7   644          30          3   900   901     0     0     0     0 0 0 0\n";
        let rows = parse_table(Kind::Msg, msg).unwrap();
        assert_eq!((rows[0].perm.id, rows[0].count), (7, 3));
        assert_eq!(rows[0].pids, vec![900, 901]);
        assert!(parse_table(Kind::Msg, "header\n0 x 644\n").is_err());
    }
}
