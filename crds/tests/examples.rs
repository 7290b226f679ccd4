//! The sample YAMLs in deploy/examples/ (Calico users' YAML with apiVersion reef.dev/v1) must parse
//! into the Rust types, pass validation, and survive the datastore's JSON round trip.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use reef_crds::{
    BGPConfiguration, BGPFilter, BGPPeer, GlobalNetworkPolicy, IPAMConfig, IPPool, NetworkPolicy,
    ReefNode, Validate, WorkloadEndpoint,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

/// Parses one document as `T`, validates it, and checks the JSON round trip.
fn check<T>(doc: &str, what: &str)
where
    T: DeserializeOwned + Serialize + Validate + PartialEq + std::fmt::Debug,
{
    let object: T = serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{what}: {e}"));
    if let Err(e) = object.validate() {
        panic!("{what}: {e}");
    }
    let json = serde_json::to_string(&object).unwrap();
    let back: T = serde_json::from_str(&json).unwrap();
    assert_eq!(back, object, "{what}: JSON round trip");
    // serde ignores unknown fields, so a misspelt field name would silently drop data: every key
    // of the YAML must come back when the object is written again.
    let written: Value = serde_json::from_str(&json).unwrap();
    let read: Value = serde_saphyr::from_str(doc).unwrap();
    let mut missing = Vec::new();
    keys_kept("", &read, &written, &mut missing);
    assert!(
        missing.is_empty(),
        "{what}: fields not understood: {missing:?}"
    );
}

fn keys_kept(path: &str, read: &Value, written: &Value, missing: &mut Vec<String>) {
    match (read, written) {
        (Value::Object(r), Value::Object(w)) => {
            for (key, value) in r {
                match w.get(key) {
                    Some(w) => keys_kept(&format!("{path}.{key}"), value, w, missing),
                    None => missing.push(format!("{path}.{key}")),
                }
            }
        }
        (Value::Array(r), Value::Array(w)) => {
            for (n, (r, w)) in r.iter().zip(w).enumerate() {
                keys_kept(&format!("{path}[{n}]"), r, w, missing);
            }
        }
        _ => {}
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    api_version: String,
    kind: String,
}

#[test]
fn examples_parse_and_validate() {
    let mut kinds = BTreeSet::new();
    let mut files: Vec<PathBuf> = fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
    {
        let text = fs::read_to_string(path).unwrap();
        for (n, doc) in text.split("\n---\n").enumerate() {
            let what = format!("{} document {n}", path.display());
            let head: Head = serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(head.api_version, "reef.dev/v1", "{what}");
            match head.kind.as_str() {
                "IPPool" => check::<IPPool>(doc, &what),
                "IPAMConfig" => check::<IPAMConfig>(doc, &what),
                "BGPConfiguration" => check::<BGPConfiguration>(doc, &what),
                "BGPPeer" => check::<BGPPeer>(doc, &what),
                "BGPFilter" => check::<BGPFilter>(doc, &what),
                "ReefNode" => check::<ReefNode>(doc, &what),
                "NetworkPolicy" => check::<NetworkPolicy>(doc, &what),
                "GlobalNetworkPolicy" => check::<GlobalNetworkPolicy>(doc, &what),
                "WorkloadEndpoint" => check::<WorkloadEndpoint>(doc, &what),
                other => panic!("{what}: no check for kind {other}"),
            }
            kinds.insert(head.kind);
        }
    }
    for want in [
        "IPPool",
        "BGPPeer",
        "BGPConfiguration",
        "BGPFilter",
        "ReefNode",
        "NetworkPolicy",
        "GlobalNetworkPolicy",
    ] {
        assert!(kinds.contains(want), "deploy/examples has no {want}");
    }
}

#[test]
fn example_values_are_read_as_written() {
    let text = fs::read_to_string(examples_dir().join("bgp.yaml")).unwrap();
    let peers: Vec<BGPPeer> = text
        .split("\n---\n")
        .filter(|d| d.contains("kind: BGPPeer"))
        .map(|d| serde_saphyr::from_str(d).unwrap())
        .collect();
    let tor = &peers[0].spec;
    assert_eq!(
        tor.peer_address().unwrap().unwrap(),
        ("198.51.100.1".parse().unwrap(), None)
    );
    assert_eq!(
        std::time::Duration::from(tor.hold_time.unwrap()),
        std::time::Duration::from_secs(30)
    );
    assert_eq!(tor.bfd.as_ref().unwrap().multiplier, Some(3));
    assert_eq!(
        peers[1].spec.peer_address().unwrap().unwrap(),
        ("2001:db8:2::1".parse().unwrap(), Some(179))
    );
    // Unquoted community values stay strings (no YAML 1.1 sexagesimal surprise).
    let filter: BGPFilter = serde_saphyr::from_str(
        text.split("\n---\n")
            .find(|d| d.contains("kind: BGPFilter"))
            .unwrap(),
    )
    .unwrap();
    let add = filter.spec.export_v4[0].operations[0]
        .add_community
        .as_ref()
        .unwrap();
    assert_eq!(add.value, "65001:100");
}
