//! Injecting the parasite blob into a stopped task, talking to it, and
//! curing the task afterwards so that it never notices.
//!
//! Infect: remote syscalls create a memfd in the task and map it there
//! (RWX, address chosen by the kernel); rcr maps the same memfd through
//! `/proc/PID/fd/N`, so the blob, its arguments, bulk data and its stack are
//! written and read without copies. A `SOCK_SEQPACKET` unix socket carries
//! commands and replies; a pipe whose write end stays in the task carries
//! pages (`vmsplice` there, `splice` here). The task runs the blob with every
//! signal blocked and its FPU/XSAVE state saved, since the blob's code may
//! use vector registers.
//!
//! Cure: the parasite is told to finish and waits; rcr interrupts it,
//! closes the task's ends of the socket and pipe, unmaps the area, and
//! writes back the saved XSAVE area, registers and signal mask.
//!
//! If rcr dies instead, the kernel detaches the task and the parasite sees
//! EOF on the socket. For that case infect leaves an `rt_sigreturn` frame of
//! the task's seized state in the area: the parasite closes its fds and
//! returns through it, and the task runs on with only the area left mapped.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, MsgFlags, SockFlag, SockType, UnixAddr,
};
use rcr_arch::sigframe::{self, AltStack, SigFrameInput};
use rcr_parasite::parasite_abi::{
    cmd, Command, IoVec, Itimers, Misc, ParasiteArgs, PosixTimerState, Reply, SigAltStack,
    Sigactions, PARASITE_ABI_VERSION, PARASITE_MAGIC,
};

use crate::blob;
use crate::infect::remote::sigreturn_regs;
use crate::infect::{InfectError, RemoteTask};
use crate::ptrace::{self, Stop};

const PAGE: usize = 4096;
/// Room for 16384 iovecs per `DUMP_PAGES` command.
const DATA_LEN: usize = 256 * 1024;
const STACK_LEN: usize = 64 * 1024;
/// Where, inside the arguments page, the socket address, pipe fds and
/// altstack go.
const SOCKADDR_OFF: usize = 256;
const PIPE_FDS_OFF: usize = 512;
const ALTSTACK_OFF: usize = 768;
const MEMFD_NAME: &[u8] = b"rcr-parasite\0";
/// Bigger is fewer wake-ups per MiB spliced; the kernel caps it at
/// `/proc/sys/fs/pipe-max-size`.
const WANTED_PIPE_SIZE: usize = 1 << 20;
/// How often rcr checks that the task did not crash while it waits for it.
const POLL_SLICE: Duration = Duration::from_millis(50);

/// Offsets of the pieces inside the shared area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    args: usize,
    /// The `rt_sigreturn` frame for a parasite whose rcr died.
    frame: usize,
    data: usize,
    stack_top: usize,
    total: usize,
}

impl Layout {
    fn new(blob_len: usize, frame_len: usize) -> Layout {
        let args = blob_len.div_ceil(PAGE) * PAGE;
        let frame = args + PAGE;
        let data = frame + frame_len.div_ceil(PAGE) * PAGE;
        let stack_top = data + DATA_LEN + STACK_LEN;
        Layout {
            args,
            frame,
            data,
            stack_top,
            total: stack_top,
        }
    }
}

/// rcr's view of the shared area: a `MAP_SHARED` mapping of the memfd.
struct SharedArea {
    ptr: *mut u8,
    len: usize,
}

impl SharedArea {
    fn map(tid: i32, file: &File, len: usize) -> Result<SharedArea, InfectError> {
        // SAFETY: a fresh shared mapping of a file we hold; nothing else in
        // rcr aliases it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(InfectError::io(
                tid,
                "mmap the parasite memfd",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(SharedArea {
            ptr: ptr.cast(),
            len,
        })
    }

