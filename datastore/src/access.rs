//! The Kubernetes API access Reef's programs need: (API group, resource, verbs). The deploy
//! manifests' RBAC rules are checked against these lists (ctl/tests/deploy_manifests.rs), so a new
//! API call added to reefd or reef-cni must be added here too, and nothing more is granted.
//!
//! The [`Store`](crate::Store) methods map to verbs: `get` get, `list` list, `watch` watch, `create`
//! create, `update` update, `update_status` update on `<resource>/status`, `delete` delete.

/// Access to one resource of one API group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiAccess {
    /// API group (`""` is the core group).
    pub group: &'static str,
    /// Plural resource name, or `<plural>/<subresource>`.
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

const READ: &[&str] = &["get", "list", "watch"];
const READ_WRITE: &[&str] = &["create", "delete", "get", "list", "update", "watch"];

const fn reef(resource: &'static str, verbs: &'static [&'static str]) -> ApiAccess {
    ApiAccess {
        group: "reef.dev",
        resource,
        verbs,
    }
}

const fn core(resource: &'static str, verbs: &'static [&'static str]) -> ApiAccess {
    ApiAccess {
        group: "",
        resource,
        verbs,
    }
}

/// reefd: configuration read and watched; IPAM and its own ReefNode written (compare-and-swap);
/// in Kubernetes mode the workloads, namespaces, nodes, services and native policy watched; BGP
/// passwords from the Secrets of its own namespace; events for rejected configuration.
pub const AGENT: &[ApiAccess] = &[
    reef("bgpconfigurations", READ),
    reef("bgpfilters", READ),
    reef("bgppeers", READ),
    reef("globalnetworkpolicies", READ),
    reef("networkpolicies", READ),
    reef("ippools", READ),
    reef("ipamconfigs", READ),
    reef("blockaffinities", READ_WRITE),
    reef("ipamblocks", READ_WRITE),
    reef("ipamhandles", READ_WRITE),
    reef("reefnodes", READ_WRITE),
    reef("reefnodes/status", &["update"]),
    core("namespaces", READ),
    core("nodes", READ),
    core("pods", READ),
    core("services", READ),
    ApiAccess {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: &["list", "watch"],
    },
    ApiAccess {
        group: "networking.k8s.io",
        resource: "networkpolicies",
        verbs: &["list", "watch"],
    },
    core("events", &["create"]),
];

/// reefd's access limited to its own namespace (a Role, not the ClusterRole).
pub const AGENT_NAMESPACED: &[ApiAccess] = &[core("secrets", READ)];

/// reef-cni (with reefd's service account token): the pod's labels, and block IPAM.
pub const CNI: &[ApiAccess] = &[
    core("pods", &["get"]),
    reef("ippools", &["get", "list"]),
    reef("ipamconfigs", &["get"]),
    reef("blockaffinities", READ_WRITE),
    reef("ipamblocks", READ_WRITE),
    reef("ipamhandles", READ_WRITE),
];
