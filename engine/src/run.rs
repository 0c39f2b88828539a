//! `rcr run` and `rcr checkpoint`: a program kept restartable by a
//! scheduler. `rcr run --image DIR -- CMD` restores `DIR/checkpoint` when
//! there is one and starts CMD otherwise; either way inside a fresh pid and
//! mount namespace (made inside a new user namespace when rcr lacks
//! CAP_SYS_ADMIN), so the saved pids are always free and `set_tid` needs no
//! host privilege.
//!
//! Layout: the rcr process that was started stays outside and forwards
//! SIGTERM, SIGINT and SIGHUP; its child is the namespace's init (pid 1),
//! which mounts the namespace's `/proc`, runs the program (pid 2 on a fresh
//! start, its saved pids after a restore), reaps, forwards the signals to
//! the program and serves `rcr checkpoint` on `DIR/.rcr-run.sock`: the
//! dump runs in init, inside the namespaces, so the images hold namespace
//! pids.
//!
//! Under `--cpu-profile` (trap mode) init is also the program's tracer and
//! answers its trapped CPUIDs ([`crate::cpu_mask`]) in the same loop that
//! reaps; the profile is recorded in each checkpoint and used again when
//! `rcr run` restores it. In glibc mode the program only gets a
//! `GLIBC_TUNABLES` environment.

use crate::cpu::{CpuProfile, ProfileMode};
use crate::cpu_mask::{self, Emulator};
use crate::error::{Error, Result};
use crate::privilege::CapSets;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// `rcr run`'s exit status when the checkpoint could not be restored (or
/// the namespaces could not be made, or CMD not started).
pub const RUN_FAILED: i32 = 125;

/// What `rcr run` runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Holds the checkpoint (`DIR/checkpoint`) and the control socket.
    pub dir: PathBuf,
    /// The program and its arguments, for a fresh start.
    pub command: Vec<OsString>,
    /// Start the program under this CPU profile (a restore uses the one the
    /// checkpoint recorded).
    pub cpu_profile: Option<(CpuProfile, ProfileMode)>,
}

/// Where `rcr run` keeps the checkpoint of the program it runs.
pub fn checkpoint_dir(dir: &Path) -> PathBuf {
    dir.join("checkpoint")
}

fn socket_path(dir: &Path) -> PathBuf {
    dir.join(".rcr-run.sock")
}

const FORWARDED: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

fn signal_set(with_chld: bool) -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    if with_chld {
        set.add(Signal::SIGCHLD);
    }
    set
}

fn sys_err(what: &'static str) -> impl Fn(nix::errno::Errno) -> Error {
    // SAFETY: getpid cannot fail.
    move |e| Error::sys(unsafe { libc::getpid() }, what, e)
}

/// Runs the program under `opts` and returns the status `rcr run` exits
/// with: the program's (128 + signal when killed), 0 when a checkpoint
/// ended it, [`RUN_FAILED`] when it could not be started or restored.
pub fn run(opts: &RunOptions) -> Result<i32> {
    if let Some((_, ProfileMode::Faulting)) = &opts.cpu_profile {
        if let Err(Error::Preflight(why)) = crate::cpu::faulting_available() {
            return Err(Error::Run {
                dir: opts.dir.clone(),
                what: format!(
                    "{why}; `--cpu-profile-mode glibc` is the weaker mode that works without \
                     it (it masks only what glibc dispatches on)"
                ),
            });
        }
    }
    std::fs::create_dir_all(&opts.dir).map_err(|e| Error::io(&opts.dir, e))?;
    enter_namespaces()?;
    let sock = socket_path(&opts.dir);
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).map_err(|e| Error::io(&sock, e))?;
    let signals = signal_set(true);
    signals.thread_block().map_err(sys_err("sigprocmask"))?;
    // SAFETY: rcr is single-threaded here; the child only runs `init`.
    match unsafe { nix::unistd::fork() }.map_err(sys_err("fork"))? {
        nix::unistd::ForkResult::Child => {
            let code = match init(opts, &listener) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("rcr run: {e}");
                    RUN_FAILED
                }
            };
            std::process::exit(code)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(listener);
            let code = outer_wait(child, &signals);
            let _ = std::fs::remove_file(&sock);
            code
        }
    }
}