    fn write<T: Copy>(&self, off: usize, value: &T) {
        assert!(off + size_of::<T>() <= self.len);
        // SAFETY: in bounds (checked); the parasite is not running or waits
        // for a command, so nobody else writes these bytes now.
        unsafe { self.ptr.add(off).cast::<T>().write_unaligned(*value) }
    }

    fn read<T: Copy>(&self, off: usize) -> T {
        assert!(off + size_of::<T>() <= self.len);
        // SAFETY: in bounds (checked); any bit pattern is a valid T for the
        // plain #[repr(C)] integer structs read here.
        unsafe { self.ptr.add(off).cast::<T>().read_unaligned() }
    }

    fn bytes_mut(&mut self, off: usize, len: usize) -> &mut [u8] {
        assert!(off + len <= self.len);
        // SAFETY: in bounds (checked); &mut self keeps this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off), len) }
    }
}

// SAFETY: the mapping belongs to this value alone; moving it to another
// thread moves that exclusive ownership with it.
unsafe impl Send for SharedArea {}

impl Drop for SharedArea {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Whether the parasite code is running in the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Running its command loop.
    Running,
    /// Not running (not started yet, or stopped after FINI or a fault); the
    /// task is in a ptrace-stop and must be cured.
    Stopped,
    /// Cured: the task has its own state back.
    Cured,
}

/// A parasite running inside a seized task.
pub struct Parasite {
    task: RemoteTask,
    xstate: Vec<u8>,
    area: SharedArea,
    layout: Layout,
    remote_base: u64,
    sock: Option<OwnedFd>,
    pipe: Option<File>,
    remote_sock: i32,
    remote_pipe_wr: i32,
    remote_pipe_rd: i32,
    state: State,
}

/// Makes each control socket name unique within this rcr.
static SOCKET_SEQ: AtomicU64 = AtomicU64::new(0);

impl Parasite {
    /// Injects the parasite into `tid` and starts its command loop. The task
    /// must be seized with [`ptrace::default_options`] and in a ptrace-stop
    /// (as for [`RemoteTask::new`]). On error the task is put back as it was.
    pub fn infect(tid: i32) -> Result<Parasite, InfectError> {
        let mut task = RemoteTask::new(tid)?;
        let xstate = match ptrace::get_xstate(tid) {
            Ok(x) => x,
            Err(e) => {
                task.restore_regs()?;
                return Err(e.into());
            }
        };
        let blob = blob::parasite();
        let layout = Layout::new(blob.len(), sigframe::frame_size(xstate.len()));
        let (area, remote_base) = match map_shared_area(&mut task, layout.total) {
            Ok(v) => v,
            Err(e) => {
                let _ = task.restore_regs();
                return Err(e);
            }
        };
        // From here on, Drop undoes everything; task fds not yet created are -1.
        let mut parasite = Parasite {
            task,
            xstate,
            area,
            layout,
            remote_base,
            sock: None,
            pipe: None,
            remote_sock: -1,
            remote_pipe_wr: -1,
            remote_pipe_rd: -1,
            state: State::Stopped,
        };
        parasite.connect_socket()?;
        parasite.open_pipe()?;
        let sigframe_rsp = parasite.write_sigframe()?;
        parasite.start(blob, sigframe_rsp)?;
        Ok(parasite)
    }

    /// The task the parasite lives in.
    pub fn tid(&self) -> i32 {
        self.task.tid()
    }

    /// Signal dispositions of signals 1..=64 (`rt_sigaction`).
    pub fn get_sigactions(&mut self) -> Result<Sigactions, InfectError> {
        self.call(cmd::GET_SIGACTIONS, 0)?;
        Ok(self.area.read(self.layout.data))
    }

    /// The alternate signal stack (`sigaltstack`).
    pub fn get_sigaltstack(&mut self) -> Result<SigAltStack, InfectError> {
        self.call(cmd::GET_SIGALTSTACK, 0)?;
        Ok(self.area.read(self.layout.data))
    }

