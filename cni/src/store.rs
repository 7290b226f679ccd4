//! Everything the plugin keeps in the datastore: addresses (through reef-ipam, under a host-wide lock)
//! and the WorkloadEndpoint that tells reefd (felix and BGP) about the pod.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use kube::api::ObjectMeta;
use reef_crds::workload::{WorkloadEndpoint, WorkloadEndpointSpec};
use reef_crds::{IPAMBlock, IPPool, ReefNode};
use reef_datastore::{Datastore, Error as StoreError, EtcdConfig, Revision, Store};
use reef_ipam::block::{ATTR_NAMESPACE, ATTR_POD, attribute_node};
use reef_ipam::convert::block_from_spec;
use reef_ipam::{AutoAssignArgs, Ipam, IpamError};

use crate::config::{DatastoreConfig, NetConf};
use crate::spec::{CniError, ErrorCode};

/// How long an ADD or DEL waits for the host-wide IPAM lock before giving up (code 11: try again).
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);
const LOCK_POLL: Duration = Duration::from_millis(2);
/// Attempts at writing the WorkloadEndpoint when another writer changes it under us.
const ENDPOINT_ATTEMPTS: usize = 10;

/// Labels Reef puts on every WorkloadEndpoint it writes.
pub const LABEL_NAMESPACE: &str = "reef.dev/namespace";
pub const LABEL_ORCHESTRATOR: &str = "reef.dev/orchestrator";
/// The CNI network (configuration `name`) the endpoint belongs to: GC only touches its own network's.
pub const LABEL_NETWORK: &str = "reef.dev/network";

/// The namespace of WorkloadEndpoints of workloads that are not Kubernetes pods.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The datastore and the IPAM client on it.
pub struct Backend {
    datastore: Datastore,
    ipam: Ipam,
}

/// Maps an IPAM failure to the CNI error a runtime acts on.
pub fn ipam_error(e: IpamError) -> CniError {
    match e {
        IpamError::Datastore(StoreError::Unavailable(msg)) => CniError::new(
            ErrorCode::TryAgainLater,
            format!("datastore unavailable: {msg}"),
        )
        .details("the runtime retries; check that the datastore is up (reefctl ipam show)"),
        e @ (IpamError::Exhausted(_) | IpamError::NoPool { .. }) => {
            CniError::new(ErrorCode::AddressesExhausted, e.to_string())
                .details("add an IPPool or release addresses (reefctl ipam check)")
        }
        e @ IpamError::TooManyConflicts { .. } => {
            CniError::new(ErrorCode::TryAgainLater, e.to_string())
        }
        other => CniError::new(ErrorCode::Datastore, other.to_string()),
    }
}

fn store_error(what: &str, e: StoreError) -> CniError {
    match e {
        StoreError::Unavailable(msg) => CniError::new(
            ErrorCode::TryAgainLater,
            format!("{what}: datastore unavailable: {msg}"),
        )
        .details("the runtime retries; check that the datastore is up"),
        other => CniError::new(ErrorCode::Datastore, format!("{what}: {other}")),
    }
}

