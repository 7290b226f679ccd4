//! `reefctl ipam`: show pool and block use, check for leaks, release addresses.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::etcd::EtcdArgs;
use anyhow::Context;
use reef_ipam::check::PoolUsage;
use reef_ipam::{CheckInput, CheckReport, Ipam, ReleaseOutcome, ReleaseRequest};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Pools with their use; with --show-blocks every block, its affinity and use.
    Show {
        #[arg(long)]
        show_blocks: bool,
    },
    /// Look for leaked, orphaned and inconsistent IPAM state.
    Check {
        /// Write the report as JSON to this file (input of `release --from-report`).
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// The nodes that exist (comma separated): addresses and blocks of others are reported.
        #[arg(long, value_delimiter = ',')]
        nodes: Option<Vec<String>>,
        /// A file with the addresses live workloads use, one per line: finds allocated-but-unused and
        /// used-but-unallocated addresses.
        #[arg(long)]
        in_use_file: Option<PathBuf>,
    },
    /// Release an address, or everything a `check` report lists.
    Release {
        #[arg(
            long,
            conflicts_with = "from_report",
            required_unless_present = "from_report"
        )]
        ip: Option<IpAddr>,
        #[arg(long)]
        from_report: Option<PathBuf>,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(execute(args))
}

async fn execute(args: Args) -> anyhow::Result<()> {
    let datastore = args.etcd.connect().await?;
    let ipam = Ipam::new(&datastore);
    match args.command {
        Command::Show { show_blocks } => {
            print!("{}", show_table(&ipam.usage().await?, show_blocks))
        }
        Command::Check {
            output,
            nodes,
            in_use_file,
        } => {
            let in_use = match in_use_file {
                Some(path) => Some(read_addresses(&path)?),
                None => None,
            };
            let input = CheckInput {
                in_use,
                nodes: nodes.map(|n| n.into_iter().collect()),
            };
            let report = ipam.check(&input).await?;
            print!("{}", check_text(&report));
            if let Some(path) = output {
                let json = serde_json::to_string_pretty(&report)?;
                std::fs::write(&path, json)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("report written to {}", path.display());
            }
        }
        Command::Release { ip: Some(ip), .. } => {
            let outcome = ipam
                .release_ips(&[ReleaseRequest {
                    ip,
                    sequence_number: None,
                }])
                .await?;
            match outcome.first() {
                Some(ReleaseOutcome::Released { handle_id, .. }) => {
                    println!(
                        "released {ip} (handle {})",
                        handle_id.as_deref().unwrap_or("<none>")
                    )
                }
                _ => println!("{ip} was not allocated: nothing to release"),
            }
        }
        Command::Release {
            from_report: Some(path),
            ..
        } => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let report: CheckReport = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a report of `reefctl ipam check -o`",
                    path.display()
                )
            })?;
            let done = ipam.release_from_report(&report).await?;
            println!(
                "released {} addresses ({} skipped: reused or released since the report), deleted {} handles, released {} block affinities",
                done.addresses_released,
                done.addresses_skipped,
                done.handles_deleted,
                done.affinities_released
            );
        }
        Command::Release { .. } => anyhow::bail!("give --ip ADDRESS or --from-report FILE"),
    }
    Ok(())
}

fn read_addresses(path: &PathBuf) -> anyhow::Result<BTreeSet<IpAddr>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.parse()
                .with_context(|| format!("{}: {l:?} is not an IP address", path.display()))
        })
        .collect()
}

fn percent(part: u128, whole: u128) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn show_table(pools: &[PoolUsage], show_blocks: bool) -> String {
    let mut out = format!(
        "{:<20} {:<24} {:>6} {:>10} {:>12} {:>7}  {}\n",
        "POOL", "CIDR", "BLOCK", "IN USE", "CAPACITY", "USED", "STATE"
    );
    for p in pools {
        out += &format!(
            "{:<20} {:<24} {:>6} {:>10} {:>12} {:>6.1}%  {}\n",
            p.name,
            p.cidr.to_string(),
            format!("/{}", p.block_size),
            p.in_use,
            p.capacity,
            percent(p.in_use, p.capacity),
            if p.disabled { "disabled" } else { "enabled" }
        );
    }
    if show_blocks {
        out += &format!(
            "\n{:<24} {:<28} {:>6} {:>6}\n",
            "BLOCK", "AFFINITY", "USED", "FREE"
        );
        for block in pools.iter().flat_map(|p| &p.blocks) {
            out += &format!(
                "{:<24} {:<28} {:>6} {:>6}\n",
                block.cidr.to_string(),
                block.affinity.as_deref().unwrap_or("-"),
                block.used,
                block.free
            );
        }
    }
    out
}

fn check_text(r: &CheckReport) -> String {
    let mut out = format!(
        "checked {} pools, {} blocks, {} allocations, {} handles\n",
        r.pools, r.blocks, r.allocations, r.handles
    );
    let mut section = |title: &str, lines: Vec<String>| {
        if !lines.is_empty() {
            out += &format!("\n{title} ({}):\n", lines.len());
            for line in lines {
                out += &format!("  {line}\n");
            }
        }
    };
    let address = |a: &reef_ipam::check::AddressRecord| {
        format!(
            "{:<20} block {:<20} handle {:<40} node {}",
            a.ip.to_string(),
            a.block.to_string(),
            a.handle_id.as_deref().unwrap_or("-"),
            a.node.as_deref().unwrap_or("-")
        )
    };
    section(
        "allocated but not used by any workload",
        r.allocated_but_unused.iter().map(address).collect(),
    );
    section(
        "used by a workload but not allocated",
        r.used_but_unallocated
            .iter()
            .map(|ip| ip.to_string())
            .collect(),
    );
    section(
        "allocated by nodes that no longer exist",
        r.addresses_of_missing_nodes.iter().map(address).collect(),
    );
    section(
        "allocations whose handle is missing",
        r.allocations_without_handle.iter().map(address).collect(),
    );
    section(
        "handles that disagree with the blocks",
        r.orphan_handles
            .iter()
            .map(|h| {
                format!(
                    "{} records {:?}, found {:?}",
                    h.handle_id, h.recorded, h.found
                )
            })
            .collect(),
    );
    section(
        "invalid blocks",
        r.invalid_blocks
            .iter()
            .map(|b| format!("{} ({}): {}", b.name, b.cidr, b.reason))
            .collect(),
    );
    section(
        "stale block affinities",
        r.stale_affinities
            .iter()
            .map(|a| format!("{} node {} block {}: {}", a.name, a.node, a.cidr, a.reason))
            .collect(),
    );
    section(
        "block affinities of nodes that no longer exist",
        r.affinities_of_missing_nodes
            .iter()
            .map(|a| format!("node {} block {}", a.node, a.cidr))
            .collect(),
    );
    let borrowed = r.borrowed.len();
    let problems = r.problem_count();
    out += &format!(
        "\n{} problem{} found; {borrowed} borrowed address{} (normal when a pool is nearly full)\n",
        problems,
        if problems == 1 { "" } else { "s" },
        if borrowed == 1 { "" } else { "es" }
    );
    if problems > 0 {
        out += "fix: `reefctl ipam check -o report.json ...` then `reefctl ipam release --from-report report.json`\n";
    }
    out
}
