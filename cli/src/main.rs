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
        /// Checkpoint established TCP connections with TCP_REPAIR (both ends
        /// in the tree, or a peer that stays quiet until the restore).
        #[arg(long)]
        tcp_established: bool,
        /// Keep unix sockets connected to a named peer outside the tree
        /// (a listener, a datagram receiver like /dev/log): restore connects
        /// them to that name again.
        #[arg(long)]
        external_unix: bool,
        /// The tree is a job of a shell outside it: its controlling terminal
        /// is stored as the caller's (restore it with --shell-job).
        #[arg(long)]
        shell_job: bool,
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
        /// Connect unix sockets dumped with --external-unix to their peer's
        /// name again (a stream socket gets a new connection).
        #[arg(long)]
        external_unix: bool,
        /// How saved pids are given back: auto (set_tid, else ns_last_pid,
        /// else spin), or only set_tid, ns_last_pid or spin.
        #[arg(long, value_name = "HOW", default_value = "auto", value_parser = parse_pids)]
        pids: rcr_engine::PidChoice,
        /// How closely this CPU must match the checkpoint's: strict (same
        /// vendor, family, model and XSAVE layout too), compatible (no feature
        /// the program could have seen is missing) or none (warn only).
        #[arg(long, value_name = "MODE", default_value = "compatible")]
        cpu_check: rcr_engine::cpu::CpuCheck,
        #[command(flatten)]
        cpu: CpuProfileArgs,
        /// Restore a tree dumped with --shell-job onto rcr's stdin terminal,
        /// in rcr's session, its job in the foreground; rcr stays its parent
        /// until it ends, relaying job control, and exits with its status.
        #[arg(long, conflicts_with = "cpu_profile")]
        shell_job: bool,
    },
    /// Print this host's CPU: identity, features by name, XSAVE layout.
    Cpu {
        /// The whole record as JSON (readable back as a --cpu-profile).
        #[arg(long)]
        json: bool,
        /// Show the CPU as a program under this profile would see it.
        #[arg(long, value_name = "PROFILE")]
        profile: Option<String>,
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
        #[command(flatten)]
        cpu: CpuProfileArgs,
    },
    /// Checkpoint the program that `rcr run --image DIR` runs.
    Checkpoint {
        dir: PathBuf,
        /// Keep the program running after the checkpoint.
        #[arg(long)]
        leave_running: bool,
    },
}

fn parse_pids(how: &str) -> Result<rcr_engine::PidChoice, String> {
    if how == "auto" {
        return Ok(rcr_engine::PidChoice::Auto);
    }
    rcr_engine::PidStrategy::parse(how)
        .map(rcr_engine::PidChoice::Only)
        .ok_or_else(|| format!("{how:?}: expected auto, set_tid, ns_last_pid or spin"))
}

fn run(cli: Cli) -> Result<ExitCode, rcr_engine::Error> {
    match cli.command {
        Command::Dump {
            pid,
            dir,
            leave_running,
            tcp_established,
            external_unix,
            shell_job,
            stats,
        } => {
            let s = rcr_engine::dump(&rcr_engine::DumpOptions {
                pid,
                dir,
                leave_running,
                tcp_established,
                external_unix,
                shell_job,
            })?;
            if stats {
                println!("{}", serde_json::to_string(&s).expect("stats serialize"));
            }
        }
        Command::Restore {
            dir,
            stats,
            cpu_check,
            cpu,
            pids,
            external_unix,
            shell_job,
        } => {
            let s = rcr_engine::restore(&rcr_engine::RestoreOptions {
                dir,
                pids,
                cpu_check,
                cpu_profile: cpu.parse()?,
                external_unix,
                shell_job,
            })?;
            for w in &s.warnings {
                eprintln!("rcr: warning: {w}");
            }
            if stats {
                eprintln!("{}", serde_json::to_string(&s).expect("stats serialize"));
            }
            println!("{}", s.pid);
            if shell_job {
                std::io::Write::flush(&mut std::io::stdout())
                    .map_err(|e| rcr_engine::Error::io("stdout", e))?;
                return Ok(ExitCode::from(rcr_engine::follow_shell_job(s.pid)?));
            }
            if let Some(emulator) = s.cpu_emulator {
                std::io::Write::flush(&mut std::io::stdout())
                    .map_err(|e| rcr_engine::Error::io("stdout", e))?;
                emulator.serve()?;
            }
        }
        Command::Cpu { json, profile } => {
            let profile = profile
                .map(|p| rcr_engine::cpu::CpuProfile::parse(&p))
                .transpose()?;
            let v = rcr_engine::cpu::host_json(profile.as_ref());
            if json {
                println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            } else {
                println!("{}", rcr_engine::cpu::summary(&v));
            }
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
        Command::Run { dir, command, cpu } => {
            let run = || {
                rcr_engine::run::run(&rcr_engine::run::RunOptions {
                    dir,
                    command,
                    cpu_profile: cpu.parse()?,
                })
            };
            // Whatever kept the program from starting exits RUN_FAILED.
            let code = run().unwrap_or_else(|e| {
                eprintln!("rcr: {e}");
                rcr_engine::run::RUN_FAILED
            });
            return Ok(ExitCode::from(code as u8));
        }
        Command::Checkpoint { dir, leave_running } => {
            println!("{}", rcr_engine::run::checkpoint(&dir, leave_running)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A CPU profile to run the program under, for `restore` and `run`.
#[derive(clap::Args, Debug)]
struct CpuProfileArgs {
    /// x86-64-v2|v3|v4, a file of feature names, `rcr cpu --json` output or
    /// a checkpoint dir; comma-separated for their intersection. `rcr run`
    /// restores a checkpoint under the profile it recorded.
    #[arg(long, value_name = "PROFILE")]
    cpu_profile: Option<String>,
    /// trap: CPUID faulting, every CPUID answered by rcr (needs the
    /// cpuid_fault CPU feature); glibc: only glibc's dispatch is masked,
    /// through GLIBC_TUNABLES (programs started later), and CPUID itself
    /// tells the truth.
    #[arg(
        long,
        value_name = "MODE",
        default_value = "trap",
        requires = "cpu_profile"
    )]
    cpu_profile_mode: rcr_engine::cpu::ProfileMode,
}

impl CpuProfileArgs {
    fn parse(
        &self,
    ) -> rcr_engine::Result<Option<(rcr_engine::cpu::CpuProfile, rcr_engine::cpu::ProfileMode)>>
    {
        self.cpu_profile
            .as_deref()
            .map(rcr_engine::cpu::CpuProfile::parse)
            .transpose()
            .map(|p| p.map(|p| (p, self.cpu_profile_mode)))
    }
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
    println!("pids: {}", report.pid_strategy);
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