    /// The real, virtual and profiling interval timers (`getitimer`).
    pub fn get_itimers(&mut self) -> Result<Itimers, InfectError> {
        self.call(cmd::GET_ITIMERS, 0)?;
        Ok(self.area.read(self.layout.data))
    }

    /// The time left and interval of each POSIX timer in `ids`, in order.
    pub fn get_posix_timers(&mut self, ids: &[i32]) -> Result<Vec<PosixTimerState>, InfectError> {
        let size = size_of::<PosixTimerState>();
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(DATA_LEN / size) {
            for (i, &id) in chunk.iter().enumerate() {
                let state = PosixTimerState {
                    id,
                    ..Default::default()
                };
                self.area.write(self.layout.data + i * size, &state);
            }
            self.call(cmd::GET_POSIX_TIMERS, chunk.len() as u64)?;
            out.extend((0..chunk.len()).map(|i| {
                self.area
                    .read::<PosixTimerState>(self.layout.data + i * size)
            }));
        }
        Ok(out)
    }

    /// brk, prctl values, cpuid faulting, personality, umask.
    pub fn get_misc(&mut self) -> Result<Misc, InfectError> {
        self.call(cmd::GET_MISC, 0)?;
        Ok(self.area.read(self.layout.data))
    }

    /// What another thread of the infected process keeps to itself: its
    /// alternate signal stack and clear-child-tid address. `tid` must be
    /// seized and stopped; remote syscalls in it write into the parasite's
    /// area (the threads share one address space), then it gets its
    /// registers and mask back.
    pub fn query_thread(&mut self, tid: i32) -> Result<(SigAltStack, u64), InfectError> {
        const PR_GET_TID_ADDRESS: u64 = 40;
        let mut task = RemoteTask::new(tid)?;
        let out = self.remote_base + self.layout.data as u64;
        let ctid_off = size_of::<SigAltStack>();
        let asked = task
            .syscall_ok("sigaltstack", libc::SYS_sigaltstack, [0, out, 0, 0, 0, 0])
            .and_then(|_| {
                task.syscall_ok(
                    "prctl(PR_GET_TID_ADDRESS)",
                    libc::SYS_prctl,
                    [PR_GET_TID_ADDRESS, out + ctid_off as u64, 0, 0, 0, 0],
                )
            });
        task.restore_regs()?;
        asked?;
        Ok((
            self.area.read(self.layout.data),
            self.area.read(self.layout.data + ctid_off),
        ))
    }

    /// Copies the task's memory ranges `iovs` (address, length) into `out`
    /// starting at `out_offset`, back to back, without copying through rcr's
    /// memory. Returns the bytes written. Ranges in unreadable VMAs fail with
    /// [`InfectError::Unspliceable`]: read those through `/proc/PID/mem`.
    pub fn dump_pages(
        &mut self,
        iovs: &[(u64, u64)],
        out: &File,
        out_offset: u64,
    ) -> Result<u64, InfectError> {
        let per_call = DATA_LEN / size_of::<IoVec>();
        let mut offset = out_offset as i64;
        let mut total = 0;
        for chunk in iovs.chunks(per_call) {
            for (i, &(base, len)) in chunk.iter().enumerate() {
                self.area.write(
                    self.layout.data + i * size_of::<IoVec>(),
                    &IoVec { base, len },
                );
            }
            let expected: u64 = chunk.iter().map(|&(_, len)| len).sum();
            self.send(cmd::DUMP_PAGES, chunk.len() as u64)?;
            let got = self.splice_until(expected, out, &mut offset)?;
            total += got;
        }
        Ok(total)
    }

    /// Stops the parasite and gives the task back its own state: fds,
    /// mapping, XSAVE area, registers, signal mask. The task stays in a
    /// ptrace-stop for the caller to resume or detach.
    pub fn cure(mut self) -> Result<(), InfectError> {
        self.cure_in_place()
    }

