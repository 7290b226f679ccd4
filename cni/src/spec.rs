//! The CNI specification's data: versions, the error object with its codes, and the result object in
//! every version Reef speaks (1.1.0, 1.0.0, 0.4.0, 0.3.1). Pure: no IO.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;
use serde_json::{Map, Value, json};

/// The spec version this plugin implements.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Configuration versions accepted, oldest first (`VERSION` reports them).
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A configuration version this plugin accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub fn parse(text: &str) -> Result<Version, CniError> {
        match text {
            "0.3.1" => Ok(Version::V0_3_1),
            "0.4.0" => Ok(Version::V0_4_0),
            "1.0.0" => Ok(Version::V1_0_0),
            "1.1.0" => Ok(Version::V1_1_0),
            other => Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!("incompatible CNI version {other:?}"),
            )
            .details(format!(
                "reef supports the configuration versions {}: set cniVersion to one of them",
                SUPPORTED_VERSIONS.join(", ")
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// GC and STATUS exist from 1.1.0 on.
    pub fn has_gc_and_status(self) -> bool {
        self >= Version::V1_1_0
    }

    /// Results before 1.0.0 carry `"version": "4"|"6"` in each IP.
    fn ip_has_version_field(self) -> bool {
        self < Version::V1_0_0
    }

    /// Interfaces carry `mtu` from 1.1.0 on.
    fn interface_has_mtu(self) -> bool {
        self >= Version::V1_1_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error codes of the spec (1–99 are the spec's; 100 and up are Reef's own, listed in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    IncompatibleVersion,
    UnsupportedField,
    ContainerUnknown,
    InvalidEnvironment,
    Io,
    Decode,
    InvalidConfig,
    TryAgainLater,
    PluginNotAvailable,
    /// No address could be found: pools exhausted, or no pool fits the node.
    AddressesExhausted,
    /// The interface name is already taken inside the container.
    InterfaceExists,
    /// The node named by `nodename` is not registered.
    NodeUnknown,
    /// CHECK found the attachment different from what ADD made.
    CheckFailed,
    /// The kernel refused a link, address, route or sysctl change.
    Kernel,
    /// The datastore answered, but refused or failed a request (not a transient outage).
    Datastore,
}

impl ErrorCode {
    pub fn number(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::ContainerUnknown => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::Io => 5,
            ErrorCode::Decode => 6,
            ErrorCode::InvalidConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::PluginNotAvailable => 50,
            ErrorCode::AddressesExhausted => 100,
            ErrorCode::InterfaceExists => 101,
            ErrorCode::NodeUnknown => 102,
            ErrorCode::CheckFailed => 103,
            ErrorCode::Kernel => 104,
            ErrorCode::Datastore => 105,
        }
    }
}

/// A CNI error: printed on stdout as the spec's error object, with a non-zero exit code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    pub code: ErrorCode,
    /// What went wrong, naming the cause.
    pub msg: String,
    /// What to do about it.
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The error object, e.g. `{"cniVersion":"1.1.0","code":7,"msg":"...","details":"..."}`.
    pub fn to_json(&self, version: &str) -> Value {
        let mut object = json!({
            "cniVersion": version,
            "code": self.code.number(),
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            object["details"] = Value::String(self.details.clone());
        }
        object
    }
}

/// One interface of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: Option<u32>,
    /// The container's network namespace path; `None` for a host interface.
    pub sandbox: Option<String>,
}

/// One address of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into the result's interfaces.
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// The result of ADD (and the `prevResult` a runtime gives back to CHECK and DEL).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    /// The `dns` object of the configuration, passed through.
    pub dns: Option<Value>,
}

impl CniResult {
    /// The result object in the shape of `version`.
    pub fn to_json(&self, version: Version) -> Value {
        let mut object = Map::new();
        object.insert("cniVersion".into(), version.as_str().into());
        if !self.interfaces.is_empty() {
            let interfaces = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut entry = json!({"name": i.name, "mac": i.mac});
                    if let (Some(mtu), true) = (i.mtu, version.interface_has_mtu()) {
                        entry["mtu"] = mtu.into();
                    }
                    if let Some(sandbox) = &i.sandbox {
                        entry["sandbox"] = sandbox.as_str().into();
                    }
                    entry
                })
                .collect::<Vec<_>>();
            object.insert("interfaces".into(), interfaces.into());
        }
        let ips = self
            .ips
            .iter()
            .map(|ip| {
                let mut entry = json!({"address": ip.address.to_string()});
                if version.ip_has_version_field() {
                    let family = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    entry["version"] = family.into();
                }
                if let Some(gateway) = ip.gateway {
                    entry["gateway"] = gateway.to_string().into();
                }
                if let Some(index) = ip.interface {
                    entry["interface"] = index.into();
                }
                entry
            })
            .collect::<Vec<_>>();
        object.insert("ips".into(), ips.into());
        if !self.routes.is_empty() {
            object.insert("routes".into(), json!(self.routes));
        }
        object.insert(
            "dns".into(),
            self.dns
                .clone()
                .unwrap_or_else(|| Value::Object(Map::new())),
        );
        Value::Object(object)
    }

    /// Reads a `prevResult` (any supported version's shape). Fields Reef does not use are ignored.
    pub fn from_json(value: &Value) -> Result<CniResult, CniError> {
        let bad = |what: String| {
            CniError::new(ErrorCode::Decode, format!("prevResult: {what}"))
                .details("the runtime must pass back the result ADD returned")
        };
        let interfaces = value
            .get("interfaces")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .map(|i| Interface {
                        name: text(i, "name"),
                        mac: text(i, "mac"),
                        mtu: i.get("mtu").and_then(Value::as_u64).map(|m| m as u32),
                        sandbox: i.get("sandbox").and_then(Value::as_str).map(str::to_string),
                    })
                    .collect()
            })
            .unwrap_or_default();
        // An optional address field of one list entry, e.g. `ips[].gateway`.
        let optional_ip = |entry: &Value, field: &str, list: &str| {
            entry
                .get(field)
                .and_then(Value::as_str)
                .map(|t| t.parse::<IpAddr>())
                .transpose()
                .map_err(|e| bad(format!("{list}[].{field}: {e}")))
        };
        let list = |name: &str| {
            value
                .get(name)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let mut ips = Vec::new();
        for ip in list("ips") {
            ips.push(IpConfig {
                address: text(&ip, "address")
                    .parse::<IpNet>()
                    .map_err(|e| bad(format!("ips[].address: {e}")))?,
                gateway: optional_ip(&ip, "gateway", "ips")?,
                interface: ip
                    .get("interface")
                    .and_then(Value::as_u64)
                    .map(|i| i as usize),
            });
        }
        let mut routes = Vec::new();
        for route in list("routes") {
            routes.push(Route {
                dst: text(&route, "dst")
                    .parse::<IpNet>()
                    .map_err(|e| bad(format!("routes[].dst: {e}")))?,
                gw: optional_ip(&route, "gw", "routes")?,
            });
        }
        Ok(CniResult {
            interfaces,
            ips,
            routes,
            dns: value.get("dns").cloned(),
        })
    }
}

