//! `reefctl bgp`.

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("reefctl bgp: not implemented yet")
}
