//! The network configuration on stdin, and the invocation in the environment. Pure: the caller passes
//! the bytes and the variables in.
//!
//! Reef's settings (datastore, nodename, log, lock file, pools) are read from the `ipam` section first and
//! from the top level second, so `reef-ipam` under another main plugin (`ptp`, `bridge`) is configured
//! in its `ipam` section alone.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::spec::{CniError, CniResult, ErrorCode, Version};

/// Where the IPAM lock lives unless configured: one per host, like Calico's, so the ADDs of one node take
/// their addresses one after the other instead of fighting over one block's compare-and-swap.
pub const DEFAULT_IPAM_LOCK_FILE: &str = "/run/reef/cni-ipam.lock";

/// The CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    fn parse(text: &str) -> Option<Command> {
        Some(match text {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }
}

/// The `CNI_*` variables of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    /// `None` when the runtime passed none (allowed for DEL).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs.
    pub args: BTreeMap<String, String>,
}

impl Invocation {
    /// Reads the variables through `get` (e.g. `std::env::var`). Which ones are required depends on the
    /// command, as in the spec.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
        let missing = |name: &str| {
            CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("required environment variable {name} is not set"),
            )
            .details("reef-cni is called by a container runtime, which sets CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME and CNI_PATH")
        };
        let command_text = get("CNI_COMMAND").ok_or_else(|| missing("CNI_COMMAND"))?;
        let command = Command::parse(&command_text).ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("unknown CNI_COMMAND {command_text:?}"),
            )
            .details("one of ADD, DEL, CHECK, VERSION, GC, STATUS")
        })?;
        let non_empty = |name: &str| get(name).filter(|v| !v.is_empty());
        let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let container_id = match non_empty("CNI_CONTAINERID") {
            Some(id) => id,
            None if needs_attachment => return Err(missing("CNI_CONTAINERID")),
            None => String::new(),
        };
        let ifname = match non_empty("CNI_IFNAME") {
            Some(name) => name,
            None if needs_attachment => return Err(missing("CNI_IFNAME")),
            None => String::new(),
        };
        if needs_attachment {
            check_container_id(&container_id)?;
            check_ifname(&ifname)?;
        }
        let netns = non_empty("CNI_NETNS").map(PathBuf::from);
        if netns.is_none() && matches!(command, Command::Add | Command::Check) {
            return Err(missing("CNI_NETNS"));
        }
        if non_empty("CNI_PATH").is_none() && command != Command::Version {
            return Err(missing("CNI_PATH"));
        }
        let args = parse_cni_args(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(Invocation {
            command,
            container_id,
            netns,
            ifname,
            args,
        })
    }

    /// The pod's namespace and name, when the runtime is Kubernetes (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`).
    pub fn pod(&self) -> Option<(&str, &str)> {
        match (
            self.args.get("K8S_POD_NAMESPACE"),
            self.args.get("K8S_POD_NAME"),
        ) {
            (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => {
                Some((ns.as_str(), name.as_str()))
            }
            _ => None,
        }
    }
}

/// The spec's container id rule: alphanumerics, then also `_`, `.` and `-`.
fn check_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        return Ok(());
    }
    Err(CniError::new(
        ErrorCode::InvalidEnvironment,
        format!("CNI_CONTAINERID {id:?} is not a valid container id"),
    )
    .details(
        "it must start with a letter or digit and hold only letters, digits, '_', '.' and '-'",
    ))
}

/// The kernel's interface name rule: 1 to 15 octets, no '/', ':' or white space, not "." or "..".
fn check_ifname(name: &str) -> Result<(), CniError> {
    let valid = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if valid {
        return Ok(());
    }
    Err(CniError::new(
        ErrorCode::InvalidEnvironment,
        format!("CNI_IFNAME {name:?} is not a valid interface name"),
    )
    .details("1 to 15 characters, without '/', ':' or spaces"))
}

/// `K1=V1;K2=V2`. Keys Reef does not know are ignored (as if `IgnoreUnknown=1` were always set).
fn parse_cni_args(text: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut args = BTreeMap::new();
    for pair in text.split(';').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
            )
            .details("CNI_ARGS is a list of KEY=VALUE pairs separated by ';'")
        })?;
        args.insert(key.to_string(), value.to_string());
    }
    Ok(args)
}

/// Where Reef's resources live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatastoreConfig {
    Etcd { endpoints: Vec<String> },
    Kubernetes { kubeconfig: Option<PathBuf> },
}

