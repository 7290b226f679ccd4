//! Network policy resources (Calico's NetworkPolicy and GlobalNetworkPolicy) and their rule types.

use std::borrow::Cow;
use std::fmt;

use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Policy for the endpoints of one namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "reef.dev",
    version = "v1",
    kind = "NetworkPolicy",
    plural = "networkpolicies",
    namespaced,
    derive = "PartialEq",
    doc = "Policy for the endpoints of one namespace (Calico's NetworkPolicy).",
    printcolumn = r#"{"name":"Order","type":"number","jsonPath":".spec.order"}"#,
    printcolumn = r#"{"name":"Selector","type":"string","jsonPath":".spec.selector"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Lower orders apply first; policies without an order apply last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// Endpoints (of this namespace) the policy applies to; empty means all.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// Directions the policy applies to; when empty, Ingress plus Egress if `egress` has rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<PolicyType>,
    /// Rules for traffic to the endpoints, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    /// Rules for traffic from the endpoints, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    /// Further restricts the endpoints to those whose service account matches this selector.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account_selector: String,
}

/// Policy for endpoints of all namespaces (and host endpoints).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "reef.dev",
    version = "v1",
    kind = "GlobalNetworkPolicy",
    plural = "globalnetworkpolicies",
    derive = "PartialEq",
    doc = "Policy for endpoints of all namespaces (Calico's GlobalNetworkPolicy).",
    printcolumn = r#"{"name":"Order","type":"number","jsonPath":".spec.order"}"#,
    printcolumn = r#"{"name":"Selector","type":"string","jsonPath":".spec.selector"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GlobalNetworkPolicySpec {
    /// Lower orders apply first; policies without an order apply last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// Endpoints the policy applies to; empty means all.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// Restricts the policy to endpoints in namespaces whose labels match.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace_selector: String,
    /// Directions the policy applies to; when empty, Ingress plus Egress if `egress` has rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<PolicyType>,
    /// Rules for traffic to the endpoints, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    /// Rules for traffic from the endpoints, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    /// Further restricts the endpoints to those whose service account matches this selector.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account_selector: String,
}

/// Direction of a policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum PolicyType {
    /// Traffic to the endpoint.
    Ingress,
    /// Traffic from the endpoint.
    Egress,
}

/// A policy rule: when every given match holds, `action` applies.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// What to do with matching traffic.
    pub action: Action,
    /// Only IPv4 (4) or IPv6 (6) traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<u8>,
    /// Protocol name (TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite) or number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Any protocol but this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<Protocol>,
    /// ICMP type/code (with protocol ICMP or ICMPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpFields>,
    /// Any ICMP type/code but this.
    #[serde(default, rename = "notICMP", skip_serializing_if = "Option::is_none")]
    pub not_icmp: Option<IcmpFields>,
    /// Where the traffic comes from.
    #[serde(default, skip_serializing_if = "EntityRule::is_empty")]
    pub source: EntityRule,
    /// Where the traffic goes.
    #[serde(default, skip_serializing_if = "EntityRule::is_empty")]
    pub destination: EntityRule,
}

/// Verdict of a rule.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Action {
    /// Accept; no further policy is consulted.
    Allow,
    /// Drop.
    Deny,
    /// Skip the rest of this policy's tier and go on with the next policies.
    Pass,
    /// Log and go on with the next rule.
    Log,
}

/// ICMP type and code.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct IcmpFields {
    /// ICMP type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<u8>,
    /// ICMP code (needs `type`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

/// One side of a rule. All given fields must match.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntityRule {
    /// Endpoints whose labels match.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// Endpoints whose labels do not match.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub not_selector: String,
    /// Endpoints in namespaces whose labels match (`global()` for non-namespaced ones).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace_selector: String,
    /// Addresses within any of these CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<String>,
    /// Addresses outside all of these CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_nets: Vec<String>,
    /// Ports (numbers, `a:b` ranges, or named ports of the endpoint); needs TCP, UDP or SCTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// Ports excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<Port>,
}

impl EntityRule {
    /// True when the rule side matches everything (no field set).
    pub fn is_empty(&self) -> bool {
        *self == EntityRule::default()
    }
}

/// Schema for values that are a number or a string (Kubernetes' `x-kubernetes-int-or-string`).
fn int_or_string_schema(description: &str) -> Schema {
    json_schema!({
        "description": description,
        "x-kubernetes-int-or-string": true
    })
}

/// Protocol of a rule: a name or an IP protocol number.
/// Unknown names are kept (so a bad object still reads) and rejected by validation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// An IP protocol number (0..=255 valid).
    Number(u32),
    /// A name: TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite (case-insensitive).
    Name(String),
}

