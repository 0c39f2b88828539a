//! What the caller may give a restored task. rcr may run as root or as a
//! plain user through an `rcr` binary carrying file capabilities
//! (`CAP_CHECKPOINT_RESTORE`); either way the identity in an image is
//! checked against the caller's, never trusted, and the new task, which
//! starts as a copy of rcr, gets the saved capabilities instead of rcr's.

use crate::error::{Error, Result};
use crate::infect::remote::RemoteTask;
use crate::restore::load::Checkpoint;
use rcr_images::pb;
use std::collections::BTreeMap;
use std::path::Path;

/// `CAP_CHECKPOINT_RESTORE`: `clone3` with `set_tid`, `ns_last_pid`, map_files.
pub const CAP_CHECKPOINT_RESTORE: u32 = 40;
/// `CAP_SYS_PTRACE`: tracing processes of other users or under Yama.
pub const CAP_SYS_PTRACE: u32 = 19;

/// Names of the capabilities, by number (`<linux/capability.h>`).
const NAMES: [&str; 41] = [
    "cap_chown",
    "cap_dac_override",
    "cap_dac_read_search",
    "cap_fowner",
    "cap_fsetid",
    "cap_kill",
    "cap_setgid",
    "cap_setuid",
    "cap_setpcap",
    "cap_linux_immutable",
    "cap_net_bind_service",
    "cap_net_broadcast",
    "cap_net_admin",
    "cap_net_raw",
    "cap_ipc_lock",
    "cap_ipc_owner",
    "cap_sys_module",
    "cap_sys_rawio",
    "cap_sys_chroot",
    "cap_sys_ptrace",
    "cap_sys_pacct",
    "cap_sys_admin",
    "cap_sys_boot",
    "cap_sys_nice",
    "cap_sys_resource",
    "cap_sys_time",
    "cap_sys_tty_config",
    "cap_mknod",
    "cap_lease",
    "cap_audit_write",
    "cap_audit_control",
    "cap_setfcap",
    "cap_mac_override",
    "cap_mac_admin",
    "cap_syslog",
    "cap_wake_alarm",
    "cap_block_suspend",
    "cap_audit_read",
    "cap_perfmon",
    "cap_bpf",
    "cap_checkpoint_restore",
];

/// The names of the capabilities in `set`.
pub fn cap_names(set: u64) -> Vec<String> {
    (0..64)
        .filter(|b| set & (1 << b) != 0)
        .map(|b| NAMES.get(b).map_or(format!("cap_{b}"), |n| n.to_string()))
        .collect()
}

const CAP_SYS_ADMIN: u32 = 21;

/// A restore cannot work without CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN)
/// in rcr's user namespace: neither `set_tid` nor `ns_last_pid` gives pids
/// back, and `PR_SET_MM_MAP` refuses the memory layout. Said before
/// anything is tried (spinning pids would be slow, then fail anyway).
pub fn require_restore_caps() -> Result<()> {
    let eff = CapSets::own().eff;
    if eff & (1 << CAP_CHECKPOINT_RESTORE | 1 << CAP_SYS_ADMIN) != 0 {
        return Ok(());
    }
    Err(Error::Preflight(
        "restoring needs CAP_CHECKPOINT_RESTORE (clone3 with set_tid for the saved pids, \
         PR_SET_MM_MAP for the memory layout): give rcr the file capability \
         (setcap cap_checkpoint_restore+ep rcr) or restore under `rcr run`"
            .into(),
    ))
}

/// rcr's own capability sets, from `/proc/self/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSets {
    pub inh: u64,
    pub prm: u64,
    pub eff: u64,
    pub bnd: u64,
    pub amb: u64,
}

impl CapSets {
    /// The sets of the calling thread.
    pub fn own() -> CapSets {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(0)
        };
        CapSets {
            inh: field("CapInh:"),
            prm: field("CapPrm:"),
            eff: field("CapEff:"),
            bnd: field("CapBnd:"),
            amb: field("CapAmb:"),
        }
    }
}