fn text(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The answer to VERSION.
pub fn version_info() -> Value {
    json!({"cniVersion": CURRENT_VERSION, "supportedVersions": SUPPORTED_VERSIONS})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "reef0123456789a".into(),
                    mac: "ee:ee:ee:ee:ee:ee".into(),
                    mtu: Some(1500),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:f4:00:05".into(),
                    mtu: Some(1500),
                    sandbox: Some("/var/run/netns/x".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.0.5/32".parse().unwrap(),
                gateway: Some("169.254.1.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("169.254.1.1".parse().unwrap()),
            }],
            dns: None,
        }
    }

    #[test]
    fn result_shapes_follow_the_version() {
        let r = sample();
        let v1 = r.to_json(Version::V1_1_0);
        assert_eq!(
            v1,
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "reef0123456789a", "mac": "ee:ee:ee:ee:ee:ee", "mtu": 1500},
                    {"name": "eth0", "mac": "0a:58:0a:f4:00:05", "mtu": 1500, "sandbox": "/var/run/netns/x"}
                ],
                "ips": [{"address": "10.244.0.5/32", "gateway": "169.254.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
                "dns": {}
            })
        );
        let v100 = r.to_json(Version::V1_0_0);
        assert!(v100["interfaces"][0].get("mtu").is_none());
        assert!(v100["ips"][0].get("version").is_none());
        let v031 = r.to_json(Version::V0_3_1);
        assert_eq!(v031["ips"][0]["version"], "4");
        assert_eq!(v031["cniVersion"], "0.3.1");
    }

    #[test]
    fn results_read_back_from_every_version() {
        let r = sample();
        for v in [
            Version::V0_3_1,
            Version::V0_4_0,
            Version::V1_0_0,
            Version::V1_1_0,
        ] {
            let back = CniResult::from_json(&r.to_json(v)).unwrap();
            assert_eq!(back.ips, r.ips);
            assert_eq!(back.routes, r.routes);
            assert_eq!(back.interfaces.len(), 2);
        }
        let broken = json!({"ips": [{"address": "10.0.0.300/32"}]});
        assert_eq!(
            CniResult::from_json(&broken).unwrap_err().code,
            ErrorCode::Decode
        );
    }

    #[test]
    fn errors_carry_the_spec_codes() {
        let e = Version::parse("0.2.0").unwrap_err();
        assert_eq!(e.code.number(), 1);
        let j = e.to_json("1.1.0");
        assert_eq!(j["code"], 1);
        assert!(
            j["details"]
                .as_str()
                .unwrap()
                .contains("0.3.1, 0.4.0, 1.0.0, 1.1.0")
        );
        let plain = CniError::new(ErrorCode::Io, "x").to_json("1.0.0");
        assert!(plain.get("details").is_none());
        assert!(Version::V0_4_0.has_check() && !Version::V0_3_1.has_check());
        assert!(Version::V1_1_0.has_gc_and_status() && !Version::V1_0_0.has_gc_and_status());
    }
}
