//! Network policy with real traffic: two nodes (namespaces) with six pods in two Kubernetes namespaces
//! and an "internet" namespace; every case loads policies into both nodes' dataplanes and probes every
//! pod pair (and pod -> internet) with TCP and UDP, comparing the whole matrix with the expected one.
//! Both backends run the same table. natOutgoing, incremental label changes and drift repair are
//! checked on the same topology.

mod policy_support;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use policy_support::{Cluster, INTERNET, NODE_A_UPLINK, PodSpec, Proto};
use reef_crds::{GlobalNetworkPolicy, IPPool, NetworkPolicy};
use reef_felix::policy::{
    BackendKind, Changes, K8sNetworkPolicy, NamedPort, PolicyDataplane, PolicyEngine, PolicyInput,
    PolicyProblem, Retry, Runner,
};
use serde_json::{Value, json};

/// Who is at one end of a probe.
#[derive(Clone, Debug)]
struct Who {
    id: String,
    ns: String,
    labels: BTreeMap<String, String>,
    node: usize,
    internet: bool,
    ip: IpAddr,
}

impl Who {
    fn is(&self, id: &str) -> bool {
        self.id == id
    }
    fn app(&self) -> &str {
        self.labels.get("app").map_or("", String::as_str)
    }
    fn in_ns(&self, ns: &str) -> bool {
        !self.internet && self.ns == ns
    }
}

type Expect = Box<dyn Fn(&Who, &Who, Proto) -> bool>;

struct Case {
    name: &'static str,
    port: u16,
    k8s: Vec<K8sNetworkPolicy>,
    reef: Vec<NetworkPolicy>,
    global: Vec<GlobalNetworkPolicy>,
    expect: Expect,
}

fn knp(ns: &str, name: &str, spec: Value) -> K8sNetworkPolicy {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    }))
    .unwrap()
}

