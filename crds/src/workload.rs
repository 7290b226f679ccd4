//! `WorkloadEndpoint`: a pod's (or container's) network interface, as the CNI plugin made it.
//! In Kubernetes mode these are derived from Pods; in etcd mode and the lab they are stored.
//! Labels are the object's metadata labels (plus the namespace labels when policy is evaluated).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::Protocol;

/// A workload's network interface.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "reef.dev",
    version = "v1",
    kind = "WorkloadEndpoint",
    plural = "workloadendpoints",
    namespaced,
    derive = "PartialEq",
    doc = "A workload's network interface; labels are the object's labels (Calico's WorkloadEndpoint).",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".spec.pod"}"#,
    printcolumn = r#"{"name":"Interface","type":"string","jsonPath":".spec.interfaceName"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEndpointSpec {
    /// The node hosting the workload.
    pub node: String,
    /// Who created the workload: `k8s`, `cni` (plain CNI), `lab`...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub orchestrator: String,
    /// Workload id outside Kubernetes (e.g. the container id).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workload: String,
    /// Pod name in Kubernetes mode.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    /// Endpoint name within the workload (e.g. `eth0`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    /// Container id, when known.
    #[serde(
        default,
        rename = "containerID",
        skip_serializing_if = "String::is_empty"
    )]
    pub container_id: String,
    /// The host-side interface (e.g. `reef1a2b3c4d5e6`).
    pub interface_name: String,
    /// The workload-side MAC address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The workload's addresses in CIDR form (`10.244.3.65/32`).
    #[serde(default, rename = "ipNetworks")]
    pub ip_networks: Vec<String>,
    /// Profiles applied (e.g. `kns.<namespace>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// Service account name, for `serviceAccountSelector`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account_name: String,
    /// Named ports, for policy port names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
}

/// A named port of a workload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct EndpointPort {
    /// Port name (IANA service name syntax), e.g. `http`.
    pub name: String,
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
    /// Port number.
    pub port: u16,
}

/// The prefix of every host-side pod interface (`reef*`): felix owns routes on these links and drops
/// traffic from such interfaces it does not know.
pub const HOST_INTERFACE_PREFIX: &str = "reef";

/// The MAC of every host-side pod interface. One fixed address lets pods keep their neighbour entry for
/// the gateway across veth re-creation (Calico uses the same).
pub const HOST_INTERFACE_MAC: &str = "ee:ee:ee:ee:ee:ee";

/// The pod's IPv4 gateway: the host side answers for it by proxy ARP, so no address is spent on it.
pub const POD_GATEWAY_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 1, 1);

/// The host-side interface name of a workload: `reef` + the first 11 hex digits of the SHA-1 of
/// `"<namespace>.<pod>"` (Kubernetes) or of the container id (plain CNI). 15 characters, the kernel's
/// limit; the CNI plugin creates it and felix recomputes it from the WorkloadEndpoint, so both agree
/// without talking to each other.
pub fn host_interface_name(pod: Option<(&str, &str)>, container_id: &str) -> String {
    use sha1::{Digest, Sha1};
    let digest = match pod {
        Some((namespace, name)) => Sha1::digest(format!("{namespace}.{name}").as_bytes()),
        None => Sha1::digest(container_id.as_bytes()),
    };
    let mut name = String::with_capacity(15);
    name.push_str(HOST_INTERFACE_PREFIX);
    for byte in digest.iter() {
        name.push_str(&format!("{byte:02x}"));
        if name.len() >= 15 {
            break;
        }
    }
    name.truncate(15);
    name
}

/// The name of the WorkloadEndpoint object for one workload interface: `<node>-<orchestrator>-<workload>-
/// <endpoint>` (Calico's shape), lower-cased, with every character outside `[a-z0-9.-]` replaced by `-`, so
/// it is a valid object name. `workload` is the pod name (Kubernetes) or the container id.
pub fn endpoint_object_name(
    node: &str,
    orchestrator: &str,
    workload: &str,
    endpoint: &str,
) -> String {
    let raw = format!("{node}-{orchestrator}-{workload}-{endpoint}");
    let mut name: String = raw
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.' | '-') => c,
            _ => '-',
        })
        .collect();
    name.truncate(253);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_interface_names_match_calicos_scheme() {
        // Expected values from `printf %s default.nginx | sha1sum` and `printf %s abc123 | sha1sum`.
        assert_eq!(
            host_interface_name(Some(("default", "nginx")), "ignored"),
            "reefc440f455693"
        );
        assert_eq!(host_interface_name(None, "abc123"), "reef6367c48dd19");
    }

    #[test]
    fn endpoint_object_names_are_valid_names() {
        assert_eq!(
            endpoint_object_name("Node-A", "k8s", "web_1", "eth0"),
            "node-a-k8s-web-1-eth0"
        );
    }
}