    fn cure_in_place(&mut self) -> Result<(), InfectError> {
        let tid = self.tid();
        if self.state == State::Cured {
            return Ok(());
        }
        if self.state == State::Running {
            self.call(cmd::FINI, 0)?;
            self.stop_parasite()?;
        }
        self.state = State::Cured;
        for fd in [self.remote_sock, self.remote_pipe_wr, self.remote_pipe_rd] {
            if fd >= 0 {
                self.task
                    .syscall_ok("close", libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0])?;
            }
        }
        let len = self.layout.total as u64;
        self.task.syscall_ok(
            "munmap",
            libc::SYS_munmap,
            [self.remote_base, len, 0, 0, 0, 0],
        )?;
        ptrace::set_xstate(tid, &self.xstate)?;
        self.task.restore_regs()
    }

    /// Interrupts the parasite (waiting after FINI) and waits for the stop.
    fn stop_parasite(&mut self) -> Result<(), InfectError> {
        let tid = self.tid();
        ptrace::interrupt(tid)?;
        loop {
            match self.wait_bounded()? {
                Stop::Interrupt => return Ok(()),
                stop => self.handle_stray_stop(stop)?,
            }
        }
    }

    fn wait_bounded(&self) -> Result<Stop, InfectError> {
        let tid = self.tid();
        ptrace::wait_stop_timeout(tid, Duration::from_secs(10))?.ok_or_else(|| {
            InfectError::Parasite {
                tid,
                what: "did not stop within 10 s of PTRACE_INTERRUPT".into(),
            }
        })
    }

    /// A stop while the parasite runs: faults end it, anything else is
    /// stepped over (signals suppressed and re-sent at cure).
    fn handle_stray_stop(&mut self, stop: Stop) -> Result<(), InfectError> {
        let tid = self.tid();
        match stop {
            Stop::Signal(sig)
                if [
                    libc::SIGSEGV,
                    libc::SIGBUS,
                    libc::SIGILL,
                    libc::SIGFPE,
                    libc::SIGTRAP,
                    libc::SIGSYS,
                ]
                .contains(&sig) =>
            {
                self.state = State::Stopped;
                let rip = ptrace::get_regs(tid).map(|r| r.rip).unwrap_or(0);
                let offset = rip.wrapping_sub(self.remote_base);
                Err(InfectError::Parasite {
                    tid,
                    what: format!(
                        "stopped by signal {sig} at rip {rip:#x} (blob offset {offset:#x})"
                    ),
                })
            }
            Stop::Signal(sig) => {
                self.task.suppress(sig);
                Ok(ptrace::cont(tid, 0)?)
            }
            Stop::Group(_) | Stop::Event(_) => Ok(ptrace::cont(tid, 0)?),
            Stop::Interrupt => Ok(ptrace::cont(tid, 0)?),
            Stop::Syscall => Err(InfectError::UnexpectedStop {
                tid,
                what: "syscall stop".into(),
            }),
            Stop::Exited(code) => Err(InfectError::Exited { tid, code }),
            Stop::Killed(sig) => Err(InfectError::Killed { tid, sig }),
        }
    }

    /// The control socket (-1 before it exists, which makes calls fail).
    fn sock_fd(&self) -> RawFd {
        self.sock.as_ref().map_or(-1, |s| s.as_raw_fd())
    }

    fn send(&mut self, command: u32, arg0: u64) -> Result<(), InfectError> {
        let tid = self.tid();
        if self.state != State::Running {
            return Err(InfectError::Parasite {
                tid,
                what: "is not running".into(),
            });
        }
        let msg = Command {
            version: PARASITE_ABI_VERSION,
            cmd: command,
            arg0,
        };
        // SAFETY: Command is plain #[repr(C)] data without padding.
        let bytes = unsafe { as_bytes(&msg) };
        socket::send(self.sock_fd(), bytes, MsgFlags::MSG_NOSIGNAL)
            .map_err(|e| InfectError::io(tid, "send a parasite command", e))?;
        Ok(())
    }

    /// Sends a command and waits for its successful reply.
    fn call(&mut self, command: u32, arg0: u64) -> Result<Reply, InfectError> {
        self.send(command, arg0)?;
        loop {
            if let Some(reply) = self.poll_reply(None)? {
                return self.check_reply(command, reply);
            }
        }
    }

    fn check_reply(&self, command: u32, reply: Reply) -> Result<Reply, InfectError> {
        let tid = self.tid();
        if reply.cmd != command {
            return Err(InfectError::Parasite {
                tid,
                what: format!("answered command {} to command {command}", reply.cmd),
            });
        }
        if reply.status < 0 {
            let errno = Errno::from_raw(-reply.status);
            if command == cmd::DUMP_PAGES && errno == Errno::EFAULT {
                return Err(InfectError::Unspliceable {
                    tid,
                    addr: reply.value,
                });
            }
            return Err(InfectError::Parasite {
                tid,
                what: format!("command {command} failed: {errno} (at {:#x})", reply.value),
            });
        }
        Ok(reply)
    }

    /// Waits up to [`POLL_SLICE`] for a reply on the socket or readiness of
    /// `extra` fds, checking for task stops meanwhile. Returns the reply if
    /// one came.
    fn poll_reply(&mut self, extra: Option<RawFd>) -> Result<Option<Reply>, InfectError> {
        let tid = self.tid();
        let mut fds = vec![libc::pollfd {
            fd: self.sock_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        fds.extend(extra.map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }));
        // SAFETY: poll reads and writes `fds.len()` pollfds.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                POLL_SLICE.as_millis() as i32,
            )
        };
        if n < 0 && Errno::last() != Errno::EINTR {
            return Err(InfectError::io(
                tid,
                "poll the parasite socket",
                std::io::Error::last_os_error(),
            ));
        }
        if fds[0].revents != 0 {
            let mut reply = Reply::default();
            // SAFETY: Reply is plain #[repr(C)] data; any bytes are valid.
            let buf = unsafe { as_bytes_mut(&mut reply) };
            let got = socket::recv(self.sock_fd(), buf, MsgFlags::MSG_DONTWAIT)
                .map_err(|e| InfectError::io(tid, "receive a parasite reply", e))?;
            if got != size_of::<Reply>() {
                return Err(InfectError::Parasite {
                    tid,
                    what: format!("short reply of {got} bytes"),
                });
            }
            return Ok(Some(reply));
        }
        if n == 0 {
            if let Some(stop) = ptrace::try_wait_stop(tid)? {
                self.handle_stray_stop(stop)?;
            }
        }
        Ok(None)
    }

    /// Moves `expected` bytes from the page pipe into `out` at `offset` while
    /// the parasite fills the pipe, then takes the DUMP_PAGES reply.
    fn splice_until(
        &mut self,
        expected: u64,
        out: &File,
        offset: &mut i64,
    ) -> Result<u64, InfectError> {
        let tid = self.tid();
        let pipe = self.pipe.as_ref().map_or(-1, |p| p.as_raw_fd());
        let mut received = 0u64;
        let mut reply: Option<Reply> = None;
        loop {
            if let Some(r) = reply {
                if received >= r.value {
                    if received != expected {
                        return Err(InfectError::Parasite {
                            tid,
                            what: format!("spliced {received} bytes of {expected}"),
                        });
                    }
                    return Ok(received);
                }
            }
            // Drain whatever is in the pipe without blocking.
            loop {
                let want = (expected - received) as usize;
                if want == 0 {
                    break;
                }
                // SAFETY: splice between two fds we own; `offset` is a valid loff_t.
                let n = unsafe {
                    libc::splice(
                        pipe,
                        std::ptr::null_mut(),
                        out.as_raw_fd(),
                        offset,
                        want,
                        libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
                    )
                };
                match n {
                    n if n > 0 => received += n as u64,
                    0 => break,
                    _ => {
                        let err = std::io::Error::last_os_error();
                        match err.kind() {
                            ErrorKind::WouldBlock => break,
                            ErrorKind::Interrupted => continue,
                            _ => {
                                return Err(InfectError::io(
                                    tid,
                                    "splice pages from the parasite pipe",
                                    err,
                                ))
                            }
                        }
                    }
                }
            }
            if reply.is_some_and(|r| received >= r.value) {
                continue;
            }
            if let Some(r) = self.poll_reply(Some(pipe))? {
                reply = Some(self.check_reply(cmd::DUMP_PAGES, r)?);
            }
        }
    }

    /// Creates the control socket: rcr listens on a unique abstract address,
    /// the task connects, rcr accepts and checks the peer is the task.
    fn connect_socket(&mut self) -> Result<(), InfectError> {
        let tid = self.tid();
        let name = format!(
            "rcr-{}-{}",
            std::process::id(),
            SOCKET_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let sock_err = |what: &str, e: Errno| InfectError::io(tid, format!("{what} for {name}"), e);
        let listener = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| sock_err("socket", e))?;
        let addr = UnixAddr::new_abstract(name.as_bytes()).map_err(|e| sock_err("address", e))?;
        socket::bind(listener.as_raw_fd(), &addr).map_err(|e| sock_err("bind", e))?;
        socket::listen(&listener, Backlog::new(1).expect("1 is a valid backlog"))
            .map_err(|e| sock_err("listen", e))?;

        let raw = sockaddr_un_abstract(name.as_bytes());
        self.area
            .bytes_mut(self.layout.args + SOCKADDR_OFF, raw.len())
            .copy_from_slice(&raw);
        let remote = self.task.syscall_ok(
            "socket",
            libc::SYS_socket,
            [
                libc::AF_UNIX as u64,
                (libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC) as u64,
                0,
                0,
                0,
                0,
            ],
        )?;
        self.remote_sock = remote as i32;
        let addr_ptr = self.remote_base + (self.layout.args + SOCKADDR_OFF) as u64;
        self.task.syscall_ok(
            "connect",
            libc::SYS_connect,
            [remote, addr_ptr, raw.len() as u64, 0, 0, 0],
        )?;
        let conn = socket::accept(listener.as_raw_fd()).map_err(|e| sock_err("accept", e))?;
        // SAFETY: accept returned a new fd that nothing else owns.
        let conn = unsafe { OwnedFd::from_raw_fd(conn) };
        let peer = socket::getsockopt(&conn, sockopt::PeerCredentials)
            .map_err(|e| sock_err("SO_PEERCRED", e))?;
        let tgid = std::fs::read_to_string(format!("/proc/{tid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Tgid:"))
                    .and_then(|v| v.trim().parse().ok())
            });
        if tgid != Some(peer.pid()) {
            return Err(InfectError::Parasite {
                tid,
                what: format!("socket peer is pid {}, not the task", peer.pid()),
            });
        }
        self.sock = Some(conn);
        Ok(())
    }

    /// Creates the page pipe in the task and opens its read end here. The
    /// task keeps its read end too (see [`ParasiteArgs::pipe_rd_fd`]).
    fn open_pipe(&mut self) -> Result<(), InfectError> {
        let tid = self.tid();
        let fds_ptr = self.remote_base + (self.layout.args + PIPE_FDS_OFF) as u64;
        self.task.syscall_ok(
            "pipe2",
            libc::SYS_pipe2,
            [fds_ptr, libc::O_CLOEXEC as u64, 0, 0, 0, 0],
        )?;
        let [rd, wr]: [i32; 2] = self.area.read(self.layout.args + PIPE_FDS_OFF);
        self.remote_pipe_wr = wr;
        self.remote_pipe_rd = rd;
        let path = format!("/proc/{tid}/fd/{rd}");
        let pipe = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| InfectError::io(tid, format!("open {path}"), e))?;
        // A smaller pipe only costs speed, so a refusal (user pipe quota) is
        // not an error.
        let size = pipe_max_size().min(WANTED_PIPE_SIZE);
        // SAFETY: F_SETPIPE_SZ on a pipe fd we own.
        unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
        self.pipe = Some(pipe);
        Ok(())
    }

    /// Writes the frame that returns the task to its seized state, the state
    /// cure would give back, for the parasite to use if rcr dies. Returns
    /// the `rsp` for `rt_sigreturn`.
    ///
    /// Signal delivery-stops suppressed while the parasite runs are re-sent
    /// by cure only; with rcr dead such a signal is lost. Every signal but
    /// SIGKILL and SIGSTOP is blocked meanwhile and stays pending instead,
    /// so that can only be a SIGSTOP.
    fn write_sigframe(&mut self) -> Result<u64, InfectError> {
        let tid = self.tid();
        // rt_sigreturn also sets the altstack, so the frame needs the
        // task's own; it cannot change while the parasite runs.
        let ss_off = self.layout.args + ALTSTACK_OFF;
        self.task.syscall_ok(
            "sigaltstack",
            libc::SYS_sigaltstack,
            [0, self.remote_base + ss_off as u64, 0, 0, 0, 0],
        )?;
        let ss: SigAltStack = self.area.read(ss_off);
        let regs = sigreturn_regs(self.task.saved_regs());
        let input = SigFrameInput {
            regs: &regs,
            xsave: &self.xstate,
            xfeatures: rcr_arch::cpuid::xcr0(),
            sigmask: self.task.saved_sigmask(),
            altstack: AltStack {
                sp: ss.sp,
                flags: ss.flags,
                size: ss.size,
            },
        };
        let frame_addr = self.remote_base + self.layout.frame as u64;
        let frame =
            sigframe::build_rt_sigframe(&input, frame_addr).map_err(|e| InfectError::Parasite {
                tid,
                what: format!("fallback frame: {e}"),
            })?;
        self.area
            .bytes_mut(self.layout.frame, frame.bytes.len())
            .copy_from_slice(&frame.bytes);
        Ok(frame.rsp)
    }

    /// Writes the blob and its arguments and lets the task run the blob.
    fn start(&mut self, blob: &blob::Blob, sigframe_rsp: u64) -> Result<(), InfectError> {
        let tid = self.tid();
        blob.write_relocated(self.remote_base, self.area.bytes_mut(0, blob.len()));
        let args = ParasiteArgs {
            magic: PARASITE_MAGIC,
            version: PARASITE_ABI_VERSION,
            sock_fd: self.remote_sock,
            pipe_wr_fd: self.remote_pipe_wr,
            pipe_rd_fd: self.remote_pipe_rd,
            _pad: 0,
            data_addr: self.remote_base + self.layout.data as u64,
            data_len: DATA_LEN as u64,
            sigframe_rsp,
        };
        self.area.write(self.layout.args, &args);
        let entry = blob
            .symbol("rcr_parasite_main")
            .ok_or_else(|| InfectError::Parasite {
                tid,
                what: "blob has no rcr_parasite_main".into(),
            })?;
        let mut regs = *self.task.saved_regs();
        regs.rip = self.remote_base + entry;
        // As if called: rsp + 8 is 16-byte aligned at the entry.
        regs.rsp = self.remote_base + self.layout.stack_top as u64 - 8;
        regs.rdi = self.remote_base + self.layout.args as u64;
        regs.orig_rax = u64::MAX;
        regs.rax = 0;
        ptrace::set_regs(tid, &regs)?;
        ptrace::cont(tid, 0)?;
        self.state = State::Running;
        Ok(())
    }
}

