//! proptest strategies for image messages with arbitrary content.

use proptest::collection::vec;
use proptest::prelude::*;
use rcr_images::pb;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

pub fn gp_regs() -> impl Strategy<Value = pb::GpRegs> {
    vec(any::<u64>(), 27).prop_map(|r| pb::GpRegs {
        r15: r[0],
        r14: r[1],
        r13: r[2],
        r12: r[3],
        rbp: r[4],
        rbx: r[5],
        r11: r[6],
        r10: r[7],
        r9: r[8],
        r8: r[9],
        rax: r[10],
        rcx: r[11],
        rdx: r[12],
        rsi: r[13],
        rdi: r[14],
        orig_rax: r[15],
        rip: r[16],
        cs: r[17],
        eflags: r[18],
        rsp: r[19],
        ss: r[20],
        fs_base: r[21],
        gs_base: r[22],
        ds: r[23],
        es: r[24],
        fs: r[25],
        gs: r[26],
    })
}

fn siginfo() -> impl Strategy<Value = pb::SigInfo> {
    (any::<u32>(), bytes(130)).prop_map(|(signo, raw)| pb::SigInfo { signo, raw })
}

fn thread() -> impl Strategy<Value = pb::ThreadCore> {
    (
        (
            any::<i32>(),
            ".{0,16}",
            proptest::option::of(gp_regs()),
            bytes(1100),
        ),
        (
            any::<u64>(),
            proptest::option::of((any::<u64>(), any::<u64>(), any::<i32>())),
        ),
        vec(siginfo(), 0..3),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        proptest::option::of((any::<u64>(), any::<u32>(), any::<u32>())),
    )
        .prop_map(
            |((tid, comm, regs, xsave), (sigmask, alt), pending, (cct, rl, rll), rseq)| {
                pb::ThreadCore {
                    tid,
                    comm,
                    regs,
                    xsave,
                    sigmask,
                    altstack: alt.map(|(sp, size, flags)| pb::SigAltStack { sp, size, flags }),
                    pending,
                    clear_child_tid: cct,
                    robust_list: rl,
                    robust_list_len: rll,
                    rseq: rseq.map(|(address, length, signature)| pb::Rseq {
                        address,
                        length,
                        signature,
                    }),
                }
            },
        )
}

fn creds() -> impl Strategy<Value = pb::Creds> {
    (
        vec(any::<u32>(), 8),
        vec(any::<u32>(), 0..5),
        vec(any::<u64>(), 5),
    )
        .prop_map(|(ids, groups, caps)| pb::Creds {
            uid: ids[0],
            euid: ids[1],
            suid: ids[2],
            fsuid: ids[3],
            gid: ids[4],
            egid: ids[5],
            sgid: ids[6],
            fsgid: ids[7],
            groups,
            cap_inh: caps[0],
            cap_prm: caps[1],
            cap_eff: caps[2],
            cap_bnd: caps[3],
            cap_amb: caps[4],
        })
}

pub fn core() -> impl Strategy<Value = pb::Core> {
    let sigaction = vec(any::<u64>(), 4).prop_flat_map(|v| {
        (1u32..=64).prop_map(move |signo| pb::SigAction {
            signo,
            handler: v[0],
            flags: v[1],
            restorer: v[2],
            mask: v[3],
        })
    });
    let itimer = (0u32..3, any::<u64>(), any::<u64>()).prop_map(|(which, i, v)| pb::Itimer {
        which,
        interval_us: i,
        value_us: v,
    });
    let rlimit = (0u32..16, any::<u64>(), any::<u64>())
        .prop_map(|(resource, cur, max)| pb::Rlimit { resource, cur, max });
    let posix_timer = (vec(any::<i32>(), 5), any::<u64>(), vec(any::<u64>(), 2)).prop_map(
        |(ints, sigval, times)| pb::PosixTimer {
            id: ints[0],
            clockid: ints[1],
            notify: ints[2],
            signo: ints[3],
            sigval,
            tid: ints[4],
            value_ns: times[0],
            interval_ns: times[1],
        },
    );
    (
        (any::<i32>(), ".{0,16}", vec(thread(), 0..3)),
        (vec(sigaction, 0..4), vec(itimer, 0..3), vec(rlimit, 0..4)),
        (
            any::<u32>(),
            vec(siginfo(), 0..2),
            any::<i32>(),
            any::<u32>(),
            any::<i32>(),
        ),
        (proptest::option::of(creds()), any::<bool>(), any::<i32>()),
        (any::<bool>(), any::<bool>(), vec(posix_timer, 0..3)),
    )
        .prop_map(
            |(
                (pid, comm, threads),
                (sigactions, itimers, rlimits),
                (umask, shared_pending, pdeathsig, personality, exit_signal),
                (creds, cpuid_faulting, dumpable),
                (no_new_privs, child_subreaper, posix_timers),
            )| pb::Core {
                pid,
                comm,
                threads,
                sigactions,
                itimers,
                rlimits,
                umask,
                shared_pending,
                pdeathsig,
                personality,
                exit_signal,
                creds,
                cpuid_faulting,
                dumpable,
                no_new_privs,
                child_subreaper,
                posix_timers,
            },
        )
}

