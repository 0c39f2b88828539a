//! `rcr`: checkpoint and restore Linux processes. A thin layer over
//! `rcr_engine`: parse arguments, call the engine, print results or one
//! readable error line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rcr",
    version,
    about = "Checkpoint and restore Linux processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Checkpoint a process into a directory of images, then kill it.
    Dump {
        /// The process to checkpoint.
        #[arg(long = "tree", short = 't', value_name = "PID")]
        pid: i32,
        /// Where to write the checkpoint (created; must be new or empty).
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        dir: PathBuf,
        /// Keep the process running after the checkpoint.
        #[arg(long)]
        leave_running: bool,
        /// Print what the dump did as JSON on stdout.
        #[arg(long)]
        stats: bool,
    },
    /// Restore a checkpoint: the process runs again with its saved pid,
    /// which is printed on stdout.
    Restore {
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        dir: PathBuf,
        /// Print what the restore did as JSON on stderr.
        #[arg(long)]
        stats: bool,
    },
    /// Print a checkpoint as JSON, with where each thread was stopped.
    Show {
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        dir: PathBuf,
    },
    /// Say what this host and caller can do, and what to do about what is missing.
    Check {
        /// Print the verdicts as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore the checkpoint in DIR if there is one, else start CMD; in a
    /// new pid namespace, exiting with the program's status.
    Run {
        /// Where the checkpoint of this program is kept.
        #[arg(long = "image", value_name = "DIR")]
        dir: PathBuf,
        /// The program to start when there is no checkpoint yet.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<std::ffi::OsString>,
    },
    /// Checkpoint the program that `rcr run --image DIR` runs.
    Checkpoint {
        dir: PathBuf,
        /// Keep the program running after the checkpoint.
        #[arg(long)]
        leave_running: bool,
    },
}

fn run(cli: Cli) -> Result<ExitCode, rcr_engine::Error> {
    match cli.command {
        Command::Dump {
            pid,
            dir,
            leave_running,
            stats,
        } => {
            let s = rcr_engine::dump(&rcr_engine::DumpOptions {
                pid,
                dir,
                leave_running,
            })?;
            if stats {
                println!("{}", serde_json::to_string(&s).expect("stats serialize"));
            }
        }
        Command::Restore { dir, stats } => {
            let s = rcr_engine::restore(&rcr_engine::RestoreOptions { dir })?;
            for w in &s.warnings {
                eprintln!("rcr: warning: {w}");
            }
            if stats {
                eprintln!("{}", serde_json::to_string(&s).expect("stats serialize"));
            }
            println!("{}", s.pid);
        }
        Command::Show { dir } => {
            let v = rcr_engine::show(&dir)?;
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        }
        Command::Check { json } => {
            let report = rcr_engine::check::check();
            if json {
                println!("{}", serde_json::to_string_pretty(&report).expect("json"));
            } else {
                print_report(&report);
            }
        }
        Command::Run { dir, command } => {
            let code = rcr_engine::run::run(&rcr_engine::run::RunOptions { dir, command })?;
            return Ok(ExitCode::from(code as u8));
        }
        Command::Checkpoint { dir, leave_running } => {
            println!("{}", rcr_engine::run::checkpoint(&dir, leave_running)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(report: &rcr_engine::check::Report) {
    for v in &report.checks {
        println!(
            "{}: {} ({})",
            v.name,
            if v.ok { "yes" } else { "no" },
            v.found
        );
        if let Some(a) = &v.advice {
            println!("    -> {a}");
        }
    }
    match report.pid_strategy {
        Some(s) => println!("pids: {}", s.name()),
        None => println!("pids: none (saved pids only come back under `rcr run`)"),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rcr: {e}");
            ExitCode::FAILURE
        }
    }
}