/// The IPAM part of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpamConfig {
    /// The `ipam.type` (e.g. `reef-ipam`).
    pub kind: String,
    /// Pools by CIDR or by IPPool name; empty = every pool that fits the node.
    pub ipv4_pools: Vec<String>,
    pub ipv6_pools: Vec<String>,
    pub assign_ipv4: bool,
    pub assign_ipv6: bool,
    /// IPAM-plugin mode: the gateway reported with each IPv4 address (default 169.254.1.1; `none` = none).
    pub gateway_v4: Option<IpAddr>,
    /// IPAM-plugin mode: routes to report (as host-local's `routes`).
    pub routes: Vec<crate::spec::Route>,
}

/// One attachment the runtime still uses (GC's `cni.dev/valid-attachments`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

/// The parsed network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub version: Version,
    /// The network name: the first part of every address handle (`<name>.<containerID>`).
    pub name: String,
    pub plugin_type: String,
    /// `None` = auto (the host's MTU less the VXLAN overhead where a pool uses VXLAN).
    pub mtu: Option<u32>,
    pub nodename: Option<String>,
    pub datastore: DatastoreConfig,
    pub ipam: IpamConfig,
    pub log_level: Option<String>,
    pub log_file: Option<PathBuf>,
    pub ipam_lock_file: PathBuf,
    /// `args.cni.labels` (the CNI conventions' labels), stored on the WorkloadEndpoint.
    pub labels: BTreeMap<String, String>,
    pub dns: Option<Value>,
    pub prev_result: Option<CniResult>,
    /// GC only.
    pub valid_attachments: Vec<Attachment>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawSettings {
    nodename: Option<String>,
    datastore: Option<RawDatastore>,
    log_level: Option<String>,
    log_file: Option<PathBuf>,
    ipam_lock_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawDatastore {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    etcd_endpoints: Vec<String>,
    kubeconfig: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    ipv4_pools: Vec<String>,
    #[serde(default)]
    ipv6_pools: Vec<String>,
    #[serde(rename = "assignIPv4")]
    assign_ipv4: Option<bool>,
    #[serde(rename = "assignIPv6")]
    assign_ipv6: Option<bool>,
    gateway: Option<String>,
    #[serde(default)]
    routes: Vec<crate::spec::Route>,
    #[serde(flatten)]
    settings: RawSettings,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    mtu: Option<u32>,
    ipam: Option<RawIpam>,
    args: Option<RawArgs>,
    dns: Option<Value>,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    valid_attachments: Vec<RawAttachment>,
    #[serde(flatten)]
    settings: RawSettings,
}

#[derive(Deserialize)]
struct RawArgs {
    cni: Option<RawCniArgs>,
}

#[derive(Deserialize)]
struct RawCniArgs {
    #[serde(default)]
    labels: Vec<RawLabel>,
}

#[derive(Deserialize)]
struct RawLabel {
    key: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// The `cniVersion` of a configuration, for answering in its version even when the rest is bad.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(stdin)
        .ok()?
        .get("cniVersion")?
        .as_str()
        .map(str::to_string)
}

fn invalid(msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidConfig, msg).details(details)
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                ErrorCode::Decode,
                format!("the network configuration on stdin is not valid JSON: {e}"),
            )
            .details("check the file in the CNI configuration directory (/etc/cni/net.d)")
        })?;
        let raw: RawConf = serde_json::from_value(value).map_err(|e| {
            invalid(
                format!("the network configuration does not fit reef's schema: {e}"),
                "see the reef-cni README for the fields",
            )
        })?;
        let version_text = raw.cni_version.ok_or_else(|| {
            invalid(
                "the network configuration has no cniVersion",
                "add \"cniVersion\": \"1.1.0\"",
            )
        })?;
        let version = Version::parse(&version_text)?;
        let name = raw.name.filter(|n| !n.is_empty()).ok_or_else(|| {
            invalid(
                "the network configuration has no name",
                "add \"name\": \"reef\" (it prefixes every address handle)",
            )
        })?;
        let plugin_type = raw.kind.unwrap_or_default();
        let raw_ipam = raw.ipam.unwrap_or_default();
        // The ipam section's settings win over the top level's.
        let top = raw.settings;
        let inner = raw_ipam.settings;
        let nodename = inner.nodename.or(top.nodename).filter(|n| !n.is_empty());
        let raw_datastore = inner.datastore.or(top.datastore);
        let datastore = match raw_datastore {
            None => DatastoreConfig::Kubernetes { kubeconfig: None },
            Some(d) => match d.kind.as_str() {
                "etcd" => {
                    if d.etcd_endpoints.is_empty() {
                        return Err(invalid(
                            "datastore type etcd needs etcdEndpoints",
                            "e.g. \"datastore\": {\"type\": \"etcd\", \"etcdEndpoints\": [\"http://198.51.100.1:2379\"]}",
                        ));
                    }
                    DatastoreConfig::Etcd {
                        endpoints: d.etcd_endpoints,
                    }
                }
                "kubernetes" => DatastoreConfig::Kubernetes {
                    kubeconfig: d.kubeconfig,
                },
                other => {
                    return Err(invalid(
                        format!("unknown datastore type {other:?}"),
                        "use \"etcd\" or \"kubernetes\"",
                    ));
                }
            },
        };
        let mut pools_v4 = Vec::new();
        let mut pools_v6 = Vec::new();
        for (list, v6, field) in [
            (&raw_ipam.ipv4_pools, false, "ipv4Pools"),
            (&raw_ipam.ipv6_pools, true, "ipv6Pools"),
        ] {
            for pool in list {
                if let Ok(net) = pool.parse::<IpNet>()
                    && net.addr().is_ipv6() != v6
                {
                    return Err(invalid(
                        format!("ipam.{field}: {pool} is of the wrong address family"),
                        "list IPv4 pools in ipv4Pools and IPv6 pools in ipv6Pools",
                    ));
                }
                if v6 { &mut pools_v6 } else { &mut pools_v4 }.push(pool.clone());
            }
        }
        let assign_ipv6 = raw_ipam.assign_ipv6.unwrap_or(!pools_v6.is_empty());
        let assign_ipv4 = raw_ipam.assign_ipv4.unwrap_or(true);
        if !assign_ipv4 && !assign_ipv6 {
            return Err(invalid(
                "ipam assigns no address: assignIPv4 and assignIPv6 are both false",
                "set assignIPv4 or assignIPv6 to true",
            ));
        }
        let gateway_v4 = match raw_ipam.gateway.as_deref() {
            None => Some(reef_crds::workload::POD_GATEWAY_V4.into()),
            Some("none") => None,
            Some(text) => Some(text.parse::<IpAddr>().map_err(|e| {
                invalid(
                    format!("ipam.gateway {text:?}: {e}"),
                    "an IPv4 address or \"none\"",
                )
            })?),
        };
        let labels = raw
            .args
            .and_then(|a| a.cni)
            .map(|c| c.labels.into_iter().map(|l| (l.key, l.value)).collect())
            .unwrap_or_default();
        let prev_result = raw
            .prev_result
            .as_ref()
            .map(CniResult::from_json)
            .transpose()?;
        Ok(NetConf {
            version,
            name,
            plugin_type,
            mtu: raw.mtu.filter(|m| *m > 0),
            nodename,
            datastore,
            ipam: IpamConfig {
                kind: raw_ipam.kind,
                ipv4_pools: pools_v4,
                ipv6_pools: pools_v6,
                assign_ipv4,
                assign_ipv6,
                gateway_v4,
                routes: raw_ipam.routes,
            },
            log_level: inner.log_level.or(top.log_level),
            log_file: inner.log_file.or(top.log_file),
            ipam_lock_file: inner
                .ipam_lock_file
                .or(top.ipam_lock_file)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_IPAM_LOCK_FILE)),
            labels,
            dns: raw.dns,
            prev_result,
            valid_attachments: raw
                .valid_attachments
                .into_iter()
                .map(|a| Attachment {
                    container_id: a.container_id,
                    ifname: a.ifname,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const ADD: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    #[test]
    fn invocation_needs_its_variables() {
        let ok = Invocation::from_env(env(&ADD)).unwrap();
        assert_eq!(ok.command, Command::Add);
        assert_eq!(ok.pod(), None);
        for skip in [
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_PATH",
        ] {
            let pairs: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != skip).collect();
            let e = Invocation::from_env(env(&pairs)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidEnvironment, "{skip}");
            assert!(e.msg.contains(skip), "{}", e.msg);
        }
        // DEL may come without a netns (the runtime lost it).
        let mut del = ADD.to_vec();
        del[0] = ("CNI_COMMAND", "DEL");
        del.retain(|(k, _)| *k != "CNI_NETNS");
        assert!(Invocation::from_env(env(&del)).unwrap().netns.is_none());
        let version = Invocation::from_env(env(&[("CNI_COMMAND", "VERSION")])).unwrap();
        assert_eq!(version.command, Command::Version);
        let bad = Invocation::from_env(env(&[("CNI_COMMAND", "UP")])).unwrap_err();
        assert_eq!(bad.code.number(), 4);
    }

    #[test]
    fn invocation_checks_ids_names_and_args() {
        for (key, value) in [
            ("CNI_CONTAINERID", "-bad"),
            ("CNI_CONTAINERID", "a b"),
            ("CNI_IFNAME", "eth0123456789012"),
            ("CNI_IFNAME", "et/h0"),
            ("CNI_ARGS", "novalue"),
        ] {
            let mut pairs = ADD.to_vec();
            pairs.retain(|(k, _)| *k != key);
            pairs.push((key, value));
            let e = Invocation::from_env(env(&pairs)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidEnvironment, "{key}={value}");
        }
        let mut pairs = ADD.to_vec();
        pairs.push((
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=nginx-1;FOO=bar",
        ));
        let inv = Invocation::from_env(env(&pairs)).unwrap();
        assert_eq!(inv.pod(), Some(("web", "nginx-1")));
    }

    #[test]
    fn config_reads_reef_settings_from_ipam_or_top_level() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"reef","mtu":1400,
                 "nodename":"node-a","datastore":{"type":"etcd","etcdEndpoints":["http://198.51.100.1:2379"]},
                 "ipam":{"type":"reef-ipam","ipv4Pools":["10.244.0.0/16"],"ipv6Pools":["fd00:244::/48"]},
                 "args":{"cni":{"labels":[{"key":"app","value":"web"}]}}}"#,
        )
        .unwrap();
        assert_eq!(conf.version, Version::V1_0_0);
        assert_eq!(conf.mtu, Some(1400));
        assert_eq!(conf.nodename.as_deref(), Some("node-a"));
        assert!(conf.ipam.assign_ipv4 && conf.ipam.assign_ipv6);
        assert_eq!(conf.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(
            conf.datastore,
            DatastoreConfig::Etcd {
                endpoints: vec!["http://198.51.100.1:2379".into()]
            }
        );
        // reef-ipam under ptp: everything in the ipam section.
        let ptp = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"ptp",
                 "ipam":{"type":"reef-ipam","nodename":"node-b","ipamLockFile":"/tmp/l",
                         "datastore":{"type":"etcd","etcdEndpoints":["http://127.0.0.1:1"]}}}"#,
        )
        .unwrap();
        assert_eq!(ptp.nodename.as_deref(), Some("node-b"));
        assert_eq!(ptp.ipam_lock_file, PathBuf::from("/tmp/l"));
        assert!(ptp.ipam.assign_ipv4 && !ptp.ipam.assign_ipv6);
        assert_eq!(ptp.mtu, None);
    }

    #[test]
    fn bad_configs_get_the_right_codes() {
        let cases: [(&[u8], u32); 7] = [
            (b"{not json", 6),
            (br#"{"name":"n","type":"reef"}"#, 7),
            (br#"{"cniVersion":"0.2.0","name":"n","type":"reef"}"#, 1),
            (br#"{"cniVersion":"1.1.0","type":"reef"}"#, 7),
            (
                br#"{"cniVersion":"1.1.0","name":"n","datastore":{"type":"etcd"}}"#,
                7,
            ),
            (
                br#"{"cniVersion":"1.1.0","name":"n","ipam":{"ipv4Pools":["fd00::/48"]}}"#,
                7,
            ),
            (
                br#"{"cniVersion":"1.1.0","name":"n","datastore":{"type":"consul"}}"#,
                7,
            ),
        ];
        for (input, code) in cases {
            let e = NetConf::parse(input).unwrap_err();
            assert_eq!(
                e.code.number(),
                code,
                "{}: {e}",
                String::from_utf8_lossy(input)
            );
            assert!(!e.details.is_empty(), "{e}");
        }
        assert_eq!(
            peek_version(br#"{"cniVersion":"0.4.0"}"#).as_deref(),
            Some("0.4.0")
        );
    }

    #[test]
    fn gc_reads_valid_attachments() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"reef",
                 "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(
            conf.valid_attachments,
            vec![Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }]
        );
    }
}