/// Makes the user namespace (when needed), then the pid and mount
/// namespaces that rcr's next child is init of.
fn enter_namespaces() -> Result<()> {
    const CAP_SYS_ADMIN: u32 = 21;
    let privileged = CapSets::own().eff & (1 << CAP_SYS_ADMIN) != 0;
    let flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS;
    if !privileged {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        // A binary with file capabilities is not dumpable, which makes its
        // own /proc files root's: the maps below could not be written.
        // SAFETY: prctl on rcr itself.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
        // SAFETY: unshare on rcr itself, single-threaded here.
        if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
            return Err(Error::Preflight(format!(
                "a new user namespace is needed without CAP_SYS_ADMIN, and unshare refused \
                 it: {} (see `rcr check`)",
                std::io::Error::last_os_error()
            )));
        }
        // The same ids inside, so the program's identity and the images'
        // credentials are the caller's.
        for (file, text) in [
            ("/proc/self/setgroups", "deny".to_string()),
            ("/proc/self/uid_map", format!("{uid} {uid} 1")),
            ("/proc/self/gid_map", format!("{gid} {gid} 1")),
        ] {
            std::fs::write(file, text).map_err(|e| Error::io(file, e))?;
        }
    }
    // SAFETY: unshare on rcr itself, single-threaded here.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(Error::Preflight(format!(
            "new pid and mount namespaces: {} (needs CAP_SYS_ADMIN or a user namespace)",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Outside the namespace: forwards the signals to init and returns its
/// exit status.
fn outer_wait(init: Pid, signals: &SigSet) -> Result<i32> {
    loop {
        match signals.wait().map_err(sys_err("sigwait"))? {
            Signal::SIGCHLD => match waitpid(init, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                _ => {}
            },
            sig => {
                let _ = kill(init, sig);
            }
        }
    }
}

/// The namespace's init: mounts /proc, restores or starts the program and
/// serves it until it ends.
fn init(opts: &RunOptions, listener: &UnixListener) -> Result<i32> {
    // SAFETY: mount calls with constant, NUL-terminated strings; this
    // mount namespace is init's own.
    unsafe {
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(sys_err("mount --make-rprivate /")(nix::errno::Errno::last()));
        }
        if libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) != 0
        {
            return Err(sys_err("mount /proc")(nix::errno::Errno::last()));
        }
    }
    let images = checkpoint_dir(&opts.dir);
    let started = if images.join("inventory.img").exists() {
        restore_program(opts, images)
    } else {
        start_program(opts)
    };
    match started {
        Ok((program, masking)) => serve(opts, listener, Pid::from_raw(program), masking),
        Err(e) => {
            eprintln!("rcr: {e}");
            Ok(RUN_FAILED)
        }
    }
}

/// A program under a CPU profile in trap mode: init answers its CPUIDs.
type Masking = (Emulator, CpuProfile);

/// Restores the checkpoint under the CPU profile it recorded, if any.
fn restore_program(opts: &RunOptions, images: PathBuf) -> Result<(i32, Option<Masking>)> {
    let failed = |e: Error| Error::Run {
        dir: opts.dir.clone(),
        what: format!("restore failed: {e}"),
    };
    let inv: rcr_images::pb::Inventory =
        rcr_images::read(&rcr_images::ImageDir::new(&images).inventory())
            .map_err(|e| failed(e.into()))?;
    let cpu_profile = inv
        .cpu_profile
        .as_ref()
        .map(|r| CpuProfile::from_record(r).map(|p| (p, ProfileMode::Faulting)))
        .transpose()
        .map_err(failed)?;
    if let Some((given, _)) = &opts.cpu_profile {
        eprintln!(
            "rcr run: warning: --cpu-profile {} applies to a fresh start; the checkpoint is \
             restored under {}",
            given.spec,
            cpu_profile
                .as_ref()
                .map_or("no profile".to_string(), |(p, _)| format!(
                    "its recorded profile {}",
                    p.spec
                ))
        );
    }
    let stats = crate::restore(&crate::RestoreOptions {
        dir: images.clone(),
        cpu_profile: cpu_profile.clone(),
        ..Default::default()
    })
    .map_err(failed)?;
    for w in &stats.warnings {
        eprintln!("rcr run: warning: {w}");
    }
    // Once the tree runs again; `rcr-bench --run` times restores by it.
    eprintln!(
        "rcr run: restored {} (pid {}) in {:.1} ms",
        images.display(),
        stats.pid,
        stats.seconds * 1e3
    );
    let masking = stats
        .cpu_emulator
        .zip(cpu_profile)
        .map(|(emulator, (profile, _))| (emulator, profile));
    Ok((stats.pid, masking))
}