impl Backend {
    pub async fn connect(config: &DatastoreConfig) -> Result<Backend, CniError> {
        let datastore = match config {
            DatastoreConfig::Etcd { endpoints } => {
                let mut etcd = EtcdConfig::new(endpoints.clone());
                // A runtime waits for us: fail fast on a dead etcd and let it retry.
                etcd.timeout = Duration::from_secs(5);
                etcd.connect_timeout = Duration::from_secs(2);
                Datastore::etcd(etcd)
                    .await
                    .map_err(|e| store_error("connecting to etcd", e))?
            }
            DatastoreConfig::Kubernetes { kubeconfig } => {
                let client_config = match kubeconfig {
                    Some(path) => {
                        let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                            CniError::new(
                                ErrorCode::InvalidConfig,
                                format!("kubeconfig {}: {e}", path.display()),
                            )
                            .details("the reef-cni installer writes it; re-run it or fix datastore.kubeconfig")
                        })?;
                        kube::Config::from_custom_kubeconfig(file, &Default::default()).await
                    }
                    None => kube::Config::infer().await.map_err(|e| {
                        kube::config::KubeconfigError::ReadConfig(
                            std::io::Error::other(e.to_string()),
                            Default::default(),
                        )
                    }),
                }
                .map_err(|e| {
                    CniError::new(
                        ErrorCode::InvalidConfig,
                        format!("no usable Kubernetes client configuration: {e}"),
                    )
                    .details("set datastore.kubeconfig in the CNI configuration")
                })?;
                let client = kube::Client::try_from(client_config).map_err(|e| {
                    CniError::new(ErrorCode::InvalidConfig, format!("Kubernetes client: {e}"))
                })?;
                Datastore::kubernetes(client)
            }
        };
        let ipam = Ipam::new(&datastore);
        Ok(Backend { datastore, ipam })
    }

    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// The node's labels; an error naming the fix when the node is not registered.
    pub async fn node_labels(&self, node: &str) -> Result<BTreeMap<String, String>, CniError> {
        let nodes: Arc<dyn Store<ReefNode>> = self.datastore.store();
        match nodes.get(None, node).await {
            Ok(Some(n)) => Ok(n.metadata.labels.unwrap_or_default()),
            Ok(None) => Err(CniError::new(
                ErrorCode::NodeUnknown,
                format!("node {node} is not registered (no ReefNode named {node})"),
            )
            .details("start reefd on this node (it registers the node), or set nodename in the CNI configuration to the ReefNode's name")),
            Err(e) => Err(store_error("reading the ReefNode", e)),
        }
    }

    /// The pools as configured (CIDRs or IPPool names) resolved to CIDRs.
    pub async fn resolve_pools(&self, names: &[String]) -> Result<Vec<IpNet>, CniError> {
        let mut cidrs = Vec::new();
        let mut by_name: Option<Vec<IPPool>> = None;
        for name in names {
            if let Ok(net) = name.parse::<IpNet>() {
                cidrs.push(net);
                continue;
            }
            if by_name.is_none() {
                let pools: Arc<dyn Store<IPPool>> = self.datastore.store();
                by_name = Some(
                    pools
                        .list(None)
                        .await
                        .map_err(|e| store_error("listing IP pools", e))?
                        .0,
                );
            }
            let pool = by_name
                .iter()
                .flatten()
                .find(|p| p.metadata.name.as_deref() == Some(name.as_str()))
                .and_then(|p| p.spec.cidr_net())
                .ok_or_else(|| {
                    CniError::new(
                        ErrorCode::InvalidConfig,
                        format!("ipam pool {name:?} is neither a CIDR nor the name of an IPPool"),
                    )
                    .details("create the IPPool or list its CIDR (reefctl get ippools)")
                })?;
            cidrs.push(pool);
        }
        Ok(cidrs)
    }

    /// Whether any of the pools holding `ips` encapsulates with VXLAN, for IPv4 and IPv6 pools.
    pub async fn vxlan_in_use(&self, ips: &[IpAddr]) -> Result<(bool, bool), CniError> {
        let pools = self.ipam.pools().await.map_err(ipam_error)?;
        let mut vxlan = (false, false);
        for (pool, layout) in &pools {
            let encapsulates = pool.spec.vxlan_mode != reef_crds::ipam::VxlanMode::Never;
            if encapsulates && ips.iter().any(|ip| layout.cidr.contains(ip)) {
                match layout.cidr {
                    IpNet::V4(_) => vxlan.0 = true,
                    IpNet::V6(_) => vxlan.1 = true,
                }
            }
        }
        Ok(vxlan)
    }

    /// Assigns the pod's addresses under the host-wide lock.
    pub async fn assign(
        &self,
        conf: &NetConf,
        node: &str,
        handle: &str,
        pod: Option<(&str, &str)>,
    ) -> Result<Vec<IpAddr>, CniError> {
        let node_labels = self.node_labels(node).await?;
        let mut pools = self.resolve_pools(&conf.ipam.ipv4_pools).await?;
        pools.extend(self.resolve_pools(&conf.ipam.ipv6_pools).await?);
        let mut attrs = BTreeMap::new();
        if let Some((namespace, name)) = pod {
            attrs.insert(ATTR_NAMESPACE.to_string(), namespace.to_string());
            attrs.insert(ATTR_POD.to_string(), name.to_string());
        }
        let args = AutoAssignArgs {
            handle_id: handle.to_string(),
            num_v4: usize::from(conf.ipam.assign_ipv4),
            num_v6: usize::from(conf.ipam.assign_ipv6),
            node: node.to_string(),
            node_labels,
            pools,
            attrs,
            use_: reef_ipam::Use::Workload,
        };
        let _lock = HostLock::acquire(&conf.ipam_lock_file).await?;
        let assigned = self.ipam.auto_assign(&args).await.map_err(ipam_error)?;
        Ok(assigned
            .v4
            .iter()
            .chain(&assigned.v6)
            .map(|a| a.ip)
            .collect())
    }

    /// Releases every address of `handle` (idempotent) under the host-wide lock.
    pub async fn release(&self, conf: &NetConf, handle: &str) -> Result<Vec<IpAddr>, CniError> {
        let _lock = HostLock::acquire(&conf.ipam_lock_file).await?;
        self.ipam
            .release_by_handle(handle)
            .await
            .map_err(ipam_error)
    }

    /// Writes the endpoint, replacing one left by an earlier sandbox of the same workload.
    pub async fn put_endpoint(&self, endpoint: &WorkloadEndpoint) -> Result<(), CniError> {
        let store: Arc<dyn Store<WorkloadEndpoint>> = self.datastore.store();
        let namespace = endpoint.metadata.namespace.as_deref();
        let name = endpoint.metadata.name.as_deref().unwrap_or_default();
        for _ in 0..ENDPOINT_ATTEMPTS {
            match store.create(endpoint).await {
                Ok(_) => return Ok(()),
                Err(StoreError::AlreadyExists) => {}
                Err(e) => return Err(store_error("writing the WorkloadEndpoint", e)),
            }
            let Some(existing) = store
                .get(namespace, name)
                .await
                .map_err(|e| store_error("reading the WorkloadEndpoint", e))?
            else {
                continue;
            };
            let mut replacement = endpoint.clone();
            replacement.metadata.resource_version = existing.metadata.resource_version.clone();
            match store.update(&replacement).await {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict | StoreError::NotFound) => continue,
                Err(e) => return Err(store_error("writing the WorkloadEndpoint", e)),
            }
        }
        Err(CniError::new(
            ErrorCode::TryAgainLater,
            format!("WorkloadEndpoint {name} kept changing while being written"),
        ))
    }

    /// Deletes the endpoint if it still belongs to `container_id` (a newer sandbox's is kept).
    pub async fn delete_endpoint(
        &self,
        namespace: &str,
        name: &str,
        container_id: &str,
    ) -> Result<bool, CniError> {
        let store: Arc<dyn Store<WorkloadEndpoint>> = self.datastore.store();
        let Some(existing) = store
            .get(Some(namespace), name)
            .await
            .map_err(|e| store_error("reading the WorkloadEndpoint", e))?
        else {
            return Ok(false);
        };
        if existing.spec.container_id != container_id {
            return Ok(false);
        }
        match store
            .delete(Some(namespace), name, Revision::of(&existing).as_ref())
            .await
        {
            Ok(()) | Err(StoreError::NotFound) => Ok(true),
            // Rewritten meanwhile by a newer sandbox: it is not ours any more.
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(store_error("deleting the WorkloadEndpoint", e)),
        }
    }

    /// The endpoint, if any.
    pub async fn get_endpoint(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<WorkloadEndpoint>, CniError> {
        let store: Arc<dyn Store<WorkloadEndpoint>> = self.datastore.store();
        store
            .get(Some(namespace), name)
            .await
            .map_err(|e| store_error("reading the WorkloadEndpoint", e))
    }

    /// GC: releases the addresses and endpoints of this node and network whose container the runtime no
    /// longer lists. Returns the handles released and the endpoints deleted (with their host interfaces,
    /// which the caller removes if the pod's namespace still holds them).
    pub async fn collect_garbage(
        &self,
        conf: &NetConf,
        node: &str,
        valid: &BTreeSet<String>,
    ) -> Result<(Vec<String>, Vec<WorkloadEndpoint>), CniError> {
        let prefix = format!("{}.", conf.name);
        let blocks: Arc<dyn Store<IPAMBlock>> = self.datastore.store();
        let (all_blocks, _) = blocks
            .list(None)
            .await
            .map_err(|e| store_error("listing IPAM blocks", e))?;
        let mut stale_handles = BTreeSet::new();
        for object in &all_blocks {
            let Ok(block) = block_from_spec(&object.spec) else {
                continue;
            };
            for (_, attr) in block.allocated() {
                let Some(handle) = attr.handle_id.as_deref() else {
                    continue;
                };
                let Some(container) = handle.strip_prefix(&prefix) else {
                    continue;
                };
                if attribute_node(attr) == Some(node) && !valid.contains(container) {
                    stale_handles.insert(handle.to_string());
                }
            }
        }
        for handle in &stale_handles {
            self.release(conf, handle).await?;
        }
        let endpoints: Arc<dyn Store<WorkloadEndpoint>> = self.datastore.store();
        let (all_endpoints, _) = endpoints
            .list(None)
            .await
            .map_err(|e| store_error("listing WorkloadEndpoints", e))?;
        let mut deleted = Vec::new();
        for endpoint in all_endpoints {
            let ours = endpoint.spec.node == node
                && endpoint
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_NETWORK))
                    == Some(&conf.name);
            if ours && !valid.contains(&endpoint.spec.container_id) {
                let namespace = endpoint.metadata.namespace.clone().unwrap_or_default();
                let name = endpoint.metadata.name.clone().unwrap_or_default();
                if self
                    .delete_endpoint(&namespace, &name, &endpoint.spec.container_id)
                    .await?
                {
                    deleted.push(endpoint);
                }
            }
        }
        Ok((stale_handles.into_iter().collect(), deleted))
    }

    /// STATUS: the datastore answers and a pool could serve this node.
    pub async fn status(&self, conf: &NetConf, node: &str) -> Result<(), CniError> {
        let unavailable =
            |e: CniError| CniError::new(ErrorCode::PluginNotAvailable, e.msg).details(e.details);
        self.node_labels(node).await.map_err(unavailable)?;
        let pools = self
            .ipam
            .pools()
            .await
            .map_err(|e| unavailable(ipam_error(e)))?;
        let wanted = [
            (conf.ipam.assign_ipv4, false, "IPv4"),
            (conf.ipam.assign_ipv6, true, "IPv6"),
        ];
        for (needed, v6, family) in wanted {
            let usable = pools.iter().any(|(p, l)| {
                !p.spec.disabled
                    && p.spec.allows(reef_crds::AllowedUse::Workload)
                    && l.cidr.addr().is_ipv6() == v6
            });
            if needed && !usable {
                return Err(CniError::new(
                    ErrorCode::PluginNotAvailable,
                    format!("no enabled {family} IPPool for workloads"),
                )
                .details("create an IPPool (reefctl apply -f pool.yaml)"));
            }
        }
        Ok(())
    }
}

