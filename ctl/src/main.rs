//! reefctl: the command-line tool for humans.

mod bgp;
mod ipam;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "reefctl",
    version,
    about = "Inspect and manage Reef: BGP sessions, routes and IPAM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// BGP sessions and routes of a running reefd (through its admin API).
    Bgp(bgp::Args),
    /// IP address management: show, check and release.
    Ipam(ipam::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bgp(args) => bgp::run(args),
        Command::Ipam(args) => ipam::run(args),
    }
}
