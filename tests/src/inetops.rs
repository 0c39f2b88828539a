//! TCP and UDP socket helpers for the workloads: std's socket types over
//! fd numbers the workload placed, each call returning what failed as
//! verdict text.

use crate::fdops::sys;
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::FromRawFd;

/// A new socket of `family` and `kind` (SOCK_STREAM: TCP, SOCK_DGRAM: UDP).
pub fn socket(family: i32, kind: i32) -> Result<i32, String> {
    // SAFETY: socket() takes plain integers.
    Ok(sys(unsafe { libc::socket(family, kind, 0) } as i64, "socket")? as i32)
}

/// `fd` seen as a std socket of type `T`, without taking it over.
pub fn view<T: FromRawFd>(fd: i32) -> ManuallyDrop<T> {
    // SAFETY: ManuallyDrop never closes `fd`, which stays the caller's.
    ManuallyDrop::new(unsafe { T::from_raw_fd(fd) })
}

/// `sockaddr_storage` holding `addr`, and its length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: a zeroed sockaddr_storage is valid.
    let mut s: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe {
                &mut *(&mut s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (s, len as libc::socklen_t)
}

pub fn bind(fd: i32, addr: SocketAddr) -> Result<(), String> {
    let (a, len) = sockaddr(addr);
    // SAFETY: bind reads the address we own.
    let rc = unsafe { libc::bind(fd, (&a as *const libc::sockaddr_storage).cast(), len) };
    sys(rc as i64, &format!("bind fd {fd} to {addr}"))?;
    Ok(())
}

/// The address `fd` is bound to.
pub fn local(fd: i32) -> Result<SocketAddr, String> {
    view::<UdpSocket>(fd)
        .local_addr()
        .map_err(|e| format!("getsockname fd {fd}: {e}"))
}

/// The address `fd` is connected to.
pub fn peer(fd: i32) -> Result<SocketAddr, String> {
    view::<UdpSocket>(fd)
        .peer_addr()
        .map_err(|e| format!("getpeername fd {fd}: {e}"))
}

/// An int option at `level`.
pub fn get_opt(fd: i32, level: i32, name: i32) -> Result<i32, String> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes an int we own and its length.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut i32).cast(), &mut len) };
    sys(rc as i64, &format!("getsockopt {level}/{name} fd {fd}"))?;
    Ok(v)
}

pub fn set_opt(fd: i32, level: i32, name: i32, v: i32) -> Result<(), String> {
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: setsockopt reads an int we own.
    let rc = unsafe { libc::setsockopt(fd, level, name, (&v as *const i32).cast(), len) };
    sys(rc as i64, &format!("setsockopt {level}/{name} fd {fd}"))?;
    Ok(())
}

/// What `wl_inet_peer` and its peer outside the tree say, in order.
pub mod peer_talk {
    pub const TO_PEER: &[u8] = b"from the tree before the dump";
    pub const UNREAD: &[u8] = b"unread by the tree";
    pub const WHILE_DOWN: &[u8] = b"sent while the tree was down";
    pub const AFTER: &[u8] = b"answered after the restore";
}