/// Starts the command: plainly, with glibc's tunables, or traced with CPUID
/// faulting armed at its exec.
fn start_program(opts: &RunOptions) -> Result<(i32, Option<Masking>)> {
    let Some((cmd, args)) = opts.command.split_first() else {
        return Err(Error::Run {
            dir: opts.dir.clone(),
            what: "no checkpoint there and no command to start".into(),
        });
    };
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(cmd);
    command.args(args);
    let cannot = |e: std::io::Error| Error::Run {
        dir: opts.dir.clone(),
        what: format!("cannot start {}: {e}", cmd.to_string_lossy()),
    };
    let traced = match &opts.cpu_profile {
        Some((p, ProfileMode::Faulting)) => Some(p),
        Some((p, ProfileMode::GlibcHwcaps)) => {
            command.env("GLIBC_TUNABLES", glibc_environment(p));
            None
        }
        None => None,
    };
    let Some(profile) = traced else {
        // SAFETY: the child only unblocks the signals init blocked, which
        // is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                signal_set(true).thread_unblock()?;
                Ok(())
            })
        };
        return Ok((command.spawn().map_err(cannot)?.id() as i32, None));
    };
    let pid = spawn_traced(command)?;
    let emulator = Emulator::new(profile.masked_host(), [pid]);
    Ok((pid, Some((emulator, profile.clone()))))
}

/// Forks the program and seizes it before it execs, so that its exec stop
/// arms CPUID faulting before its first instruction. A failed exec ends it
/// with [`RUN_FAILED`].
fn spawn_traced(mut command: std::process::Command) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let (hold, release) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("pipe2"))?;
    // SAFETY: init is single-threaded, so the child may run any code.
    match unsafe { nix::unistd::fork() }.map_err(sys_err("fork"))? {
        nix::unistd::ForkResult::Child => {
            drop(release);
            // Until init has seized this child, which it says by closing
            // its end of the pipe.
            let _ = nix::unistd::read(&hold, &mut [0u8]);
            let e = match signal_set(true).thread_unblock() {
                Ok(()) => command.exec(),
                Err(e) => e.into(),
            };
            eprintln!(
                "rcr run: cannot start {}: {e}",
                command.get_program().to_string_lossy()
            );
            std::process::exit(RUN_FAILED)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(hold);
            let seized = crate::ptrace::seize(child.as_raw(), cpu_mask::trace_options());
            if let Err(e) = seized {
                let _ = kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                return Err(Error::sys(child.as_raw(), e.op, e.errno));
            }
            drop(release);
            Ok(child.as_raw())
        }
    }
}

/// `GLIBC_TUNABLES` for the program in glibc mode (after any tunables
/// already in rcr's environment), with the warning that says what it does
/// not mask.
fn glibc_environment(p: &CpuProfile) -> OsString {
    let (tunables, unswitched) = crate::cpu::glibc_tunables(p);
    let also = if unswitched.is_empty() {
        String::new()
    } else {
        format!(
            "; glibc has no switch for {}, which it may still use",
            unswitched.join(", ")
        )
    };
    eprintln!(
        "rcr run: warning: CPU profile {} in glibc mode masks only glibc's own dispatch \
         (GLIBC_TUNABLES={tunables}): the CPUID instruction still reports every feature of \
         this CPU to the program and to any code that asks it{also}",
        p.spec
    );
    match std::env::var_os("GLIBC_TUNABLES") {
        Some(old) if !old.is_empty() => {
            let mut v = old;
            v.push(":");
            v.push(&tunables);
            v
        }
        _ => tunables.into(),
    }
}

/// Reaps, answers trapped CPUIDs, forwards signals and answers checkpoint
/// requests until the program ends; returns the status to exit with.
fn serve(
    opts: &RunOptions,
    listener: &UnixListener,
    program: Pid,
    mut masking: Option<Masking>,
) -> Result<i32> {
    let sfd = SignalFd::with_flags(&signal_set(true), SfdFlags::SFD_CLOEXEC)
        .map_err(sys_err("signalfd"))?;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: sfd.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: polls two descriptors we own, described by `fds`.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            match nix::errno::Errno::last() {
                nix::errno::Errno::EINTR => continue,
                e => return Err(sys_err("poll")(e)),
            }
        }
        let request = fds[1].revents & libc::POLLIN != 0;
        if request {
            if let Ok((stream, _)) = listener.accept() {
                let (ended_it, reaped) = answer(opts, stream, program, masking.as_mut())?;
                // A dump that ends the program reaps it as its tracer: done.
                if ended_it {
                    return Ok(0);
                }
                if let Some(code) = reaped.into_iter().find_map(|w| program_status(program, w)) {
                    return Ok(code);
                }
            }
        }
        let Ok(Some(info)) = sfd.read_signal() else {
            continue;
        };
        if info.ssi_signo != libc::SIGCHLD as u32 {
            let _ = kill(program, Signal::try_from(info.ssi_signo as i32).ok());
            continue;
        }
        // Ptrace stops as well as ends arrive as SIGCHLD.
        while let Some((tid, status)) = cpu_mask::wait_any(libc::WNOHANG)? {
            if let Some((emulator, _)) = masking.as_mut() {
                emulator.on_wait(tid, status)?;
            }
            if let Some(code) = program_status(program, (tid, status)) {
                return Ok(code);
            }
        }
    }
}

