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
