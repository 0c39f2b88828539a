//! The rcr binary's own front door. Having this test in the `rcr` package
//! also makes `cargo test --workspace` build target/<profile>/rcr before
//! any test runs, which the end-to-end tests in `tests/` rely on.

use std::process::{Command, Stdio};

fn rcr(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rcr"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run rcr")
}

#[test]
fn help_exits_zero_and_lists_the_commands() {
    let out = rcr(&["--help"]);
    assert!(out.status.success(), "rcr --help: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["dump", "restore", "show"] {
        assert!(text.contains(cmd), "--help does not mention {cmd}:\n{text}");
    }
}

#[test]
fn dump_without_arguments_fails() {
    let out = rcr(&["dump"]);
    assert!(
        !out.status.success(),
        "rcr dump with no pid succeeded: {out:?}"
    );
    assert!(
        !out.stderr.is_empty(),
        "rcr dump with no pid printed no error"
    );
}