/// Protocol names and their IANA numbers.
const PROTOCOL_NAMES: [(&str, u8); 6] = [
    ("TCP", 6),
    ("UDP", 17),
    ("ICMP", 1),
    ("ICMPv6", 58),
    ("SCTP", 132),
    ("UDPLite", 136),
];

impl Protocol {
    /// The IP protocol number; `None` for an unknown name or a number above 255.
    pub fn number(&self) -> Option<u8> {
        match self {
            Protocol::Number(n) => u8::try_from(*n).ok(),
            Protocol::Name(name) => PROTOCOL_NAMES
                .iter()
                .find(|(known, _)| known.eq_ignore_ascii_case(name))
                .map(|(_, n)| *n),
        }
    }

    /// Whether the protocol has ports (TCP, UDP, SCTP, UDPLite).
    pub fn has_ports(&self) -> bool {
        matches!(self.number(), Some(6 | 17 | 132 | 136))
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Number(n) => write!(f, "{n}"),
            Protocol::Name(s) => f.write_str(s),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Protocol::Number(n) => s.serialize_u32(*n),
            Protocol::Name(name) => s.serialize_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match IntOrString::deserialize(d)? {
            IntOrString::Int(n) => Protocol::Number(n),
            IntOrString::String(s) => Protocol::Name(s),
        })
    }
}

impl JsonSchema for Protocol {
    fn schema_name() -> Cow<'static, str> {
        "Protocol".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        int_or_string_schema(
            "Protocol name (TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite) or number (0-255).",
        )
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(u32),
    String(String),
}

/// A port match: a number, a range `a:b` (inclusive), or a named port of the endpoint.
/// Kept as written so a bad value still reads; validation checks ranges and names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Port {
    /// One port (1..=65535 valid; 0 and larger numbers are rejected by validation).
    Number(u32),
    /// `min:max`, inclusive.
    Range(u32, u32),
    /// A named port (e.g. `http`), resolved against the endpoint's ports.
    Named(String),
}

impl Port {
    /// The inclusive numeric range, or `None` for a named port.
    pub fn range(&self) -> Option<(u32, u32)> {
        match self {
            Port::Number(n) => Some((*n, *n)),
            Port::Range(min, max) => Some((*min, *max)),
            Port::Named(_) => None,
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Number(n) => write!(f, "{n}"),
            Port::Range(min, max) => write!(f, "{min}:{max}"),
            Port::Named(name) => f.write_str(name),
        }
    }
}

impl From<&str> for Port {
    /// Digits are a number, `digits:digits` a range, anything else a name.
    fn from(text: &str) -> Port {
        let number = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u32>().ok())
                .flatten()
        };
        if let Some(n) = number(text) {
            return Port::Number(n);
        }
        let range = text
            .split_once(':')
            .and_then(|(a, b)| Some(Port::Range(number(a)?, number(b)?)));
        range.unwrap_or_else(|| Port::Named(text.to_string()))
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Port::Number(n) => s.serialize_u32(*n),
            other => s.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match IntOrString::deserialize(d)? {
            IntOrString::Int(n) => Port::Number(n),
            IntOrString::String(s) => Port::from(s.as_str()),
        })
    }
}

impl JsonSchema for Port {
    fn schema_name() -> Cow<'static, str> {
        "Port".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        int_or_string_schema("Port number, range \"min:max\", or named port.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_forms_round_trip() {
        let ports: Vec<Port> =
            serde_json::from_str(r#"[80, "443", "8000:8080", "http", "1:x"]"#).unwrap();
        assert_eq!(
            ports,
            vec![
                Port::Number(80),
                Port::Number(443),
                Port::Range(8000, 8080),
                Port::Named("http".into()),
                Port::Named("1:x".into())
            ]
        );
        assert_eq!(
            serde_json::to_string(&ports).unwrap(),
            r#"[80,443,"8000:8080","http","1:x"]"#
        );
    }

    #[test]
    fn protocol_names_and_numbers() {
        let protocols: Vec<Protocol> =
            serde_json::from_str(r#"["TCP", "udp", 132, "ICMPv6", "bogus", 300]"#).unwrap();
        let numbers: Vec<Option<u8>> = protocols.iter().map(Protocol::number).collect();
        assert_eq!(
            numbers,
            vec![Some(6), Some(17), Some(132), Some(58), None, None]
        );
        assert!(protocols[0].has_ports() && protocols[2].has_ports() && !protocols[3].has_ports());
        assert_eq!(
            serde_json::to_string(&protocols[..3]).unwrap(),
            r#"["TCP","udp",132]"#
        );
    }
}
