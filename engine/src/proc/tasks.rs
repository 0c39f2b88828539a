//! The task tree and per-process links: `/proc/PID/task`, `.../children`, `comm`,
//! `cwd`, `root` and `exe`.

use super::read::Target;
use super::{ParseError, ProcError};

/// The thread ids of a process, sorted ascending.
pub fn list_tasks(pid: i32) -> Result<Vec<i32>, ProcError> {
    Target::process(pid).list_numeric_dir("task")
}

/// Parses a `children` file: space-separated pids.
pub fn parse_children(text: &str) -> Result<Vec<i32>, ParseError> {
    text.split_ascii_whitespace()
        .map(|p| {
            p.parse()
                .map_err(|_| ParseError::new(1, format!("bad pid '{p}'")))
        })
        .collect()
}

/// The children that thread `tid` of `pid` created (`/proc/PID/task/TID/children`), in
/// the kernel's order. A process's children are the union over its threads.
pub fn list_children(pid: i32, tid: i32) -> Result<Vec<i32>, ProcError> {
    Target::thread(pid, tid).parse("children", 256, parse_children)
}

/// The command name of a thread (`/proc/PID/task/TID/comm`) without the newline.
pub fn read_comm(pid: i32, tid: i32) -> Result<String, ProcError> {
    let mut comm = Target::thread(pid, tid).read_string("comm", 32)?;
    if comm.ends_with('\n') {
        comm.pop();
    }
    Ok(comm)
}

/// `readlink /proc/PID/cwd` (may end in " (deleted)": see [`super::split_deleted`]).
pub fn read_cwd(pid: i32) -> Result<String, ProcError> {
    Target::process(pid).read_link("cwd")
}

/// `readlink /proc/PID/root`.
pub fn read_root(pid: i32) -> Result<String, ProcError> {
    Target::process(pid).read_link("root")
}

/// `readlink /proc/PID/exe` (may end in " (deleted)").
pub fn read_exe(pid: i32) -> Result<String, ProcError> {
    Target::process(pid).read_link("exe")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn parses_children() {
        assert_eq!(parse_children("7707 7710 \n").unwrap(), vec![7707, 7710]);
        assert_eq!(parse_children("").unwrap(), Vec::<i32>::new());
        assert_eq!(parse_children("1 x").unwrap_err().msg, "bad pid 'x'");
    }

    #[test]
    fn lists_own_tasks_and_a_child() {
        let pid = std::process::id() as i32;
        let tid = nix::unistd::gettid().as_raw();
        assert!(list_tasks(pid).unwrap().contains(&tid));
        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        let child_pid = child.id() as i32;
        let listed = list_children(pid, tid);
        let comm = read_comm(child_pid, child_pid);
        let exe = read_exe(child_pid);
        child.kill().expect("kill own child");
        child.wait().expect("reap own child");
        assert!(listed.unwrap().contains(&child_pid));
        // The child may not have exec'd yet when comm is read.
        assert!(!comm.unwrap().is_empty());
        assert!(exe.unwrap().starts_with('/'));
        assert!(matches!(read_exe(child_pid), Err(ProcError::Gone { .. })));
    }

    #[test]
    fn reads_own_links() {
        let pid = std::process::id() as i32;
        assert_eq!(
            read_cwd(pid).unwrap(),
            std::env::current_dir().unwrap().to_str().unwrap()
        );
        assert_eq!(read_root(pid).unwrap(), "/");
        assert_eq!(
            read_exe(pid).unwrap(),
            std::env::current_exe().unwrap().to_str().unwrap()
        );
        assert!(matches!(
            read_cwd(i32::MAX),
            Err(ProcError::Gone { pid: i32::MAX })
        ));
    }
}
