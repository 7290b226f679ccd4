//! One simulated node allocating pod addresses against etcd, for the multi-process tests.
//!
//! `ipam-worker --etcd URL --node NAME --count N` assigns N addresses, one handle each, and prints
//! `progress <n>` lines, `error <message>` for every failed call (then releases the handle, which is
//! idempotent, and tries again), and finally `allocated <json>` with every address, handle and sequence
//! number. It then waits for `release` on stdin, releases every handle and prints `released <n>`.

use std::io::{BufRead, Write};
use std::time::Duration;

use reef_datastore::{Datastore, EtcdConfig};
use reef_ipam::{AutoAssignArgs, Ipam, IpamError, pod_handle};

/// Pause between attempts while the datastore is failing, and how many attempts a call gets.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const RETRY_ATTEMPTS: u32 = 600;

struct Options {
    etcd: String,
    node: String,
    count: usize,
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let (mut etcd, mut node, mut count) = (None, None, None);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--etcd" => etcd = Some(value),
            "--node" => node = Some(value),
            "--count" => count = Some(value.parse().map_err(|e| format!("--count: {e}"))?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Options {
        etcd: etcd.ok_or("--etcd is required")?,
        node: node.ok_or("--node is required")?,
        count: count.ok_or("--count is required")?,
    })
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // The parent reads stdout; if it is gone there is nobody to tell.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs `call` until it succeeds, reporting each failure; gives up after `RETRY_ATTEMPTS`.
async fn persist<T, F, Fut>(mut call: F) -> Result<T, IpamError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, IpamError>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt + 1 >= RETRY_ATTEMPTS => return Err(e),
            Err(e) => say(&format!("error {e}")),
        }
        attempt += 1;
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let opts = options()?;
    let mut config = EtcdConfig::new([opts.etcd.clone()]);
    config.timeout = Duration::from_secs(2);
    let datastore = Datastore::etcd(config).await?;
    let ipam = Ipam::new(&datastore);
    let mut allocated = Vec::with_capacity(opts.count);
    for i in 0..opts.count {
        let handle = pod_handle("reef-pod-network", &format!("{}-{i}", opts.node));
        let args = AutoAssignArgs {
            handle_id: handle.clone(),
            num_v4: 1,
            node: opts.node.clone(),
            ..Default::default()
        };
        let got = persist(|| async {
            match ipam.auto_assign(&args).await {
                Ok(got) => Ok(got),
                Err(e) => {
                    // A failed call may have written part of its work (a lost answer): undo it by handle.
                    persist(|| ipam.release_by_handle(&handle)).await?;
                    Err(e)
                }
            }
        })
        .await?;
        for a in got.v4 {
            allocated.push(serde_json::json!([a.ip, handle, a.sequence_number]));
        }
        if (i + 1) % 50 == 0 {
            say(&format!("progress {}", i + 1));
        }
    }
    let stats = ipam.stats();
    let summary = serde_json::json!({
        "node": opts.node,
        "addresses": allocated,
        "conflicts": stats.conflicts.load(std::sync::atomic::Ordering::Relaxed),
        "borrowed": stats.borrowed.load(std::sync::atomic::Ordering::Relaxed),
    });
    say(&format!("allocated {summary}"));

    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "release" {
        return Ok(());
    }
    let mut released = 0;
    for entry in &allocated {
        let handle = entry[1].as_str().unwrap_or_default().to_owned();
        released += persist(|| ipam.release_by_handle(&handle)).await?.len();
    }
    say(&format!("released {released}"));
    Ok(())
}
