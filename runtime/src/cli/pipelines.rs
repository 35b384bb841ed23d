//! `sluice pipelines validate FILE...`: checks pipeline files without running them.

use std::path::PathBuf;

use clap::Subcommand;

use super::CliError;

/// Pipeline file commands.
#[derive(Debug, Subcommand)]
pub enum PipelinesCommand {
    /// Check pipeline files: TOML syntax, known keys, names, SQL syntax, topic names and
    /// configs, and every connector built (globs, URLs, sizes). Every error names the file,
    /// line and key; `${VAR}` values are never shown.
    Validate {
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the reference of every pipeline file key (docs/pipeline-reference.md).
    Reference,
}

/// The generated key reference, kept in sync with the config structs by a test.
const REFERENCE: &str = include_str!("../../../docs/pipeline-reference.md");

impl PipelinesCommand {
    /// Runs it (needs no data directory).
    pub fn run(self) -> Result<(), CliError> {
        match self {
            PipelinesCommand::Reference => {
                print!("{REFERENCE}");
                Ok(())
            }
            PipelinesCommand::Validate { files } => {
                let mut failed = Vec::new();
                for f in &files {
                    let checked = crate::pipeline::load(f).and_then(|p| {
                        crate::pipeline::build_check(&p).map_err(|e| e.redact(&p.secrets))?;
                        Ok(p)
                    });
                    match checked {
                        Ok(p) => println!(
                            "ok: {} (pipeline {}: {} topic(s), {} source(s), {} sink(s), {} SQL statement(s))",
                            f.display(),
                            p.name,
                            p.config.topics.len(),
                            p.config.sources.len(),
                            p.config.sinks.len(),
                            p.config
                                .sql
                                .as_deref()
                                .map_or(0, |s| sluice_sql::parse(s).map_or(0, |v| v.len()))
                        ),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                match failed.len() {
                    0 => Ok(()),
                    1 => Err(CliError::Usage(failed.remove(0))),
                    _ => Err(CliError::Usage(failed.join("; "))),
                }
            }
        }
    }
}