impl Drop for Parasite {
    /// Best-effort cure on error paths; [`Parasite::cure`] reports errors.
    fn drop(&mut self) {
        if self.state == State::Running && self.stop_parasite().is_ok() {
            // It may have been mid-command: it was stopped where it was.
            self.state = State::Stopped;
        }
        if self.state == State::Stopped {
            let _ = self.cure_in_place();
        }
    }
}

/// Maps a memfd of `len` bytes in the task (RWX) and in rcr (RW). Returns
/// rcr's view and the address in the task.
fn map_shared_area(task: &mut RemoteTask, len: usize) -> Result<(SharedArea, u64), InfectError> {
    let tid = task.tid();
    let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    // memfd_create needs its name in the task's memory: put it in a
    // scratch page of our own rather than anywhere the task uses.
    let scratch = task.syscall_ok(
        "mmap",
        libc::SYS_mmap,
        [0, PAGE as u64, rw, anon, u64::MAX, 0],
    )?;
    let written = write_remote(tid, scratch, MEMFD_NAME);
    let memfd = written.and_then(|()| {
        task.syscall_ok(
            "memfd_create",
            libc::SYS_memfd_create,
            [scratch, libc::MFD_CLOEXEC as u64, 0, 0, 0, 0],
        )
    });
    task.syscall_ok(
        "munmap",
        libc::SYS_munmap,
        [scratch, PAGE as u64, 0, 0, 0, 0],
    )?;
    let memfd = memfd?;
    let result = (|| {
        task.syscall_ok(
            "ftruncate",
            libc::SYS_ftruncate,
            [memfd, len as u64, 0, 0, 0, 0],
        )?;
        let path = format!("/proc/{tid}/fd/{memfd}");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| InfectError::io(tid, format!("open {path}"), e))?;
        let area = SharedArea::map(tid, &file, len)?;
        let rwx = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
        let base = task.syscall_ok(
            "mmap",
            libc::SYS_mmap,
            [0, len as u64, rwx, libc::MAP_SHARED as u64, memfd, 0],
        )?;
        Ok((area, base))
    })();
    // The mapping keeps the memfd alive; the fd must not linger in the task.
    task.syscall_ok("close", libc::SYS_close, [memfd, 0, 0, 0, 0, 0])?;
    result
}

