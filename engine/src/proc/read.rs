//! The effectful edge shared by the readers: paths under `/proc/PID[/task/TID]`, whole-file
//! reads, links and numeric directory listings, with errors mapped to [`ProcError`].

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;

use super::{ParseError, ProcError};

/// The process (and optionally thread) whose `/proc` directory is read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pid: i32,
    tid: Option<i32>,
}

impl Target {
    /// `/proc/PID`.
    pub(crate) fn process(pid: i32) -> Self {
        Target { pid, tid: None }
    }

    /// `/proc/PID/task/TID`.
    pub(crate) fn thread(pid: i32, tid: i32) -> Self {
        Target {
            pid,
            tid: Some(tid),
        }
    }

    fn dir(&self) -> PathBuf {
        match self.tid {
            None => PathBuf::from(format!("/proc/{}", self.pid)),
            Some(tid) => PathBuf::from(format!("/proc/{}/task/{tid}", self.pid)),
        }
    }

    /// The path of `rel` inside this target's directory.
    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir().join(rel)
    }

    /// Maps an I/O error on `path`; a missing directory or ESRCH means the task is gone.
    pub(crate) fn io_error(&self, path: PathBuf, source: io::Error) -> ProcError {
        let gone_pid = self.tid.unwrap_or(self.pid);
        match source.raw_os_error() {
            Some(libc::ESRCH) => ProcError::Gone { pid: gone_pid },
            Some(libc::ENOENT) if !self.dir().exists() => ProcError::Gone { pid: gone_pid },
            _ => ProcError::Io {
                pid: self.pid,
                path,
                source,
            },
        }
    }

    /// Wraps a parser's error with this target's pid and the file's path.
    pub(crate) fn parse_error(&self, path: PathBuf, source: ParseError) -> ProcError {
        ProcError::Parse {
            pid: self.pid,
            path,
            source,
        }
    }

    /// Reads the whole file in as few `read` calls as the kernel allows.
    pub(crate) fn read_bytes(&self, rel: &str, capacity: usize) -> Result<Vec<u8>, ProcError> {
        let path = self.path(rel);
        let mut buf = Vec::with_capacity(capacity);
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(|e| self.io_error(path, e))?;
        Ok(buf)
    }

    /// Reads a text file; bytes that are not UTF-8 (odd file names) are replaced.
    pub(crate) fn read_string(&self, rel: &str, capacity: usize) -> Result<String, ProcError> {
        Ok(lossy_string(self.read_bytes(rel, capacity)?))
    }

    /// Reads a text file and runs a pure parser on it, naming the file in parse errors.
    pub(crate) fn parse<T>(
        &self,
        rel: &str,
        capacity: usize,
        parser: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Result<T, ProcError> {
        let text = self.read_string(rel, capacity)?;
        parser(&text).map_err(|e| self.parse_error(self.path(rel), e))
    }

    /// `readlink` of a magic link, kept in the kernel's textual form.
    pub(crate) fn read_link(&self, rel: &str) -> Result<String, ProcError> {
        let path = self.path(rel);
        let target = std::fs::read_link(&path).map_err(|e| self.io_error(path, e))?;
        Ok(match target.into_os_string().into_string() {
            Ok(s) => s,
            Err(os) => os.to_string_lossy().into_owned(),
        })
    }

    /// The numeric entry names of a directory (`fd/`, `task/`), sorted ascending.
    pub(crate) fn list_numeric_dir(&self, rel: &str) -> Result<Vec<i32>, ProcError> {
        let path = self.path(rel);
        let entries = std::fs::read_dir(&path).map_err(|e| self.io_error(path.clone(), e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.io_error(path.clone(), e))?;
            if let Some(n) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

fn lossy_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}