/// The status `rcr run` exits with when this wait status is the program's
/// end.
fn program_status(program: Pid, (tid, status): (i32, i32)) -> Option<i32> {
    if tid != program.as_raw() {
        return None;
    }
    match crate::ptrace::decode_status(status) {
        crate::ptrace::Stop::Exited(code) => Some(code),
        crate::ptrace::Stop::Killed(sig) => Some(128 + sig),
        _ => None,
    }
}

/// Serves one `rcr checkpoint`: a line `checkpoint [leave-running]`,
/// answered with `ok <stats json>` or `error <message>`. Returns whether
/// the program was checkpointed and killed, and the wait statuses of tasks
/// that ended while a masked tree was being frozen for the dump.
fn answer(
    opts: &RunOptions,
    stream: UnixStream,
    program: Pid,
    mut masking: Option<&mut Masking>,
) -> Result<(bool, Vec<(i32, i32)>)> {
    let mut line = String::new();
    let _ = BufReader::new(&stream).read_line(&mut line);
    let leave_running = line.split_whitespace().any(|w| w == "leave-running");
    let (reaped, profile) = match &mut masking {
        Some((emulator, profile)) => (emulator.freeze()?, Some(profile.record())),
        None => (Vec::new(), None),
    };
    let result = dump_into(&opts.dir, program.as_raw(), leave_running, profile);
    if let Some((emulator, _)) = masking.filter(|_| result.is_err() || leave_running) {
        emulator.thaw()?;
    }
    let reply = match &result {
        Ok(stats) => format!(
            "ok {}\n",
            serde_json::to_string(stats).expect("stats serialize")
        ),
        Err(e) => format!("error {e}\n"),
    };
    let _ = (&stream).write_all(reply.as_bytes());
    Ok((result.is_ok() && !leave_running, reaped))
}

/// Dumps the program into `DIR/checkpoint` with the CPU profile it runs
/// under, replacing an older checkpoint only once the new one is complete.
fn dump_into(
    dir: &Path,
    pid: i32,
    leave_running: bool,
    profile: Option<rcr_images::pb::CpuProfileRecord>,
) -> Result<crate::DumpStats> {
    let target = checkpoint_dir(dir);
    let fresh = dir.join(".checkpoint.new");
    let old = dir.join(".checkpoint.old");
    for stale in [&fresh, &old] {
        let _ = std::fs::remove_dir_all(stale);
    }
    let stats = crate::dump(&crate::DumpOptions {
        pid,
        dir: fresh.clone(),
        leave_running,
        tcp_established: false,
        external_unix: false,
        shell_job: false,
    })?;
    if profile.is_some() {
        let path = rcr_images::ImageDir::new(&fresh).inventory();
        let mut inv: rcr_images::pb::Inventory = rcr_images::read(&path)?;
        inv.cpu_profile = profile;
        rcr_images::write(&path, &inv)?;
    }
    if target.exists() {
        std::fs::rename(&target, &old).map_err(|e| Error::io(&target, e))?;
    }
    std::fs::rename(&fresh, &target).map_err(|e| Error::io(&target, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(stats)
}

/// `rcr checkpoint DIR`: asks the `rcr run` serving DIR to checkpoint its
/// program; returns the dump's statistics as JSON.
pub fn checkpoint(dir: &Path, leave_running: bool) -> Result<String> {
    let sock = socket_path(dir);
    let refuse = |what: String| Error::Run {
        dir: dir.to_path_buf(),
        what,
    };
    let mut stream = UnixStream::connect(&sock)
        .map_err(|e| refuse(format!("no rcr run answers on {}: {e}", sock.display())))?;
    let request = if leave_running {
        "checkpoint leave-running\n"
    } else {
        "checkpoint\n"
    };
    stream
        .write_all(request.as_bytes())
        .map_err(|e| Error::io(&sock, e))?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(|e| Error::io(&sock, e))?;
    match reply.trim_end().split_once(' ') {
        Some(("ok", stats)) => Ok(stats.to_string()),
        Some(("error", what)) => Err(refuse(what.to_string())),
        _ => Err(refuse(format!("unexpected answer {reply:?}"))),
    }
}