fn np(ns: &str, name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({
        "apiVersion": "reef.dev/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    }))
    .unwrap()
}

fn gnp(name: &str, spec: Value) -> GlobalNetworkPolicy {
    serde_json::from_value(json!({
        "apiVersion": "reef.dev/v1", "kind": "GlobalNetworkPolicy",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

fn pool(nat: bool) -> IPPool {
    serde_json::from_value(json!({
        "apiVersion": "reef.dev/v1", "kind": "IPPool",
        "metadata": {"name": "pods"}, "spec": {"cidr": "10.244.0.0/16", "natOutgoing": nat}
    }))
    .unwrap()
}

fn case(
    name: &'static str,
    port: u16,
    expect: impl Fn(&Who, &Who, Proto) -> bool + 'static,
) -> Case {
    Case {
        name,
        port,
        k8s: Vec::new(),
        reef: Vec::new(),
        global: Vec::new(),
        expect: Box::new(expect),
    }
}

impl Case {
    fn k8s(mut self, p: K8sNetworkPolicy) -> Case {
        self.k8s.push(p);
        self
    }
    fn reef(mut self, p: NetworkPolicy) -> Case {
        self.reef.push(p);
        self
    }
    fn global(mut self, p: GlobalNetworkPolicy) -> Case {
        self.global.push(p);
        self
    }
}

fn port(name: &str, protocol: u8, port: u16) -> NamedPort {
    NamedPort {
        name: name.into(),
        protocol,
        port,
    }
}

/// x/a and x/c both name a TCP port `serve`, on different numbers (81 and 82).
fn pods() -> Vec<PodSpec<'static>> {
    vec![
        (
            "x",
            "a",
            0,
            &[("app", "web"), ("tier", "fe")],
            vec![port("serve", 6, 81), port("serve-udp", 17, 81)],
        ),
        ("x", "b", 0, &[("app", "db")], vec![]),
        ("x", "c", 1, &[("app", "web")], vec![port("serve", 6, 82)]),
        ("y", "a", 0, &[("app", "web")], vec![]),
        ("y", "b", 1, &[("app", "db")], vec![]),
        ("y", "c", 1, &[("app", "client")], vec![]),
    ]
}

fn namespaces() -> BTreeMap<String, BTreeMap<String, String>> {
    let labels = |team: &str, name: &str| {
        BTreeMap::from([
            ("team".to_string(), team.to_string()),
            ("kubernetes.io/metadata.name".to_string(), name.to_string()),
        ])
    };
    BTreeMap::from([
        ("x".to_string(), labels("blue", "x")),
        ("y".to_string(), labels("red", "y")),
    ])
}

fn deny_ingress(ns: &str) -> K8sNetworkPolicy {
    knp(
        ns,
        "deny-ingress",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )
}

fn cases() -> Vec<Case> {
    let isolated_x = |d: &Who| d.in_ns("x");
    vec![
        case("no policy: everything allowed", 80, |_, _, _| true),
        case("default deny ingress in x", 80, move |_, d, _| !isolated_x(d)).k8s(deny_ingress("x")),
        case("default deny egress in x", 80, |s, _, _| !s.in_ns("x"))
            .k8s(knp("x", "deny-egress", json!({"podSelector": {}, "policyTypes": ["Egress"]}))),
        case("default deny ingress and egress in x", 80, |s, d, _| !s.in_ns("x") && !d.in_ns("x")).k8s(knp(
            "x",
            "deny-all",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        )),
        case("allow all ingress beside default deny", 80, |_, _, _| true)
            .k8s(deny_ingress("x"))
            .k8s(knp("x", "allow-all", json!({"podSelector": {}, "ingress": [{}]}))),
        case("allow by pod label (same namespace)", 80, |s, d, _| {
            !(d.in_ns("x") && d.app() == "web") || s.is("x/b")
        })
        .k8s(knp("x", "web-from-db", json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "db"}}}]}]
        }))),
        case("allow by namespace label", 80, |s, d, _| !d.in_ns("x") || s.in_ns("y")).k8s(knp(
            "x",
            "from-red",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "red"}}}]}]}),
        )),
        case("namespace and pod selector in one peer", 80, |s, d, _| !d.in_ns("x") || s.is("y/b")).k8s(knp(
            "x",
            "from-red-db",
            json!({"podSelector": {}, "ingress": [{"from": [{
                "namespaceSelector": {"matchLabels": {"team": "red"}},
                "podSelector": {"matchLabels": {"app": "db"}}}]}]}),
        )),
        case("namespace and pod selector in two peers", 80, |s, d, _| {
            !d.in_ns("x") || s.in_ns("y") || s.is("x/b")
        })
        .k8s(knp("x", "from-red-or-db", json!({"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"team": "red"}}},
            {"podSelector": {"matchLabels": {"app": "db"}}}]}]}))),
        case("empty namespace selector: all namespaces", 80, |_, _, _| true).k8s(knp(
            "x",
            "from-all-ns",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
        )),
        case("ipBlock with except", 80, |s, d, _| !d.in_ns("x") || s.node == 0).k8s(knp(
            "x",
            "from-node-a",
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.2.0/24"]}}]}]}),
        )),
        case("ingress TCP 80 only", 80, |_, d, p| !d.in_ns("x") || p == Proto::Tcp).k8s(knp(
            "x",
            "tcp-80",
            json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "TCP", "port": 80}]}]}),
        )),
        case("ingress UDP 80 only", 80, |_, d, p| !d.in_ns("x") || p == Proto::Udp).k8s(knp(
            "x",
            "udp-80",
            json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP", "port": 80}]}]}),
        )),
        case("named port resolves per pod (probe 81)", 81, |_, d, p| {
            !d.in_ns("x") || (d.is("x/a") && p == Proto::Tcp)
        })
        .k8s(knp("x", "serve", json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve"}]}]}))),
        case("named port resolves per pod (probe 82)", 82, |_, d, p| {
            !d.in_ns("x") || (d.is("x/c") && p == Proto::Tcp)
        })
        .k8s(knp("x", "serve", json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve"}]}]}))),
        case("named UDP port", 81, |_, d, p| !d.in_ns("x") || (d.is("x/a") && p == Proto::Udp)).k8s(knp(
            "x",
            "serve-udp",
            json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP", "port": "serve-udp"}]}]}),
        )),
        case("port range with endPort (probe 81)", 81, |_, d, p| !d.in_ns("x") || p == Proto::Tcp).k8s(knp(
            "x",
            "range",
            json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "TCP", "port": 80, "endPort": 81}]}]}),
        )),
        case("port range excludes the probe (80 vs 81-82)", 80, |_, d, _| !d.in_ns("x")).k8s(knp(
            "x",
            "range",
            json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "TCP", "port": 81, "endPort": 82}]}]}),
        )),
        case("egress to a CIDR only", 80, |s, d, _| !s.in_ns("x") || d.internet).k8s(knp(
            "x",
            "to-internet",
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}]}),
        )),
        case("egress to a namespace only", 80, |s, d, _| !s.in_ns("x") || d.in_ns("y")).k8s(knp(
            "x",
            "to-red",
            json!({"podSelector": {}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "red"}}}]}]}),
        )),
        case("egress UDP only", 80, |s, _, p| !s.in_ns("x") || p == Proto::Udp).k8s(knp(
            "x",
            "udp-out",
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"protocol": "UDP"}]}]}),
        )),
        case("egress rules imply both types", 80, |s, d, _| {
            let web = |w: &Who| w.in_ns("x") && w.app() == "web";
            !web(d) && (!web(s) || d.is("x/b"))
        })
        .k8s(knp("x", "web", json!({"podSelector": {"matchLabels": {"app": "web"}},
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}]}]}))),
        case("policies add up", 80, |s, d, _| !(d.in_ns("x") && d.app() == "web") || s.is("x/b") || s.in_ns("y"))
            .k8s(knp("x", "web-from-db", json!({"podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "db"}}}]}]})))
            .k8s(knp("x", "web-from-red", json!({"podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "red"}}}]}]}))),
        case("only selected pods are isolated", 80, |_, d, _| !d.is("x/b")).k8s(knp(
            "x",
            "db",
            json!({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"]}),
        )),
        case("matchExpressions In", 80, |_, d, _| !(d.is("y/a") || d.is("y/c"))).k8s(knp(
            "y",
            "in",
            json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "client"]}]},
                   "policyTypes": ["Ingress"]}),
        )),
        case("matchExpressions DoesNotExist", 80, |_, d, _| !(d.is("x/b") || d.is("x/c"))).k8s(knp(
            "x",
            "no-tier",
            json!({"podSelector": {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]},
                   "policyTypes": ["Ingress"]}),
        )),
        case("SCTP only: TCP and UDP isolated", 80, |_, d, _| !d.in_ns("x")).k8s(knp(
            "x",
            "sctp",
            json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "SCTP", "port": 80}]}]}),
        )),
        case("global Deny by namespace, then Allow", 80, |s, d, _| d.internet || !s.in_ns("y")).global(gnp(
            "deny-red",
            json!({"order": 10, "selector": "all()", "types": ["Ingress"], "ingress": [
                {"action": "Deny", "source": {"namespaceSelector": "team == 'red'"}},
                {"action": "Allow"}]}),
        )),
        case("global Pass skips the later Deny", 80, |s, d, _| d.internet || s.app() == "db")
            .global(gnp("pass-db", json!({"order": 10, "selector": "all()", "ingress": [
                {"action": "Pass", "source": {"selector": "app == 'db'"}}]})))
            .global(gnp("deny", json!({"order": 20, "selector": "all()", "ingress": [{"action": "Deny"}]}))),
        case("global order: lower first (Deny at 5 wins)", 80, |_, d, _| d.internet)
            .global(gnp("allow-client", json!({"order": 10, "selector": "all()", "ingress": [
                {"action": "Allow", "source": {"selector": "app == 'client'"}}]})))
            .global(gnp("deny", json!({"order": 5, "selector": "all()", "ingress": [{"action": "Deny"}]}))),
        case("global order: lower first (Allow at 5 wins)", 80, |s, d, _| d.internet || s.app() == "client")
            .global(gnp("allow-client", json!({"order": 5, "selector": "all()", "ingress": [
                {"action": "Allow", "source": {"selector": "app == 'client'"}}]})))
            .global(gnp("deny", json!({"order": 10, "selector": "all()", "ingress": [{"action": "Deny"}]}))),
        case("Pass skips Kubernetes policies of the tier", 80, |_, _, _| true)
            .global(gnp("pass-x", json!({"order": 10, "selector": "all()", "namespaceSelector": "team == 'blue'",
                "ingress": [{"action": "Pass"}]})))
            .k8s(deny_ingress("x")),
        case("Log then Allow by label", 80, |s, d, _| d.internet || s.app() == "web").global(gnp(
            "log",
            json!({"order": 10, "selector": "all()", "ingress": [
                {"action": "Log"}, {"action": "Allow", "source": {"selector": "app == 'web'"}}]}),
        )),
        case("Reef NetworkPolicy: same-namespace selector", 80, |s, d, _| !d.is("y/b") || s.is("y/c")).reef(np(
            "y",
            "db-from-client",
            json!({"selector": "app == 'db'", "ingress": [{"action": "Allow", "source": {"selector": "app == 'client'"}}]}),
        )),
        case("Reef NetworkPolicy: namespaceSelector", 80, |s, d, _| !d.in_ns("y") || s.in_ns("x")).reef(np(
            "y",
            "from-blue",
            json!({"selector": "all()", "ingress": [{"action": "Allow", "source": {"namespaceSelector": "team == 'blue'"}}]}),
        )),
        case("Reef notNets", 80, |s, d, _| d.internet || s.node == 0).global(gnp(
            "not-node-b",
            json!({"selector": "all()", "ingress": [{"action": "Allow", "source": {"notNets": ["10.244.2.0/24"]}}]}),
        )),
        case("Reef protocol with notPorts", 80, |_, d, p| d.internet || p == Proto::Udp).global(gnp(
            "udp-not-81",
            json!({"selector": "all()", "ingress": [{"action": "Allow", "protocol": "UDP", "destination": {"notPorts": [81]}}]}),
        )),
        case("Reef egress Deny to nets", 80, |_, d, _| !d.internet).global(gnp(
            "no-internet",
            json!({"selector": "all()", "types": ["Egress"], "egress": [
                {"action": "Deny", "destination": {"nets": ["203.0.113.0/24"]}}, {"action": "Allow"}]}),
        )),
        case("serviceAccountSelector", 80, |_, d, _| d.internet || d.ns == "y").global(gnp(
            "sa",
            json!({"selector": "all()", "namespaceSelector": "team == 'blue'",
                   "serviceAccountSelector": "reef.dev/name == 'default'", "ingress": [{"action": "Deny"}]}),
        )),
        case("a bad policy changes nothing for others", 80, move |_, d, _| !isolated_x(d))
            .k8s(deny_ingress("x"))
            .reef(np("y", "broken", json!({"selector": "app == ", "ingress": [{"action": "Deny"}]}))),
    ]
}

