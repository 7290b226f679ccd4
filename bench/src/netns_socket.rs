//! A TCP connection made from inside a network namespace: the socket belongs to the namespace it was
//! created in, so one thread enters the namespace, connects and hands the stream back; the rest of the
//! process stays where it is.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// Connects to `remote` from namespace `netns` (by name, `/var/run/netns/NAME`), retrying until the
/// listener is up, for at most `timeout`.
pub fn connect_from(netns: &str, remote: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let path = format!("/var/run/netns/{netns}");
    let ns = File::open(&path).with_context(|| format!("open {path}"))?;
    let netns = netns.to_string();
    let thread = std::thread::spawn(move || -> Result<TcpStream> {
        // SAFETY: setns(2) on a namespace fd we own; it changes the network namespace of this thread
        // only, which ends when the function returns.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + timeout;
        loop {
            match TcpStream::connect_timeout(&remote, Duration::from_secs(1)) {
                Ok(stream) => return Ok(stream),
                Err(e) if Instant::now() >= deadline => {
                    return Err(anyhow!(e).context(format!("connect to {remote} from {netns}")));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    thread
        .join()
        .map_err(|_| anyhow!("connect thread panicked"))?
}
