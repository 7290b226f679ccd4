//! The commands. ADD is all-or-nothing: every step taken is undone, in reverse, when a later one fails.
//! DEL is idempotent. Both the main plugin (`reef`) and the IPAM plugin (`reef-ipam`) run through here.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::IpAddr;

use ipnet::IpNet;
use reef_crds::workload::host_interface_name;
use reef_ipam::pod_handle;
use serde_json::Value;

use crate::config::{Command, Invocation, NetConf};
use crate::netlink::{self, Kernel};
use crate::spec::{CniError, CniResult, ErrorCode, IpConfig, version_info};
use crate::store::{Backend, EndpointSpec, endpoint_location, ipam_error};
use crate::wiring::{PodWiring, auto_mtu};

/// Which binary was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `reef`: addresses, the veth pair, routes and the WorkloadEndpoint.
    Main,
    /// `reef-ipam`: addresses only, for another main plugin.
    Ipam,
}

/// Runs one command; `Ok(Some(json))` is printed on stdout.
pub async fn run(mode: Mode, inv: &Invocation, conf: &NetConf) -> Result<Option<Value>, CniError> {
    match inv.command {
        Command::Version => Ok(Some(version_info())),
        Command::Add => add(mode, inv, conf).await.map(Some),
        Command::Del => del(mode, inv, conf).await.map(|()| None),
        Command::Check => {
            if !conf.version.has_check() {
                return Err(incompatible("CHECK", conf));
            }
            check(mode, inv, conf).await.map(|()| None)
        }
        Command::Gc => {
            if !conf.version.has_gc_and_status() {
                return Err(incompatible("GC", conf));
            }
            gc(conf).await.map(|()| None)
        }
        Command::Status => {
            if !conf.version.has_gc_and_status() {
                return Err(incompatible("STATUS", conf));
            }
            let backend = Backend::connect(&conf.datastore).await.map_err(|e| {
                CniError::new(ErrorCode::PluginNotAvailable, e.msg).details(e.details)
            })?;
            backend.status(conf, &node_name(conf)).await.map(|()| None)
        }
    }
}

fn incompatible(command: &str, conf: &NetConf) -> CniError {
    CniError::new(
        ErrorCode::IncompatibleVersion,
        format!(
            "configuration version {} does not allow {command}",
            conf.version
        ),
    )
    .details("CHECK needs cniVersion 0.4.0 or later; GC and STATUS need 1.1.0")
}

/// The node this plugin runs on: `nodename`, else the host name.
pub fn node_name(conf: &NetConf) -> String {
    conf.nodename.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    })
}

fn open_netns(inv: &Invocation) -> Result<File, CniError> {
    let path = inv
        .netns
        .as_ref()
        .ok_or_else(|| CniError::new(ErrorCode::InvalidEnvironment, "CNI_NETNS is not set"))?;
    File::open(path).map_err(|e| {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_NETNS {}: {e}", path.display()),
        )
        .details("the container's network namespace must exist when ADD or CHECK is called")
    })
}

/// Undoes the steps of a failed ADD, newest first; a failing undo step is logged, not returned (the
/// ADD's own error is what the runtime needs to see).
#[derive(Default)]
struct Undo {
    release_handle: Option<String>,
    host_link: Option<String>,
}

impl Undo {
    async fn run(self, backend: &Backend, conf: &NetConf, host: Option<&Kernel>) {
        if let (Some(name), Some(host)) = (&self.host_link, host)
            && let Err(e) = host.delete_link(name).await
        {
            tracing::warn!(link = %name, error = %e, "ADD failed and its veth could not be removed");
        }
        if let Some(handle) = &self.release_handle
            && let Err(e) = backend.release(conf, handle).await
        {
            tracing::warn!(%handle, error = %e, "ADD failed and its addresses could not be released");
        }
    }
}

