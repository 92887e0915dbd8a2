//! `palisadectl`: Palisade from the command line.
//!
//! `palisadectl openapi [-n NAMESPACE] MONITOR [--yaml]` prints the endpoints an ApiMonitor
//! discovered (its `status.endpoints`) as an OpenAPI 3.0.3 document, JSON by default. It talks to
//! the cluster of the current kubeconfig context (or the in-cluster service account), and needs
//! `get` on `apimonitors.palisade.dev` in that namespace.

use anyhow::Context;
use clap::{Parser, Subcommand};
use kube::api::Api;
use palisade_api::openapi::inventory_to_openapi;
use palisade_api::v1alpha1::ApiMonitor;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "palisadectl", version, about = "Palisade from the command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the endpoints an ApiMonitor discovered as an OpenAPI 3.0.3 document.
    Openapi {
        /// Namespace of the ApiMonitor (default: the kubeconfig context's namespace).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Name of the ApiMonitor.
        monitor: String,
        /// Print YAML instead of JSON.
        #[arg(long)]
        yaml: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("palisadectl: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Openapi {
            namespace,
            monitor,
            yaml,
        } => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (kubeconfig or in-cluster)")?;
            let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
            let api: Api<ApiMonitor> = Api::namespaced(client, &namespace);
            let object = api
                .get_opt(&monitor)
                .await
                .with_context(|| format!("reading ApiMonitor {namespace}/{monitor}"))?
                .with_context(|| format!("ApiMonitor {namespace}/{monitor} not found"))?;
            let status = object.status.unwrap_or_default();
            if status.endpoints.items.is_empty() {
                eprintln!("palisadectl: ApiMonitor {namespace}/{monitor} has discovered no endpoints yet");
            }
            let document = inventory_to_openapi(&monitor, &status);
            let text = if yaml {
                serde_yaml::to_string(&document)?
            } else {
                serde_json::to_string_pretty(&document)? + "\n"
            };
            print!("{text}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn arguments_parse() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["palisadectl", "openapi", "-n", "demo", "demo-api", "--yaml"]);
        assert!(matches!(
            cli.map(|c| c.command),
            Ok(Command::Openapi { namespace: Some(ns), monitor, yaml: true }) if ns == "demo" && monitor == "demo-api"
        ));
        assert!(
            Cli::try_parse_from(["palisadectl", "openapi"]).is_err(),
            "the monitor is required"
        );
    }
}
