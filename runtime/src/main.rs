//! The `sluice` binary: parses the command line and runs one command.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use sluice_runtime::cli::{Cli, LogFormat};

/// mimalloc rather than glibc's malloc: a query allocates and frees many mid-sized buffers
/// per batch (decoded columns, stored records, keys), and glibc spent 15 % of a Nexmark q4
/// run at 5 M events merging and unlinking its free chunks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sets up logging on stderr: `SLUICE_LOG` filters (default `warn`; a filter that does not
/// parse is an error, not a silent default), `--log-format` chooses text or JSON lines, and
/// colour is used only on a terminal.
fn init_logging(format: LogFormat) -> Result<(), String> {
    let filter = match std::env::var("SLUICE_LOG") {
        Ok(f) => tracing_subscriber::EnvFilter::try_new(&f).map_err(|e| {
            format!(
                "SLUICE_LOG='{f}' is not a log filter: {e} (e.g. SLUICE_LOG=info,sluice_sql=debug)"
            )
        })?,
        Err(_) => tracing_subscriber::EnvFilter::new("warn"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(cli.log_format) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