async fn add(mode: Mode, inv: &Invocation, conf: &NetConf) -> Result<Value, CniError> {
    let node = node_name(conf);
    let netns = open_netns(inv)?;
    let backend = Backend::connect(&conf.datastore).await?;
    let handle = pod_handle(&conf.name, &inv.container_id);
    let pod_kernel = match mode {
        Mode::Main => {
            // Before any address is taken: a taken interface name is the caller's mistake.
            let pod = Kernel::open_in(&netns)?;
            if pod.link_index(&inv.ifname).await?.is_some() {
                return Err(CniError::new(
                    ErrorCode::InterfaceExists,
                    format!(
                        "interface {} already exists in the container's network namespace",
                        inv.ifname
                    ),
                )
                .details("use another CNI_IFNAME, or DEL the attachment that made it"));
            }
            Some(pod)
        }
        Mode::Ipam => None,
    };
    let ips = backend.assign(conf, &node, &handle, inv.pod()).await?;
    let mut undo = Undo {
        release_handle: Some(handle.clone()),
        host_link: None,
    };
    // Every failure from here on undoes what was done, the netlink socket included.
    let mut host = None;
    let outcome = match pod_kernel {
        None => ipam_result(&backend, conf, &ips).await,
        Some(pod) => match Kernel::open_host() {
            Ok(kernel) => {
                let kernel = host.insert(kernel);
                wire(
                    &backend, conf, inv, &node, &netns, kernel, &pod, &ips, &mut undo,
                )
                .await
            }
            Err(e) => Err(e),
        },
    };
    if outcome.is_err() {
        undo.run(&backend, conf, host.as_ref()).await;
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn wire(
    backend: &Backend,
    conf: &NetConf,
    inv: &Invocation,
    node: &str,
    netns: &File,
    host: &Kernel,
    pod: &Kernel,
    ips: &[IpAddr],
    undo: &mut Undo,
) -> Result<Value, CniError> {
    let host_ifname = host_interface_name(inv.pod(), &inv.container_id);
    // A host veth of this name is left over from an earlier sandbox of the same pod (its DEL never
    // came, or the node crashed): the new sandbox replaces it.
    if host.delete_link(&host_ifname).await? {
        tracing::info!(link = %host_ifname, "removed a stale veth of an earlier sandbox");
    }
    let mtu = match conf.mtu {
        Some(mtu) => mtu,
        None => {
            let (vxlan_v4, vxlan_v6) = backend.vxlan_in_use(ips).await?;
            auto_mtu(&host.host_links().await?, vxlan_v4, vxlan_v6)
        }
    };
    let plan = PodWiring::plan(&host_ifname, &inv.ifname, mtu, ips);
    undo.host_link = Some(host_ifname.clone());
    let pod_mac = netlink::create(host, pod, netns, &plan).await?;
    let endpoint = EndpointSpec {
        node,
        network: &conf.name,
        container_id: &inv.container_id,
        pod: inv.pod(),
        ifname: &inv.ifname,
        host_ifname: &host_ifname,
        pod_mac: &pod_mac,
        addresses: &plan.addresses,
        labels: &conf.labels,
    };
    backend.put_endpoint(&endpoint.object()).await?;
    let sandbox = inv
        .netns
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let result = plan.result(&pod_mac, &sandbox, conf.dns.clone());
    tracing::info!(container = %inv.container_id, interface = %host_ifname, addresses = ?ips, mtu, "pod attached");
    Ok(result.to_json(conf.version))
}

/// The IPAM plugin's result: each address with its block's prefix length (so main plugins such as `ptp`
/// find the subnet route they expect), the configured IPv4 gateway, and the configured routes.
async fn ipam_result(backend: &Backend, conf: &NetConf, ips: &[IpAddr]) -> Result<Value, CniError> {
    let pools = backend.ipam().pools().await.map_err(ipam_error)?;
    let ips = ips
        .iter()
        .map(|ip| {
            let prefix = pools
                .iter()
                .find(|(_, l)| l.cidr.contains(ip))
                .map(|(_, l)| l.block_prefix)
                .unwrap_or(if ip.is_ipv4() { 32 } else { 128 });
            IpConfig {
                address: IpNet::new(*ip, prefix).unwrap_or_else(|_| IpNet::from(*ip)),
                gateway: if ip.is_ipv4() {
                    conf.ipam.gateway_v4
                } else {
                    None
                },
                interface: None,
            }
        })
        .collect();
    let result = CniResult {
        interfaces: Vec::new(),
        ips,
        routes: conf.ipam.routes.clone(),
        dns: conf.dns.clone(),
    };
    Ok(result.to_json(conf.version))
}

async fn del(mode: Mode, inv: &Invocation, conf: &NetConf) -> Result<(), CniError> {
    let node = node_name(conf);
    let backend = Backend::connect(&conf.datastore).await?;
    let handle = pod_handle(&conf.name, &inv.container_id);
    if mode == Mode::Main {
        // Deleting the pod end removes the pair, and the host routes with it. A netns that is gone
        // took the pair with it already.
        if let Some(path) = &inv.netns
            && let Ok(netns) = File::open(path)
        {
            let pod = Kernel::open_in(&netns)?;
            pod.delete_link(&inv.ifname).await?;
        }
        let (namespace, name) = endpoint_location(&node, inv.pod(), &inv.container_id, &inv.ifname);
        // Without the netns the host end may still be there (a runtime that lost the netns path): remove
        // it only while the endpoint says it is this container's.
        if let Some(existing) = backend.get_endpoint(&namespace, &name).await?
            && existing.spec.container_id == inv.container_id
        {
            Kernel::open_host()?
                .delete_link(&existing.spec.interface_name)
                .await?;
        }
        backend
            .delete_endpoint(&namespace, &name, &inv.container_id)
            .await?;
    }
    let released = backend.release(conf, &handle).await?;
    tracing::info!(container = %inv.container_id, released = ?released, "pod detached");
    Ok(())
}

async fn check(mode: Mode, inv: &Invocation, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(ErrorCode::InvalidConfig, "CHECK needs prevResult")
            .details("the runtime passes the result of ADD as prevResult")
    })?;
    let netns = open_netns(inv)?;
    let backend = Backend::connect(&conf.datastore).await?;
    let handle = pod_handle(&conf.name, &inv.container_id);
    let held: BTreeSet<IpAddr> = backend
        .ipam()
        .ips_by_handle(&handle)
        .await
        .map_err(ipam_error)?
        .into_iter()
        .collect();
    let expected: BTreeSet<IpAddr> = prev.ips.iter().map(|i| i.address.addr()).collect();
    let mut differences = Vec::new();
    for ip in expected.difference(&held) {
        differences.push(format!("{ip} is not allocated to handle {handle}"));
    }
    for ip in held.difference(&expected) {
        differences.push(format!("handle {handle} also holds {ip}"));
    }
    if mode == Mode::Main {
        let ips: Vec<IpAddr> = expected.iter().copied().collect();
        let host_ifname = host_interface_name(inv.pod(), &inv.container_id);
        let mtu = prev.interfaces.first().and_then(|i| i.mtu).unwrap_or(0);
        let plan = PodWiring::plan(&host_ifname, &inv.ifname, mtu, &ips);
        let host = Kernel::open_host()?;
        let pod = Kernel::open_in(&netns)?;
        differences.extend(netlink::differences(&host, &pod, &plan).await?);
        let (namespace, name) =
            endpoint_location(&node_name(conf), inv.pod(), &inv.container_id, &inv.ifname);
        match backend.get_endpoint(&namespace, &name).await? {
            None => differences.push(format!("WorkloadEndpoint {namespace}/{name} is missing")),
            Some(e) if e.spec.container_id != inv.container_id => differences.push(format!(
                "WorkloadEndpoint {namespace}/{name} belongs to container {}",
                e.spec.container_id
            )),
            Some(_) => {}
        }
    }
    if differences.is_empty() {
        return Ok(());
    }
    Err(CniError::new(
        ErrorCode::CheckFailed,
        format!(
            "the attachment differs from what ADD made: {}",
            differences.join("; ")
        ),
    )
    .details("DEL and ADD the container again (or restart the pod) to repair it"))
}

async fn gc(conf: &NetConf) -> Result<(), CniError> {
    let node = node_name(conf);
    let backend = Backend::connect(&conf.datastore).await?;
    let valid: BTreeSet<String> = conf
        .valid_attachments
        .iter()
        .map(|a| a.container_id.clone())
        .collect();
    let (handles, endpoints) = backend.collect_garbage(conf, &node, &valid).await?;
    // Usually the runtime destroyed the namespace and the veth went with it; if not, the stale host end
    // (named in the endpoint, so never another attachment's) goes now.
    let host = Kernel::open_host()?;
    for endpoint in &endpoints {
        host.delete_link(&endpoint.spec.interface_name).await?;
    }
    let names: Vec<&str> = endpoints
        .iter()
        .filter_map(|e| e.metadata.name.as_deref())
        .collect();
    tracing::info!(?handles, endpoints = ?names, "garbage collected");
    Ok(())
}