/// Unique UDP source ports, so no probe meets a conntrack entry of an earlier case.
static NEXT_PORT: AtomicU16 = AtomicU16::new(20000);

struct Probe {
    src: Who,
    dst: Who,
    proto: Proto,
}

fn everyone(cluster: &Cluster) -> (Vec<Who>, Vec<Who>) {
    let sources: Vec<Who> = cluster
        .pods
        .iter()
        .map(|p| Who {
            id: p.id(),
            ns: p.namespace.clone(),
            labels: p.labels.clone(),
            node: p.node,
            internet: false,
            ip: IpAddr::V4(p.ip),
        })
        .collect();
    let mut destinations = sources.clone();
    destinations.push(Who {
        id: "internet".into(),
        ns: String::new(),
        labels: BTreeMap::new(),
        node: 0,
        internet: true,
        ip: IpAddr::V4(INTERNET),
    });
    (sources, destinations)
}

/// Probes `probes` in parallel; returns what each far end saw (None: blocked).
fn run_probes(
    cluster: &Cluster,
    probes: &[Probe],
    port: u16,
    timeout: Duration,
) -> Vec<Option<String>> {
    let handles: Vec<_> = probes
        .iter()
        .map(|probe| {
            let pod = cluster
                .pods
                .iter()
                .find(|p| p.id() == probe.src.id)
                .unwrap();
            let source_port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
            policy_support::probe_from(
                pod.netns.name(),
                probe.dst.ip,
                port,
                probe.proto,
                timeout,
                source_port,
            )
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Probes every pair; returns the mismatches with the expectation, after one retry of each mismatch.
fn check_matrix(cluster: &Cluster, case: &Case) -> Vec<String> {
    let (sources, destinations) = everyone(cluster);
    let mut probes = Vec::new();
    for src in &sources {
        for dst in destinations.iter().filter(|d| d.id != src.id) {
            for proto in [Proto::Tcp, Proto::Udp] {
                probes.push(Probe {
                    src: src.clone(),
                    dst: dst.clone(),
                    proto,
                });
            }
        }
    }
    let seen = run_probes(cluster, &probes, case.port, Duration::from_millis(400));
    let mismatched: Vec<Probe> = probes
        .into_iter()
        .zip(seen)
        .filter(|(p, seen)| (case.expect)(&p.src, &p.dst, p.proto) != seen.is_some())
        .map(|(p, _)| p)
        .collect();
    if mismatched.is_empty() {
        return Vec::new();
    }
    // A loaded machine can delay an allowed probe: look again, longer, before calling it a failure.
    let seen = run_probes(cluster, &mismatched, case.port, Duration::from_secs(2));
    mismatched
        .iter()
        .zip(seen)
        .filter(|(p, seen)| (case.expect)(&p.src, &p.dst, p.proto) != seen.is_some())
        .map(|(p, seen)| {
            format!(
                "{}: {} -> {} {:?}/{}: expected {}, got {}",
                case.name,
                p.src.id,
                p.dst.id,
                p.proto,
                case.port,
                if (case.expect)(&p.src, &p.dst, p.proto) {
                    "allowed"
                } else {
                    "blocked"
                },
                if seen.is_some() { "allowed" } else { "blocked" }
            )
        })
        .collect()
}

/// The policy engines and dataplanes of both nodes.
struct Nodes {
    engines: Vec<PolicyEngine>,
    dataplanes: Vec<PolicyDataplane>,
}

impl Nodes {
    fn new(cluster: &Cluster, kind: BackendKind, nat: bool) -> Nodes {
        let mut engines = Vec::new();
        let mut dataplanes = Vec::new();
        for (n, node) in cluster.nodes.iter().enumerate() {
            let input = PolicyInput {
                endpoints: cluster.pods.iter().map(|p| p.endpoint(n)).collect(),
                namespaces: namespaces(),
                pools: vec![pool(nat)],
                ..PolicyInput::default()
            };
            engines.push(PolicyEngine::new(input));
            dataplanes.push(PolicyDataplane::new(kind, Runner::in_netns(node.name())));
        }
        let mut nodes = Nodes {
            engines,
            dataplanes,
        };
        nodes.apply();
        nodes
    }

    fn apply(&mut self) {
        for (engine, dataplane) in self.engines.iter_mut().zip(&mut self.dataplanes) {
            let changes = engine.take_changes();
            dataplane.apply(engine.program(), &changes).unwrap();
        }
    }

    fn load(&mut self, case: &Case) {
        for engine in &mut self.engines {
            engine.set_policies(case.reef.clone(), case.global.clone(), case.k8s.clone());
        }
        self.apply();
    }
}

fn truth_table(kind: BackendKind, tag: &str) {
    let cluster = Cluster::new(tag, pods());
    let mut nodes = Nodes::new(&cluster, kind, true);
    let mut failures = Vec::new();
    let all = cases();
    assert!(all.len() >= 30);
    for case in &all {
        nodes.load(case);
        failures.extend(check_matrix(&cluster, case));
    }
    // The bad object is reported, with its reason, and the rest stayed enforced (checked above).
    let last = &all[all.len() - 1];
    nodes.load(last);
    let errors = &nodes.engines[0].program().errors;
    assert!(
        errors
            .iter()
            .any(|e| matches!(e.problem, PolicyProblem::BadPolicySelector { .. })),
        "{errors:?}"
    );
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );

    label_change_is_incremental(&cluster, &mut nodes);
    drift_is_repaired(&cluster, &mut nodes, kind);
    for dataplane in &mut nodes.dataplanes {
        dataplane.remove().unwrap();
    }
}

/// x/b loses its `app=db` label: a web-from-db policy stops admitting it, through set elements only.
fn label_change_is_incremental(cluster: &Cluster, nodes: &mut Nodes) {
    let web_from_db = &cases()[5];
    nodes.load(web_from_db);
    let x_b = cluster.pods.iter().find(|p| p.id() == "x/b").unwrap();
    for (n, (engine, dataplane)) in nodes
        .engines
        .iter_mut()
        .zip(&mut nodes.dataplanes)
        .enumerate()
    {
        let mut endpoint = x_b.endpoint(n);
        endpoint.labels.insert("app".into(), "cache".into());
        engine.upsert_endpoint(endpoint);
        let changes = engine.take_changes();
        assert!(!changes.all && !changes.sets.is_empty(), "{changes:?}");
        let operations = dataplane.apply(engine.program(), &changes).unwrap();
        assert!(
            operations > 0 && operations < 10,
            "{operations} operations for one label"
        );
    }
    let relabelled = case("x/b relabelled: no longer admitted", 80, |_, d, _| {
        !(d.in_ns("x") && d.app() == "web")
    });
    let failures = check_matrix(cluster, &relabelled);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for (n, engine) in nodes.engines.iter_mut().enumerate() {
        engine.upsert_endpoint(x_b.endpoint(n));
    }
    nodes.apply();
    let failures = check_matrix(cluster, web_from_db);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Deleting a set element, then a chain's rules, by hand opens or closes traffic; a resync repairs each
/// and leaves a foreign table alone.
fn drift_is_repaired(cluster: &Cluster, nodes: &mut Nodes, kind: BackendKind) {
    let web_from_db = &cases()[5];
    nodes.load(web_from_db);
    let node = &cluster.nodes[0];
    let x_b = cluster.pods.iter().find(|p| p.id() == "x/b").unwrap().ip;
    let set = nodes.engines[0]
        .program()
        .sets
        .iter()
        .find(|(_, s)| {
            s.members.contains_key(&ipnet::IpNet::from(IpAddr::V4(x_b))) && s.members.len() == 1
        })
        .map(|(name, _)| name.clone())
        .unwrap();
    match kind {
        BackendKind::Nftables => {
            node.exec(&["nft", "add", "table", "inet", "foreign"])
                .unwrap();
            node.exec(&["nft", "add", "chain", "inet", "foreign", "keep"])
                .unwrap();
            let element = format!("{{ {x_b} }}");
            node.exec(&[
                "nft",
                "delete",
                "element",
                "inet",
                "reef",
                &format!("{set}-4"),
                &element,
            ])
            .unwrap();
        }
        BackendKind::Iptables => {
            node.exec(&["iptables", "-N", "foreign-keep"]).unwrap();
            node.exec(&["ipset", "del", &format!("reef-{set}-4"), &x_b.to_string()])
                .unwrap();
        }
    }
    let broken = case("drift: x/b lost from the set on node a", 80, |s, d, _| {
        !(d.in_ns("x") && d.app() == "web") || (s.is("x/b") && !d.is("x/a"))
    });
    let failures = check_matrix(cluster, &broken);
    assert!(
        failures.is_empty(),
        "the hand edit did not take: {}",
        failures.join("\n")
    );
    resync_repairs(cluster, nodes, web_from_db);

    match kind {
        BackendKind::Nftables => node
            .exec(&["nft", "flush", "chain", "inet", "reef", "to-endpoint"])
            .unwrap(),
        BackendKind::Iptables => node.exec(&["iptables", "-F", "reef-to-endpoint"]).unwrap(),
    };
    let broken = case("drift: no ingress dispatch on node a", 80, |s, d, _| {
        !(d.in_ns("x") && d.app() == "web" && d.node == 1) || s.is("x/b")
    });
    let failures = check_matrix(cluster, &broken);
    assert!(
        failures.is_empty(),
        "the hand edit did not take: {}",
        failures.join("\n")
    );
    resync_repairs(cluster, nodes, web_from_db);
    match kind {
        BackendKind::Nftables => node
            .exec(&["nft", "list", "chain", "inet", "foreign", "keep"])
            .unwrap(),
        BackendKind::Iptables => node.exec(&["iptables", "-L", "foreign-keep"]).unwrap(),
    };
}

fn resync_repairs(cluster: &Cluster, nodes: &mut Nodes, case: &Case) {
    let program = nodes.engines[0].program();
    let counters = nodes.dataplanes[0].counters();
    let repairs = counters.drift_repairs.load(Ordering::Relaxed);
    let repaired = nodes.dataplanes[0].resync(program).unwrap();
    assert!(repaired > 0, "resync found no drift");
    assert_eq!(counters.drift_repairs.load(Ordering::Relaxed), repairs + 1);
    assert_eq!(
        nodes.dataplanes[0].resync(program).unwrap(),
        0,
        "a second resync finds no drift"
    );
    let failures = check_matrix(cluster, case);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
#[ignore = "needs root: network namespaces, nftables"]
fn policy_truth_table_nftables() {
    truth_table(BackendKind::Nftables, "polnft");
}

#[test]
#[ignore = "needs root: network namespaces, iptables and ipset"]
fn policy_truth_table_iptables() {
    truth_table(BackendKind::Iptables, "polipt");
}

/// natOutgoing: pods reach the internet with their node's address (node B's pods leave through node A
/// already masqueraded by node B); pod-to-pod keeps the pod address; without natOutgoing the pod address
/// reaches the internet.
#[test]
#[ignore = "needs root: network namespaces, nftables"]
fn nat_outgoing_masquerades_only_leaving_traffic() {
    let cluster = Cluster::new("polnat", pods());
    let mut nodes = Nodes::new(&cluster, BackendKind::Nftables, true);
    let x_a = &cluster.pods[0];
    let x_c = &cluster.pods[2];
    let node_b = cluster.link.b.v4;
    for (pod, proto, node) in [
        (x_a, Proto::Tcp, NODE_A_UPLINK),
        (x_a, Proto::Udp, NODE_A_UPLINK),
        (x_c, Proto::Tcp, node_b),
        (x_c, Proto::Udp, node_b),
    ] {
        let seen = policy_support::probe_from(
            pod.netns.name(),
            IpAddr::V4(INTERNET),
            80,
            proto,
            Duration::from_secs(2),
            0,
        )
        .join()
        .unwrap();
        assert_eq!(seen, Some(node.to_string()), "{} {proto:?}", pod.id());
    }
    let seen = policy_support::probe_from(
        x_c.netns.name(),
        IpAddr::V4(x_a.ip),
        80,
        Proto::Tcp,
        Duration::from_secs(2),
        0,
    )
    .join()
    .unwrap();
    assert_eq!(seen, Some(x_c.ip.to_string()));
    for engine in &mut nodes.engines {
        engine.set_pools(vec![pool(false)]);
    }
    nodes.apply();
    let seen = policy_support::probe_from(
        x_a.netns.name(),
        IpAddr::V4(INTERNET),
        81,
        Proto::Tcp,
        Duration::from_secs(2),
        0,
    )
    .join()
    .unwrap();
    assert_eq!(
        seen,
        Some(x_a.ip.to_string()),
        "without natOutgoing the pod address leaves"
    );
}

/// A write that cannot succeed is retried with backoff, counted, and reported.
#[test]
fn failed_writes_are_retried_and_counted() {
    let runner = Runner::in_netns("reef-policy-no-such-namespace");
    let mut dataplane = PolicyDataplane::new(BackendKind::Nftables, runner).with_retry(Retry {
        attempts: 3,
        first_backoff: Duration::from_millis(1),
    });
    let engine = PolicyEngine::new(PolicyInput::default());
    let all = Changes {
        all: true,
        ..Changes::default()
    };
    assert!(dataplane.apply(engine.program(), &all).is_err());
    let counters = dataplane.counters();
    assert_eq!(counters.write_failures.load(Ordering::Relaxed), 3);
    assert_eq!(counters.writes.load(Ordering::Relaxed), 0);
}
