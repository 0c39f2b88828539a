//! `deny_clone3 PROGRAM ARGS...`: runs PROGRAM under a seccomp filter that
//! fails `clone3` with ENOSYS, as some container runtimes' default policies
//! do. rcr must then give pids back another way.

use std::os::unix::process::CommandExt;

const SECCOMP_DATA_NR: u32 = 0;
const SYS_CLONE3: u32 = 435;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((program, rest)) = args.split_first() else {
        eprintln!("usage: deny_clone3 PROGRAM ARGS...");
        std::process::exit(2);
    };
    let mut filter = [
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, SECCOMP_DATA_NR),
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: SYS_CLONE3,
        },
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prctl with integer arguments, then with a filter program that
    // outlives the call (the kernel copies it).
    let ok = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) == 0
    };
    if !ok {
        eprintln!("deny_clone3: seccomp: {}", std::io::Error::last_os_error());
        std::process::exit(2);
    }
    let err = std::process::Command::new(program).args(rest).exec();
    eprintln!("deny_clone3: exec {program}: {err}");
    std::process::exit(2);
}
