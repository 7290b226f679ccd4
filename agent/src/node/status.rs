//! The node's ReefNode: registered at start (address, AS) and its status kept current (sessions,
//! programmed routes, last error), each write a compare-and-swap with bounded retries.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use reef_bgp::driver::PeerStatus;
use reef_crds::ReefNode;
use reef_crds::node::{
    BGPSessionState, BGPSessionStatus, NodeBGPSpec, ReefNodeSpec, ReefNodeStatus,
};
use reef_datastore::{Error, Store};
use tracing::{debug, info};

use crate::desired::DesiredPeer;

/// Attempts of one read-modify-write before giving up until the next time.
const CAS_ATTEMPTS: usize = 5;
const CAS_BACKOFF: Duration = Duration::from_millis(50);

fn state(name: &str) -> BGPSessionState {
    match name {
        "Connect" => BGPSessionState::Connect,
        "Active" => BGPSessionState::Active,
        "OpenSent" => BGPSessionState::OpenSent,
        "OpenConfirm" => BGPSessionState::OpenConfirm,
        "Established" => BGPSessionState::Established,
        _ => BGPSessionState::Idle,
    }
}

/// The status from the speaker's sessions, the peers' origins, the routes programmed and the problems
/// of the last calculation (rejected resources, peers the speaker refused).
pub fn build(
    sessions: &[PeerStatus],
    peers: &BTreeMap<IpAddr, DesiredPeer>,
    programmed_routes: u64,
    problems: &[String],
) -> ReefNodeStatus {
    let mut status = ReefNodeStatus {
        programmed_routes,
        ..ReefNodeStatus::default()
    };
    let mut errors: Vec<String> = problems.to_vec();
    let mut list = Vec::new();
    for session in sessions {
        let Some(peer) = peers.get(&session.address) else {
            continue;
        };
        if let Some(error) = &session.last_error
            && session.state != "Established"
        {
            errors.push(format!(
                "peer {} ({}): {error}",
                session.address, peer.origin
            ));
        }
        list.push(BGPSessionStatus {
            peer: session.address.to_string(),
            type_: peer.kind.session_type(),
            state: state(session.state),
            since: Some(session.since.clone()),
            prefixes_in: session.prefixes_received as u64,
            prefixes_out: session.prefixes_advertised as u64,
        });
    }
    status.set_sessions(list);
    status.last_error = (!errors.is_empty()).then(|| errors.join("; "));
    status
}

/// Runs `change` on the stored ReefNode `name` (`None` when absent) and writes the result with
/// compare-and-swap, re-reading on conflict (bounded). `change` returns `None` when there is nothing
/// to write.
async fn read_modify_write(
    store: &dyn Store<ReefNode>,
    name: &str,
    change: impl Fn(Option<ReefNode>) -> Option<(ReefNode, bool)>,
) -> Result<(), Error> {
    let mut last = Error::Conflict;
    for _ in 0..CAS_ATTEMPTS {
        let current = store.get(None, name).await?;
        let exists = current.is_some();
        let Some((new, status_only)) = change(current) else {
            return Ok(());
        };
        let written = match (exists, status_only) {
            (false, _) => store.create(&new).await.map(drop),
            (true, true) => store.update_status(&new).await.map(drop),
            (true, false) => store.update(&new).await.map(drop),
        };
        match written {
            Ok(()) => return Ok(()),
            Err(e @ (Error::Conflict | Error::AlreadyExists)) => {
                debug!(node = name, error = %e, "ReefNode changed meanwhile: reading it again");
                last = e;
                tokio::time::sleep(CAS_BACKOFF).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Creates the node's ReefNode, or updates its BGP address (and AS when `asn` is given), keeping the
/// rest (labels, reflector cluster id, status).
pub async fn register(
    store: &Arc<dyn Store<ReefNode>>,
    name: &str,
    address: Ipv4Net,
    asn: Option<u32>,
) -> Result<(), Error> {
    read_modify_write(&**store, name, |current| {
        let mut node = current.unwrap_or_else(|| ReefNode::new(name, ReefNodeSpec::default()));
        let mut bgp = node.spec.bgp.clone().unwrap_or_else(NodeBGPSpec::default);
        bgp.ipv4_address = Some(address.to_string());
        if asn.is_some() {
            bgp.as_number = asn;
        }
        if node.spec.bgp.as_ref() == Some(&bgp) && node.metadata.resource_version.is_some() {
            return None;
        }
        node.spec.bgp = Some(bgp);
        Some((node, false))
    })
    .await?;
    info!(node = name, %address, "ReefNode registered");
    Ok(())
}

/// Writes `status` unless the stored one is equal already.
pub async fn write(
    store: &Arc<dyn Store<ReefNode>>,
    name: &str,
    status: &ReefNodeStatus,
) -> Result<(), Error> {
    read_modify_write(&**store, name, |current| {
        // A node deleted meanwhile is registered again at the next start, not here.
        let mut node = current?;
        if node.status.as_ref() == Some(status) {
            return None;
        }
        node.status = Some(status.clone());
        Some((node, true))
    })
    .await
}
