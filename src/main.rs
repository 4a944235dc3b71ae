//! The `ironvme` command-line tool. See `ironvme --help`, and [`ironvme::cli`] for the
//! subcommands.

use clap::Parser;
use ironvme::cli::{self, Cli, CliError};
use std::io::{self, IsTerminal};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

/// The log filter when `RUST_LOG` is unset or unparsable: warnings and errors, so that
/// what the user should know (psync falling back to buffered I/O, io_uring unavailable
/// and psync used instead, buffers leaked after a device stopped answering) reaches them.
const DEFAULT_LOG_FILTER: &str = "warn";

/// Sends the driver's tracing spans and events to stderr, filtered by `RUST_LOG`
/// (`RUST_LOG=debug`, `RUST_LOG=ironvme_nvme=trace`, `RUST_LOG=off`, ...); without it,
/// warnings and errors ([`DEFAULT_LOG_FILTER`]).
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
        .init();
}

/// Exit statuses: 0 success, [`cli::EXIT_FAILURE`] (1) a device or OS error,
/// [`cli::EXIT_USAGE`] (2) a usage error, [`cli::EXIT_MISMATCH`] (3) a data mismatch (see
/// [`CliError::exit_code`]).
fn main() -> ExitCode {
    // Usage errors, --help and --version end here: clap prints them; --help and
    // --version exit 0, usage errors EXIT_USAGE.
    let args = match Cli::try_parse() {
        Ok(args) => args,
        Err(e) => {
            // Printing fails only when stdout/stderr went away; the status still tells.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { cli::EXIT_USAGE as u8 } else { 0 });
        }
    };
    init_tracing();
    let mut stdout = io::stdout().lock();
    match cli::run(&args, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`ironvme list | head -1`): not a failure.
        Err(CliError::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ironvme: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
