//! Unix socket helpers for the workloads: names as bytes (a leading NUL
//! makes an abstract name), each call returning what failed as verdict text.

use crate::fdops::sys;

/// `sockaddr_un` holding `name`, and its length.
fn address(name: &[u8]) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: a zeroed sockaddr_un is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in a.sun_path.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    let nul = usize::from(name.first().is_some_and(|&c| c != 0));
    (a, (2 + name.len() + nul) as libc::socklen_t)
}

/// A new unix socket of `kind` (SOCK_STREAM, ...).
pub fn socket(kind: i32) -> Result<i32, String> {
    // SAFETY: socket() takes plain integers.
    Ok(sys(
        unsafe { libc::socket(libc::AF_UNIX, kind, 0) } as i64,
        "socket",
    )? as i32)
}

pub fn socketpair(kind: i32) -> Result<(i32, i32), String> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into the array.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) };
    sys(rc as i64, "socketpair")?;
    Ok((fds[0], fds[1]))
}

pub fn bind(fd: i32, name: &[u8]) -> Result<(), String> {
    let (a, len) = address(name);
    // SAFETY: bind reads the address we own.
    let rc = unsafe { libc::bind(fd, (&a as *const libc::sockaddr_un).cast(), len) };
    sys(
        rc as i64,
        &format!("bind {}", String::from_utf8_lossy(name)),
    )?;
    Ok(())
}

pub fn connect(fd: i32, name: &[u8]) -> Result<(), String> {
    let (a, len) = address(name);
    // SAFETY: connect reads the address we own.
    let rc = unsafe { libc::connect(fd, (&a as *const libc::sockaddr_un).cast(), len) };
    sys(
        rc as i64,
        &format!("connect {}", String::from_utf8_lossy(name)),
    )?;
    Ok(())
}

pub fn listen(fd: i32, backlog: i32) -> Result<(), String> {
    // SAFETY: listen on a descriptor number.
    sys(unsafe { libc::listen(fd, backlog) } as i64, "listen")?;
    Ok(())
}

pub fn accept(fd: i32) -> Result<i32, String> {
    // SAFETY: accept without a peer address.
    let rc = unsafe { libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut()) };
    Ok(sys(rc as i64, &format!("accept fd {fd}"))? as i32)
}

/// One send(2) of all of `data` (a whole datagram), never raising SIGPIPE.
pub fn send(fd: i32, data: &[u8]) -> Result<(), String> {
    // SAFETY: sends from a slice we own.
    let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
    let n = sys(n as i64, &format!("send fd {fd}"))? as usize;
    if n != data.len() {
        return Err(format!("send fd {fd}: {n} of {} bytes", data.len()));
    }
    Ok(())
}

/// One recv(2) of up to `len` bytes without waiting: the bytes (a whole
/// datagram), or None when nothing is queued.
pub fn recv_now(fd: i32, len: usize) -> Result<Option<Vec<u8>>, String> {
    let mut buf = vec![0u8; len];
    // SAFETY: receives into a buffer of `len` bytes we own.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), len, libc::MSG_DONTWAIT) };
    if n < 0 && crate::workload::last_err().raw_os_error() == Some(libc::EAGAIN) {
        return Ok(None);
    }
    buf.truncate(sys(n as i64, &format!("recv fd {fd}"))? as usize);
    Ok(Some(buf))
}

/// A datagram and its sender's name (empty when unnamed).
pub type Datagram = (Vec<u8>, Vec<u8>);

/// One recvfrom(2) of up to `len` bytes without waiting, or None when
/// nothing is queued.
pub fn recv_from_now(fd: i32, len: usize) -> Result<Option<Datagram>, String> {
    let mut buf = vec![0u8; len];
    // SAFETY: a zeroed sockaddr_un is valid; recvfrom fills it.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut alen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: receives into a buffer of `len` bytes and an address we own.
    let n = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            len,
            libc::MSG_DONTWAIT,
            (&mut a as *mut libc::sockaddr_un).cast(),
            &mut alen,
        )
    };
    if n < 0 && crate::workload::last_err().raw_os_error() == Some(libc::EAGAIN) {
        return Ok(None);
    }
    buf.truncate(sys(n as i64, &format!("recvfrom fd {fd}"))? as usize);
    Ok(Some((buf, name_of(&a, alen))))
}

/// The name in an address the kernel filled in, `len` bytes of it.
fn name_of(a: &libc::sockaddr_un, len: libc::socklen_t) -> Vec<u8> {
    let n = (len as usize).saturating_sub(2);
    let mut name: Vec<u8> = a.sun_path[..n].iter().map(|&c| c as u8).collect();
    if name.first().is_some_and(|&c| c != 0) {
        while name.last() == Some(&0) {
            name.pop();
        }
    }
    name
}

/// An int socket option.
pub fn get_opt(fd: i32, name: i32) -> Result<i32, String> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes an int we own and its length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut v as *mut i32).cast(),
            &mut len,
        )
    };
    sys(rc as i64, &format!("getsockopt {name} fd {fd}"))?;
    Ok(v)
}

pub fn set_opt(fd: i32, name: i32, v: i32) -> Result<(), String> {
    // SAFETY: setsockopt reads an int we own.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&v as *const i32).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    sys(rc as i64, &format!("setsockopt {name} fd {fd}"))?;
    Ok(())
}

/// getsockname(2) as name bytes (empty when unbound).
pub fn local_name(fd: i32) -> Result<Vec<u8>, String> {
    // SAFETY: a zeroed sockaddr_un is valid; getsockname fills it.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: as above, with its size.
    let rc = unsafe { libc::getsockname(fd, (&mut a as *mut libc::sockaddr_un).cast(), &mut len) };
    sys(rc as i64, &format!("getsockname fd {fd}"))?;
    Ok(name_of(&a, len))
}