fn vma() -> impl Strategy<Value = pb::Vma> {
    (
        (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>()),
        // Values past the enum's end too: an image from a newer rcr may hold them.
        (0i32..12, any::<u32>(), any::<u64>()),
        (
            ".{0,40}",
            "[a-z ]{0,30}",
            any::<u64>(),
            proptest::option::of(any::<i32>()),
        ),
    )
        .prop_map(
            |(
                (start, end, prot, flags),
                (kind, file_id, pgoff),
                (name, vm_flags, shmem_id, sysv_shmid),
            )| {
                pb::Vma {
                    start,
                    end,
                    prot,
                    flags,
                    kind,
                    file_id,
                    pgoff,
                    name,
                    vm_flags,
                    shmem_id,
                    sysv_shmid,
                }
            },
        )
}

pub fn mm() -> impl Strategy<Value = pb::Mm> {
    (
        vec(vma(), 0..8),
        vec(any::<u64>(), 11),
        vec(any::<u64>(), 0..40),
        any::<u32>(),
    )
        .prop_map(|(vmas, f, auxv, exe_file_id)| pb::Mm {
            vmas,
            start_code: f[0],
            end_code: f[1],
            start_data: f[2],
            end_data: f[3],
            start_brk: f[4],
            brk: f[5],
            start_stack: f[6],
            arg_start: f[7],
            arg_end: f[8],
            env_start: f[9],
            env_end: f[10],
            auxv,
            exe_file_id,
        })
}

pub fn pagemap() -> impl Strategy<Value = pb::PageMap> {
    let run = vec(any::<u64>(), 4).prop_map(|v| pb::PageRun {
        vaddr: v[0],
        nr_pages: v[1],
        offset: v[2],
        checksum: v[3],
        inherited: v[0] % 2 == 1,
    });
    (any::<u64>(), vec(run, 0..20)).prop_map(|(pages_file_size, runs)| pb::PageMap {
        pages_file_size,
        runs,
    })
}

fn reg_file() -> impl Strategy<Value = pb::RegFile> {
    (
        ".{0,60}",
        any::<u32>(),
        vec(any::<u64>(), 6),
        any::<u32>(),
        any::<i64>(),
    )
        .prop_map(|(path, flags, v, mode, mtime_ns)| pb::RegFile {
            path,
            flags,
            pos: v[0],
            mode,
            size: v[1],
            mtime_ns,
            dev: v[2],
            ino: v[3],
            rdev: v[4],
        })
}

pub fn file_table() -> impl Strategy<Value = pb::FileTable> {
    let entry =
        (any::<u32>(), proptest::option::of(reg_file())).prop_map(|(id, reg)| pb::FileEntry {
            id,
            kind: reg.map(pb::file_entry::Kind::Reg),
        });
    vec(entry, 0..6).prop_map(|files| pb::FileTable {
        files,
        ..Default::default()
    })
}

pub fn fs_state() -> impl Strategy<Value = pb::FsState> {
    let fd =
        (any::<i32>(), any::<u32>(), any::<bool>()).prop_map(|(fd, file_id, cloexec)| pb::Fd {
            fd,
            file_id,
            cloexec,
        });
    // Lock kinds past the enum's end too: an image from a newer rcr may hold them.
    let lock = (
        any::<i32>(),
        0i32..6,
        any::<bool>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(fd, kind, write, start, len)| pb::FileLock {
            fd,
            kind,
            write,
            start,
            len,
        });
    (vec(fd, 0..10), ".{0,40}", ".{0,40}", vec(lock, 0..3)).prop_map(|(fds, cwd, root, locks)| {
        pb::FsState {
            fds,
            cwd,
            root,
            locks,
        }
    })
}

