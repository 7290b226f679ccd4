//! `reefctl get|apply|delete` run as the real binary against a real etcd; exit codes, one-line errors
//! (also with RUST_BACKTRACE=1) and shell completion.

use std::io::Write;
use std::process::{Command, Stdio};

use reef_lab::etcd::EtcdServer;

/// What one run of reefctl gave.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn reefctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_reefctl"))
        .args(args)
        .env("REEF_ETCD_ENDPOINTS", endpoint)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run reefctl");
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// An error run: the exit code, and stderr is one line starting `error:` (no backtrace frames).
fn failed(run: &Run, code: i32) -> &str {
    assert_eq!(
        run.code, code,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
    &run.stderr
}

fn ok(run: &Run) -> &str {
    assert_eq!(
        run.code, 0,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    &run.stdout
}

const OBJECTS: &str = r#"
apiVersion: reef.dev/v1
kind: IPPool
metadata:
  name: pods
spec:
  cidr: 10.244.0.0/16
  natOutgoing: true
---
apiVersion: reef.dev/v1
kind: BGPPeer
metadata:
  name: rack1-tor
spec:
  peerIP: 198.51.100.1
  asNumber: 65001
  nodeSelector: rack == 'rack1'
  password:
    secretKeyRef:
      name: bgp-secrets
      key: rack1-tor
---
apiVersion: reef.dev/v1
kind: NetworkPolicy
metadata:
  name: allow-web
  namespace: shop
spec:
  selector: app == 'web'
  ingress:
    - action: Allow
      protocol: TCP
      destination:
        ports: [80]
"#;

#[test]
fn apply_get_delete_round_trip_with_conflicts_and_validation() {
    let etcd = EtcdServer::start().expect("start etcd");
    let endpoint = etcd.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("objects.yaml");
    std::fs::write(&file, OBJECTS).unwrap();
    let file = file.to_str().unwrap();

    let out = ok(&reefctl(&endpoint, &["apply", "-f", file], None)).to_string();
    assert_eq!(
        out,
        "ippool pods created\nbgppeer rack1-tor created\nnetworkpolicy shop/allow-web created\n"
    );
    assert!(
        ok(&reefctl(&endpoint, &["apply", "-f", file], None)).contains("ippool pods unchanged")
    );

    // Tables for people.
    let table = ok(&reefctl(&endpoint, &["get", "ippools"], None)).to_string();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME  CIDR"), "{table}");
    assert!(lines[1].starts_with("pods  10.244.0.0/16"), "{table}");
    let peers = ok(&reefctl(&endpoint, &["get", "bgppeer"], None)).to_string();
    assert!(
        peers.contains("198.51.100.1") && peers.contains("secret bgp-secrets"),
        "{peers}"
    );
    let policies = ok(&reefctl(&endpoint, &["get", "networkpolicies", "-A"], None)).to_string();
    assert!(policies.starts_with("NAMESPACE  NAME"), "{policies}");
    assert!(policies.contains("shop       allow-web"), "{policies}");

    // JSON and YAML for scripts.
    let json: serde_json::Value = serde_json::from_str(ok(&reefctl(
        &endpoint,
        &["get", "ippool", "pods", "-o", "json"],
        None,
    )))
    .unwrap();
    assert_eq!(json["spec"]["cidr"], "10.244.0.0/16");
    assert_eq!(json["kind"], "IPPool");
    let list: serde_json::Value = serde_json::from_str(ok(&reefctl(
        &endpoint,
        &["get", "-f", file, "-o", "json"],
        None,
    )))
    .unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().unwrap().len(), 3);

    // A stale apply: the YAML read before someone else's change is refused.
    let stale = ok(&reefctl(
        &endpoint,
        &["get", "ippool", "pods", "-o", "yaml"],
        None,
    ))
    .to_string();
    assert!(stale.contains("resourceVersion"), "{stale}");
    let changed = OBJECTS.replace("natOutgoing: true", "natOutgoing: false");
    ok(&reefctl(&endpoint, &["apply", "-f", "-"], Some(&changed)));
    let mine = stale.replace("disabled: false", "disabled: true");
    let run = reefctl(&endpoint, &["apply", "-f", "-"], Some(&mine));
    let error = failed(&run, 5);
    assert!(
        error.contains("ippool pods was changed by someone else since it was read")
            && error.contains("get it again"),
        "{error}"
    );
    // The fresh copy applies.
    let fresh = ok(&reefctl(
        &endpoint,
        &["get", "ippool", "pods", "-o", "yaml"],
        None,
    ))
    .replace("disabled: false", "disabled: true");
    assert!(ok(&reefctl(&endpoint, &["apply", "-f", "-"], Some(&fresh))).contains("configured"));
    assert!(ok(&reefctl(&endpoint, &["get", "ippool", "pods"], None)).contains("true"));

    // Validation before writing: the field and the fix, and nothing written.
    let bad =
        "apiVersion: reef.dev/v1\nkind: IPPool\nmetadata: {name: bad}\nspec: {cidr: 10.9.0.1/24}\n";
    let run = reefctl(&endpoint, &["apply", "-f", "-"], Some(bad));
    let error = failed(&run, 6);
    assert!(
        error.contains("ippool bad is invalid: spec.cidr")
            && error.contains("did you mean 10.9.0.0/24"),
        "{error}"
    );
    let typo = "apiVersion: reef.dev/v1\nkind: IPPool\nmetadata: {name: typo}\nspec: {cidr: 10.9.0.0/24, natOutgoin: true}\n";
    let error = failed(&reefctl(&endpoint, &["apply", "-f", "-"], Some(typo)), 6).to_string();
    assert!(error.contains("unknown field spec.natOutgoin"), "{error}");
    let wrong_type = "apiVersion: reef.dev/v1\nkind: IPPool\nmetadata: {name: typo}\nspec: {cidr: 10.9.0.0/24, blockSize: big}\n";
    let error = failed(
        &reefctl(&endpoint, &["apply", "-f", "-"], Some(wrong_type)),
        6,
    )
    .to_string();
    assert!(error.contains("spec.blockSize"), "{error}");
    failed(&reefctl(&endpoint, &["get", "ippool", "bad"], None), 3);

    // Delete, then it is gone (exit 3), unless not-found is ignored.
    let out = ok(&reefctl(&endpoint, &["delete", "-f", file], None)).to_string();
    assert!(out.contains("bgppeer rack1-tor deleted"), "{out}");
    let error = failed(
        &reefctl(&endpoint, &["get", "bgppeer", "rack1-tor"], None),
        3,
    )
    .to_string();
    assert!(error.contains("reefctl get bgppeers"), "{error}");
    failed(&reefctl(&endpoint, &["delete", "ippool", "pods"], None), 3);
    ok(&reefctl(
        &endpoint,
        &["delete", "ippool", "pods", "--ignore-not-found"],
        None,
    ));
    assert_eq!(
        ok(&reefctl(&endpoint, &["get", "ippools"], None)),
        "no resources found\n"
    );
}

#[test]
fn exit_codes_and_one_line_errors_without_a_datastore() {
    // Port 9 (discard) has no etcd: unreachable, exit 4, one line naming the endpoint.
    let nowhere = "http://127.0.0.1:9";
    let error = failed(&reefctl(nowhere, &["get", "ippools"], None), 4).to_string();
    assert!(error.contains("127.0.0.1:9"), "{error}");
    let error = failed(
        &reefctl(
            nowhere,
            &["bgp", "status", "--socket", "/nonexistent/reefd.sock"],
            None,
        ),
        4,
    )
    .to_string();
    assert!(
        error.contains("cannot reach reefd at /nonexistent/reefd.sock"),
        "{error}"
    );
    failed(
        &reefctl(
            nowhere,
            &["node", "status", "--socket", "/nonexistent/reefd.sock"],
            None,
        ),
        4,
    );
    // Usage errors are clap's exit code 2.
    assert_eq!(reefctl(nowhere, &["get"], None).code, 2);
    let error = failed(&reefctl(nowhere, &["get", "frobnicators"], None), 2).to_string();
    assert!(error.contains("use one of BGPConfiguration"), "{error}");
    // A file that is not there: not found; a wrong apiVersion: invalid, with the fix.
    failed(
        &reefctl(nowhere, &["apply", "-f", "/nonexistent.yaml"], None),
        3,
    );
    let calico = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/24}\n";
    let error = failed(&reefctl(nowhere, &["apply", "-f", "-"], Some(calico)), 6).to_string();
    assert!(error.contains("expected reef.dev/v1"), "{error}");
}

#[test]
fn completion_scripts_name_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = ok(&reefctl("", &["completion", shell], None)).to_string();
        for word in ["reefctl", "apply", "get", "node", "ipam"] {
            assert!(out.contains(word), "{shell} completion lacks {word}");
        }
    }
    assert_eq!(reefctl("", &["completion", "tcsh"], None).code, 2);
}
