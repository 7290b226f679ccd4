//! `reefctl ipam`.

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("reefctl ipam: not implemented yet")
}
