//! reefctl: the command-line tool for humans.
//!
//! Errors print as one line on stderr (never a backtrace, whatever `RUST_BACKTRACE` says) and the exit
//! code says what kind of failure it was (see [`exit`]).

mod bgp;
mod etcd;
mod exit;
mod ipam;
mod node;
mod output;
mod resources;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "reefctl",
    version,
    about = "Inspect and manage Reef: resources, node status, BGP sessions and routes, IPAM",
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 unreachable (reefd or etcd), \
                  5 conflict (changed since read, or exists), 6 invalid (nothing written)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show resources: `get KIND [NAME]` or `get -f FILE`.
    Get(resources::GetArgs),
    /// Create or update the resources of a YAML file (validated first; compare-and-swap writes).
    Apply(resources::ApplyArgs),
    /// Delete resources: `delete KIND NAME` or `delete -f FILE`.
    Delete(resources::DeleteArgs),
    /// This node: BGP sessions like `birdc show protocols`, and its ReefNode status.
    Node(node::Args),
    /// BGP sessions and routes of a running reefd (through its admin API).
    Bgp(bgp::Args),
    /// IP address management: show, check and release.
    Ipam(ipam::Args),
    /// Print a shell completion script (e.g. `reefctl completion bash > /etc/bash_completion.d/reefctl`).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    exit::install_panic_hook();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Get(args) => resources::get(args),
        Command::Apply(args) => resources::apply(args),
        Command::Delete(args) => resources::delete(args),
        Command::Node(args) => node::run(args),
        Command::Bgp(args) => bgp::run(args),
        Command::Ipam(args) => ipam::run(args),
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "reefctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => exit::report(&error),
    }
}
