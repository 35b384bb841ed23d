//! `sluice cluster`: the cluster as a running node sees it, through that node's API.

use clap::Subcommand;

use super::CliError;
use super::remote::Remote;

/// The cluster commands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the nodes, the controller, and each partition's leader and in-sync replicas.
    Status {
        /// Ask the node whose API is at this URL (default: the worker running on
        /// --data-dir). The token comes from `SLUICE_API_TOKEN`.
        #[arg(long)]
        api: Option<String>,
        /// Print the API's JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

impl ClusterCommand {
    /// Runs the command against the node at `--api` or the one running on `data_dir`.
    pub fn run(self, data_dir: &std::path::Path) -> Result<(), CliError> {
        match self {
            ClusterCommand::Status { api, json } => {
                let remote = match api {
                    Some(url) => Remote::at(&url),
                    None => Remote::find(data_dir).ok_or_else(|| {
                        CliError::Usage(format!(
                            "no worker runs on {} (start one with `sluice run --node-id N --cluster ...`, or pass --api URL)",
                            data_dir.display()
                        ))
                    })?,
                };
                let v = remote.get("/cluster")?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                } else {
                    super::views::print_cluster(&v);
                }
                Ok(())
            }
        }
    }
}
