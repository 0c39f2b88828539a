//! Readers and parsers for the `/proc` files the dump collects.
//!
//! Each submodule holds one file kind: a pure parser over `&str`/`&[u8]`, unit-tested
//! with fixtures, and a thin reader that takes a pid. Readers turn ENOENT/ESRCH on a
//! vanished process into [`ProcError::Gone`] so callers can say "process 42 exited".

pub mod auxv;
pub mod fdinfo;
pub mod maps;
pub mod pagemap;
pub mod smaps;
pub mod stat;
pub mod status;
pub mod tasks;
pub mod timers;
pub mod unix_diag;

mod read;

use std::path::PathBuf;

/// A malformed line in a `/proc` file, found by a pure parser (which knows no pid or path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {msg}")]
pub struct ParseError {
    /// 1-based line number; 0 when the problem concerns the whole file (a missing key).
    pub line: usize,
    /// What was wrong, quoting the offending text.
    pub msg: String,
}

impl ParseError {
    /// An error at `line` (1-based).
    pub fn new(line: usize, msg: impl Into<String>) -> Self {
        ParseError {
            line,
            msg: msg.into(),
        }
    }
}

/// Failure to read or understand a `/proc` file of one process.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The process (or thread) no longer exists.
    #[error("process {pid} exited")]
    Gone {
        /// The pid whose `/proc` directory vanished.
        pid: i32,
    },
    /// Reading the file failed for another reason.
    #[error("{}: {source}", path.display())]
    Io {
        /// The process the file belongs to.
        pid: i32,
        /// The file or link that could not be read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but its content is not what the kernel documents.
    #[error("{} line {}: {}", path.display(), source.line, source.msg)]
    Parse {
        /// The process the file belongs to.
        pid: i32,
        /// The file that failed to parse.
        path: PathBuf,
        /// Where and what.
        #[source]
        source: ParseError,
    },
}

/// Splits a kernel " (deleted)" suffix off a path (maps names, fd links, cwd, exe).
pub fn split_deleted(path: &str) -> (&str, bool) {
    match path.strip_suffix(" (deleted)") {
        Some(stripped) => (stripped, true),
        None => (path, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_error_names_pid_path_and_line() {
        let err = ProcError::Parse {
            pid: 42,
            path: PathBuf::from("/proc/42/maps"),
            source: ParseError::new(7, "bad address range 'xyz'"),
        };
        assert_eq!(
            err.to_string(),
            "/proc/42/maps line 7: bad address range 'xyz'"
        );
        assert_eq!(ProcError::Gone { pid: 42 }.to_string(), "process 42 exited");
    }

    #[test]
    fn deleted_suffix_is_split() {
        assert_eq!(split_deleted("/tmp/a (deleted)"), ("/tmp/a", true));
        assert_eq!(split_deleted("/tmp/a"), ("/tmp/a", false));
    }
}
