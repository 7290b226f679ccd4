//! The injector's side of a BFD session, for the convergence benchmark's `--trigger bfd`: Reef's own
//! BFD driver (`reef-bfd`) on a thread of its own inside the injector's namespace, and a link cut that
//! silences that namespace's veth end without taking it down (the daemon must detect the failure by
//! BFD, not by carrier loss).

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use reef_bfd::driver::{Bfd, SessionKey, SessionStatus};
use reef_bfd::packet::State;
use reef_bfd::session::SessionConfig;
use reef_lab::Netns;
use tokio::sync::{oneshot, watch};

/// One BFD session run by `reef-bfd` inside a namespace. Dropping it stops the driver (which sends
/// AdminDown first) and its thread.
pub struct BfdPeer {
    status: watch::Receiver<SessionStatus>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl BfdPeer {
    /// Starts the driver in namespace `netns` and a session from `local` to `peer`.
    pub fn start(
        netns: &str,
        peer: IpAddr,
        local: IpAddr,
        config: SessionConfig,
    ) -> Result<BfdPeer> {
        let path = format!("/var/run/netns/{netns}");
        let ns = File::open(&path).with_context(|| format!("open {path}"))?;
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<watch::Receiver<SessionStatus>>>(1);
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: setns(2) on a namespace fd we own; it moves only this thread, whose runtime
            // then creates every BFD socket in that namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let error = std::io::Error::last_os_error();
                let _ = ready_tx.send(Err(anyhow!("setns {path}: {error}")));
                return;
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready_tx.send(Err(anyhow!("tokio runtime: {error}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let started = async {
                    let bfd = Bfd::spawn().context("BFD driver")?;
                    let status = bfd
                        .add_session(SessionKey { peer, local }, config)
                        .await
                        .context("BFD session")?;
                    Ok::<_, anyhow::Error>((bfd, status))
                };
                match started.await {
                    Ok((bfd, status)) => {
                        let _ = ready_tx.send(Ok(status));
                        let _ = shutdown_rx.await;
                        drop(bfd);
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                    }
                }
            });
        });
        let status = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("BFD peer did not start"))??;
        Ok(BfdPeer {
            status,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Waits at most `timeout` until the session is Up; `interrupted` ends the wait early.
    pub fn wait_up(&self, timeout: Duration, interrupted: &dyn Fn() -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.status.borrow().state == State::Up {
                return Ok(());
            }
            if interrupted() {
                bail!("interrupted");
            }
            if Instant::now() >= deadline {
                bail!(
                    "BFD session not Up within {:.0} s: {:?}",
                    timeout.as_secs_f64(),
                    *self.status.borrow()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for BfdPeer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A cut link: every packet in or out of `ifname` in the namespace is dropped (nftables `netdev`
/// ingress and egress hooks), while the link stays up with its carrier. Dropping the guard mends it.
pub struct LinkCut<'a> {
    netns: &'a Netns,
    table: String,
}

impl<'a> LinkCut<'a> {
    /// Cuts `ifname` in `netns` (atomically: one `nft -f` transaction); returns once it is in effect.
    pub fn cut(netns: &'a Netns, ifname: &str, dir: &std::path::Path) -> Result<LinkCut<'a>> {
        let table = "reefbench_cut".to_string();
        let rules = format!(
            "table netdev {table} {{\n\
             \x20 chain ingress {{ type filter hook ingress device \"{ifname}\" priority 0; policy drop; }}\n\
             \x20 chain egress {{ type filter hook egress device \"{ifname}\" priority 0; policy drop; }}\n\
             }}\n"
        );
        let file: PathBuf = dir.join("cut.nft");
        std::fs::write(&file, rules).with_context(|| format!("write {}", file.display()))?;
        let file = file
            .to_str()
            .ok_or_else(|| anyhow!("path {} is not UTF-8", file.display()))?;
        netns.exec(&["nft", "-f", file]).context("nft: cut link")?;
        Ok(LinkCut { netns, table })
    }
}

impl Drop for LinkCut<'_> {
    fn drop(&mut self) {
        let _ = self
            .netns
            .exec(&["nft", "delete", "table", "netdev", &self.table]);
    }
}