/// Writes `bytes` at `addr` in the task's memory.
fn write_remote(tid: i32, addr: u64, bytes: &[u8]) -> Result<(), InfectError> {
    let local = [std::io::IoSlice::new(bytes)];
    let remote = [nix::sys::uio::RemoteIoVec {
        base: addr as usize,
        len: bytes.len(),
    }];
    let n = nix::sys::uio::process_vm_writev(nix::unistd::Pid::from_raw(tid), &local, &remote)
        .map_err(|e| {
            InfectError::io(tid, format!("write {} bytes at {addr:#x}", bytes.len()), e)
        })?;
    if n != bytes.len() {
        return Err(InfectError::Parasite {
            tid,
            what: format!("short write at {addr:#x}"),
        });
    }
    Ok(())
}

/// A `struct sockaddr_un` for an abstract name (leading NUL, no trailing NUL).
fn sockaddr_un_abstract(name: &[u8]) -> Vec<u8> {
    let mut raw = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    raw.push(0);
    raw.extend_from_slice(name);
    raw
}

fn pipe_max_size() -> usize {
    std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(WANTED_PIPE_SIZE)
}

/// # Safety
/// `T` must have no padding bytes.
unsafe fn as_bytes<T>(value: &T) -> &[u8] {
    // SAFETY: the caller guarantees every byte of T is initialised.
    unsafe { std::slice::from_raw_parts((value as *const T).cast(), size_of::<T>()) }
}

/// # Safety
/// Every byte pattern must be a valid `T`.
unsafe fn as_bytes_mut<T>(value: &mut T) -> &mut [u8] {
    // SAFETY: the caller guarantees any bytes written form a valid T.
    unsafe { std::slice::from_raw_parts_mut((value as *mut T).cast(), size_of::<T>()) }
}

#[cfg(test)]
mod tests;