/// The `security.capability` extended attribute granting `permitted`
/// (effective on exec), revision 2 (`VFS_CAP_REVISION_2`).
pub fn file_caps_xattr(permitted: u64) -> Vec<u8> {
    const REVISION_2_EFFECTIVE: u32 = 0x0200_0001;
    [
        REVISION_2_EFFECTIVE,
        permitted as u32,
        0,
        (permitted >> 32) as u32,
        0,
    ]
    .iter()
    .flat_map(|w| w.to_le_bytes())
    .collect()
}

/// The permitted set a `security.capability` attribute grants (revision 2
/// or 3; revision 1 holds only the low 32 bits).
pub fn parse_file_caps(xattr: &[u8]) -> Option<u64> {
    let word = |i: usize| {
        xattr
            .get(i * 4..i * 4 + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let low = u64::from(word(1)?);
    match word(0)? >> 24 {
        1 => Some(low),
        2 | 3 => Some(low | u64::from(word(3)?) << 32),
        _ => None,
    }
}

/// The file capabilities of rcr's own executable, if it carries any.
fn own_file_caps() -> u64 {
    let mut buf = [0u8; 32];
    let path = c"/proc/self/exe";
    // SAFETY: getxattr writes at most `buf.len()` bytes into `buf`.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"security.capability".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    usize::try_from(n)
        .ok()
        .and_then(|n| parse_file_caps(&buf[..n]))
        .unwrap_or(0)
}

/// Who runs the restore and what they may hand out.
#[derive(Clone, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Capabilities a restored task may hold: rcr's permitted set, less
    /// what rcr's binary grants a plain user (those are for rcr's own work).
    pub caps: u64,
}

impl Caller {
    /// The caller of this rcr.
    pub fn current() -> Caller {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let own = CapSets::own();
        let borrowed = if uid == 0 { 0 } else { own_file_caps() };
        Caller {
            uid,
            gid,
            groups: nix::unistd::getgroups()
                .map(|g| g.iter().map(|g| g.as_raw()).collect())
                .unwrap_or_default(),
            caps: own.prm & !borrowed,
        }
    }
}

/// Refuses an image whose process `pid` would get an identity or
/// privileges beyond the caller's: the new task keeps rcr's uids, gids and
/// groups, so they must be the saved ones, and its capabilities must be a
/// part of what the caller may hand out.
pub fn check_creds(pid: i32, c: &pb::Creds, caller: &Caller) -> Result<()> {
    let refuse = |what: String| Err(Error::Privilege { pid, what });
    let uids = [c.uid, c.euid, c.suid, c.fsuid];
    if let Some(u) = uids.iter().find(|&&u| u != caller.uid) {
        return refuse(format!(
            "the image has uid {u} (uids {uids:?}) but rcr runs as uid {}; \
             a restore never gives a process another user's identity",
            caller.uid
        ));
    }
    let gids = [c.gid, c.egid, c.sgid, c.fsgid];
    if let Some(g) = gids.iter().find(|&&g| g != caller.gid) {
        return refuse(format!(
            "the image has gid {g} (gids {gids:?}) but rcr runs as gid {}",
            caller.gid
        ));
    }
    let mut saved_groups = c.groups.clone();
    let mut own_groups = caller.groups.clone();
    saved_groups.sort_unstable();
    own_groups.sort_unstable();
    if saved_groups != own_groups {
        return refuse(format!(
            "the image has supplementary groups {:?} but rcr runs with {:?}",
            c.groups, caller.groups
        ));
    }
    let beyond = (c.cap_prm | c.cap_eff | c.cap_inh | c.cap_amb) & !caller.caps;
    if beyond != 0 {
        return refuse(format!(
            "the image holds capabilities the caller does not have: {}",
            cap_names(beyond).join(", ")
        ));
    }
    if c.cap_amb != 0 {
        return Err(Error::Unsupported {
            pid,
            what: format!("ambient capabilities ({})", cap_names(c.cap_amb).join(", ")),
        });
    }
    Ok(())
}

/// Checks every live process of `ckpt` (in `dir`) against the caller and
/// returns, by pid, the credentials of those whose capabilities differ
/// from rcr's own: their tasks get the saved ones at the end.
pub(crate) fn checked_caps(ckpt: &Checkpoint, dir: &Path) -> Result<BTreeMap<i32, pb::Creds>> {
    let caller = Caller::current();
    let own = CapSets::own();
    let mut out = BTreeMap::new();
    for p in &ckpt.processes {
        let Some(images) = &p.images else { continue };
        let pid = p.entry.pid;
        let c = images.core.creds.as_ref().ok_or_else(|| Error::Invalid {
            path: dir.to_path_buf(),
            what: format!("process {pid} has no credentials"),
        })?;
        check_creds(pid, c, &caller)?;
        if (c.cap_inh, c.cap_prm, c.cap_eff) != (own.inh, own.prm, own.eff) {
            out.insert(pid, c.clone());
        }
    }
    Ok(out)
}

/// `struct __user_cap_header_struct` and two `__user_cap_data_struct`s
/// (`_LINUX_CAPABILITY_VERSION_3`), as capset reads them.
fn capset_bytes(pid: i32, c: &pb::Creds) -> [u8; 32] {
    const VERSION_3: u32 = 0x2008_0522;
    let words = [
        VERSION_3,
        pid as u32,
        c.cap_eff as u32,
        c.cap_prm as u32,
        c.cap_inh as u32,
        (c.cap_eff >> 32) as u32,
        (c.cap_prm >> 32) as u32,
        (c.cap_inh >> 32) as u32,
    ];
    let mut out = [0u8; 32];
    for (chunk, w) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// Gives thread `tid`, stopped under ptrace after its restore, the saved
/// capabilities instead of the ones it inherited from rcr. `scratch` is
/// writable memory of the task (the restorer's hole) for capset's arguments.
pub fn set_task_caps(tid: i32, c: &pb::Creds, scratch: u64) -> Result<()> {
    let bytes = capset_bytes(0, c);
    let local = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let remote = libc::iovec {
        iov_base: scratch as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: copies our local buffer into the traced task's own hole.
    let n = unsafe { libc::process_vm_writev(tid, &local, 1, &remote, 1, 0) };
    if n != bytes.len() as isize {
        return Err(Error::sys(
            tid,
            "process_vm_writev (capabilities)",
            nix::errno::Errno::last(),
        ));
    }
    let mut task = RemoteTask::new(tid)?;
    let ret = task.syscall_ok(
        "capset",
        libc::SYS_capset,
        [scratch, scratch + 8, 0, 0, 0, 0],
    );
    task.restore_regs()?;
    ret?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_caps_round_trip() {
        let set = 1 << CAP_CHECKPOINT_RESTORE | 1 << CAP_SYS_PTRACE;
        let x = file_caps_xattr(set);
        assert_eq!(x.len(), 20);
        assert_eq!(parse_file_caps(&x), Some(set));
        assert_eq!(parse_file_caps(&x[..3]), None);
    }

    #[test]
    fn names_of_caps() {
        assert_eq!(
            cap_names(1 << CAP_CHECKPOINT_RESTORE | 1),
            ["cap_chown", "cap_checkpoint_restore"]
        );
    }

    fn caller(uid: u32, caps: u64) -> Caller {
        Caller {
            uid,
            gid: uid,
            groups: vec![],
            caps,
        }
    }

    #[test]
    fn foreign_identity_and_extra_caps_refused() {
        let mine = pb::Creds {
            uid: 1000,
            euid: 1000,
            suid: 1000,
            fsuid: 1000,
            gid: 1000,
            egid: 1000,
            sgid: 1000,
            fsgid: 1000,
            ..Default::default()
        };
        check_creds(7, &mine, &caller(1000, 0)).unwrap();
        let root = pb::Creds {
            euid: 0,
            ..mine.clone()
        };
        let e = check_creds(7, &root, &caller(1000, 0)).unwrap_err();
        assert!(e.to_string().contains("uid 0"), "{e}");
        let capable = pb::Creds {
            cap_prm: 1 << CAP_SYS_PTRACE,
            ..mine
        };
        let e = check_creds(7, &capable, &caller(1000, 0)).unwrap_err();
        assert!(e.to_string().contains("cap_sys_ptrace"), "{e}");
        check_creds(7, &capable, &caller(1000, 1 << CAP_SYS_PTRACE)).unwrap();
    }
}