/// Where the WorkloadEndpoint of one attachment lives: (namespace, name). A pod's is in its namespace,
/// named after the pod; a plain container's is in `default`, named after the container id.
pub fn endpoint_location(
    node: &str,
    pod: Option<(&str, &str)>,
    container_id: &str,
    ifname: &str,
) -> (String, String) {
    let (namespace, orchestrator, workload) = match pod {
        Some((ns, name)) => (ns, "k8s", name),
        None => (DEFAULT_NAMESPACE, "cni", container_id),
    };
    (
        namespace.to_string(),
        reef_crds::workload::endpoint_object_name(node, orchestrator, workload, ifname),
    )
}

/// The WorkloadEndpoint of one attachment.
pub struct EndpointSpec<'a> {
    pub node: &'a str,
    pub network: &'a str,
    pub container_id: &'a str,
    pub pod: Option<(&'a str, &'a str)>,
    pub ifname: &'a str,
    pub host_ifname: &'a str,
    pub pod_mac: &'a str,
    pub addresses: &'a [IpNet],
    pub labels: &'a BTreeMap<String, String>,
}

impl EndpointSpec<'_> {
    pub fn location(&self) -> (String, String) {
        endpoint_location(self.node, self.pod, self.container_id, self.ifname)
    }

    pub fn object(&self) -> WorkloadEndpoint {
        let (namespace, name) = self.location();
        let orchestrator = if self.pod.is_some() { "k8s" } else { "cni" };
        let mut labels = self.labels.clone();
        labels.insert(LABEL_NAMESPACE.into(), namespace.clone());
        labels.insert(LABEL_ORCHESTRATOR.into(), orchestrator.into());
        labels.insert(LABEL_NETWORK.into(), self.network.into());
        WorkloadEndpoint {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(namespace.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: WorkloadEndpointSpec {
                node: self.node.to_string(),
                orchestrator: orchestrator.to_string(),
                workload: self.container_id.to_string(),
                pod: self.pod.map(|(_, p)| p.to_string()).unwrap_or_default(),
                endpoint: self.ifname.to_string(),
                container_id: self.container_id.to_string(),
                interface_name: self.host_ifname.to_string(),
                mac: self.pod_mac.to_string(),
                ip_networks: self.addresses.iter().map(IpNet::to_string).collect(),
                profiles: vec![format!("kns.{namespace}")],
                ..Default::default()
            },
        }
    }
}

/// The host-wide IPAM lock (an exclusive `flock` on a file), released on drop.
struct HostLock {
    _file: File,
}

impl HostLock {
    async fn acquire(path: &Path) -> Result<HostLock, CniError> {
        let io = |e: std::io::Error| {
            CniError::new(
                ErrorCode::Io,
                format!("IPAM lock file {}: {e}", path.display()),
            )
            .details("the directory must be writable by the runtime (set ipamLockFile to move it)")
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io)?;
        let started = Instant::now();
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(HostLock { _file: file });
            }
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(error));
            }
            if started.elapsed() > LOCK_TIMEOUT {
                return Err(CniError::new(
                    ErrorCode::TryAgainLater,
                    format!(
                        "the IPAM lock {} was held for more than {LOCK_TIMEOUT:?}",
                        path.display()
                    ),
                ));
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
    }
}
