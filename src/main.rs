//! The `lambdaml` binary: driver, worker and tools in one executable, so the same file runs
//! on a laptop, in CI and as the Lambda function.

use std::process::ExitCode;

use clap::Parser;
use lambdaml::cli::{Cli, Command, PsCommand};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    keep_freed_memory();
    // Started by Lambda (or a local Lambda): serve worker events, whatever the arguments.
    if std::env::var_os(lambdaml::cli::lambda::RUNTIME_API_ENV).is_some() {
        init_logs("info");
        return exit(lambdaml::cli::lambda::serve_runtime());
    }
    let cli = Cli::parse();
    // Workers and the parameter server log what they do (their stderr is their log); the
    // driver stays quiet unless asked, so its table and progress bar are readable.
    let serving = matches!(
        &cli.command,
        Command::Ps(PsCommand::Serve { .. })
            | Command::Lambda(lambdaml::cli::lambda::LambdaCommand::Emulate { .. })
    );
    let default = match (&cli.command, cli.verbose) {
        (Command::Worker(_) | Command::Supervise(_), 0) => "info",
        (_, 0) if serving => "info",
        (_, 0) => "warn",
        (_, 1) => "info",
        _ => "debug",
    };
    init_logs(default);
    exit(lambdaml::cli::run(cli))
}

/// Logs to stderr (a worker's log file; CloudWatch on Lambda) at `default` level unless
/// `LAMBDAML_LOG` says otherwise.
fn init_logs(default: &str) {
    // r2d2 (memcached's pools) logs every failed background connection at error level;
    // the channel reports the failure once, with the key and the channel. aws_config warns
    // at every load off EC2 that the instance metadata service is out of reach.
    let filter = EnvFilter::try_from_env("LAMBDAML_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{default},r2d2=off,aws_config=error")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: logs go to files and into failure reports.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Lets glibc's allocator keep the memory a process frees for its next allocations, instead
/// of returning it to the kernel.
///
/// A worker allocates the same large buffers every round or step (a vector to send, the
/// values received, a mean; a network's activations). Allocations from 128 KiB are each
/// mapped on their own by default, and freed memory is trimmed from the heaps of the
/// runtime's threads. Each round then paid page faults and the zeroing of fresh pages: in
/// an 8-worker Redis all-reduce of 1 MB, about a tenth of all CPU samples.
/// From here, blocks under 32 MiB (glibc's largest threshold) come from the heaps, and up to
/// 256 MiB freed at a heap's top stay there.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it runs first in main, before any
    // thread exists. A value it refuses leaves the default.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