pub fn process_tree() -> impl Strategy<Value = pb::ProcessTree> {
    let entry = (
        vec(any::<i32>(), 6),
        vec(any::<i32>(), 0..5),
        any::<bool>(),
        "[a-z/ -]{0,15}",
        vec(any::<i32>(), 0..3),
    )
        .prop_map(|(ids, threads, zombie, comm, ns_pids)| pb::ProcessEntry {
            pid: ids[0],
            ppid: ids[1],
            pgid: ids[2],
            sid: ids[3],
            zombie,
            exit_code: ids[4],
            exit_signal: ids[5],
            comm,
            thread_ns_tids: threads.iter().flat_map(|_| ns_pids.clone()).collect(),
            pid_ns_for_children: zombie,
            ns_pids,
            threads,
        });
    vec(entry, 0..8).prop_map(|processes| pb::ProcessTree { processes })
}

pub fn inventory() -> impl Strategy<Value = pb::Inventory> {
    let leaf = vec(any::<u32>(), 6).prop_map(|v| pb::CpuidLeaf {
        leaf: v[0],
        subleaf: v[1],
        eax: v[2],
        ebx: v[3],
        ecx: v[4],
        edx: v[5],
    });
    let component =
        (any::<[u32; 3]>(), any::<bool>()).prop_map(|(v, align64)| pb::XsaveComponent {
            index: v[0],
            offset: v[1],
            size: v[2],
            align64,
        });
    let cpu = (
        ".{0,12}",
        vec(any::<u32>(), 4),
        vec(leaf, 0..6),
        any::<u64>(),
        (vec(component, 0..4), any::<bool>()),
    )
        .prop_map(
            |(vendor, v, leaves, xcr0, (xsave_components, xsave_compacted))| pb::CpuInfo {
                vendor,
                family: v[0],
                model: v[1],
                stepping: v[2],
                leaves,
                xcr0,
                xsave_size: v[3],
                xsave_components,
                xsave_compacted,
            },
        );
    (
        (any::<u32>(), ".{0,10}", any::<i32>()),
        (".{0,20}", ".{0,40}", ".{0,10}", any::<u64>()),
        (
            proptest::option::of(cpu),
            proptest::option::of(any::<bool>()),
            any::<u64>(),
        ),
        (proptest::option::of(sysv_ipc()), "[a-z0-9_]{0,16}"),
    )
        .prop_map(
            |(
                (format_version, rcr_version, root_pid),
                (kernel_release, kernel_version, machine, page_size),
                (cpu, leave_running, taken_at_ns),
                (sysv, netlock),
            )| pb::Inventory {
                format_version,
                rcr_version,
                root_pid,
                kernel_release,
                kernel_version,
                machine,
                page_size,
                cpu,
                options: leave_running.map(|leave_running| pb::DumpOptions { leave_running }),
                taken_at_ns,
                sysv,
                cpu_profile: None,
                netlock,
            },
        )
}

fn sysv_ipc() -> impl Strategy<Value = pb::SysvIpc> {
    let perm = (
        any::<i32>(),
        any::<i32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(key, id, uid, gid, mode)| pb::SysvPerm {
            key,
            id,
            uid,
            gid,
            mode,
        });
    let run = (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(offset, len, file_offset, checksum)| pb::DataRun {
            offset,
            len,
            file_offset,
            checksum,
        },
    );
    let shm =
        (perm.clone(), any::<u64>(), vec(run, 0..4)).prop_map(|(perm, size, runs)| pb::SysvShm {
            perm: Some(perm),
            size,
            runs,
        });
    let sem = (perm.clone(), vec(any::<u32>(), 0..8)).prop_map(|(perm, values)| pb::SysvSem {
        perm: Some(perm),
        values,
    });
    let msg = (any::<i64>(), vec(any::<u8>(), 0..32))
        .prop_map(|(mtype, text)| pb::SysvMsg { mtype, text });
    let queue = (perm, any::<u64>(), vec(msg, 0..4)).prop_map(|(perm, qbytes, messages)| {
        pb::SysvMsgQueue {
            perm: Some(perm),
            qbytes,
            messages,
        }
    });
    (vec(shm, 0..3), vec(sem, 0..3), vec(queue, 0..3)).prop_map(|(shm, sem, msg)| pb::SysvIpc {
        shm,
        sem,
        msg,
    })
}
