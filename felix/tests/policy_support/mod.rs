//! Test support for the policy tests: two nodes and an "internet" namespace, pods wired as reef-cni wires
//! them, echo servers inside the pods (threads that entered the pod's namespace), and probes.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use reef_crds::workload::{HOST_INTERFACE_MAC, POD_GATEWAY_V4, host_interface_name};
use reef_felix::policy::{Endpoint, NamedPort};
use reef_lab::{Link, Netns, veth};

/// Ports every pod's echo servers listen on (TCP and UDP).
pub const SERVER_PORTS: [u16; 3] = [80, 81, 82];

/// The "internet" address, outside every pool.
pub const INTERNET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// Node A's address towards the internet.
pub const NODE_A_UPLINK: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

/// Runs `f` on a thread that entered the network namespace `name`.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns(2) with a valid namespace fd; it changes only this thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// TCP and UDP servers in a namespace that answer with the address they see the client as.
pub struct EchoServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServers {
    pub fn start(netns: &str) -> EchoServers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for port in SERVER_PORTS {
            let flag = stop.clone();
            threads.push(in_netns(netns, move || {
                let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind tcp");
                listener.set_nonblocking(true).expect("nonblocking");
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, peer)) => {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.write_all(peer.ip().to_string().as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            }));
            let flag = stop.clone();
            threads.push(in_netns(netns, move || {
                let socket = UdpSocket::bind(("0.0.0.0", port)).expect("bind udp");
                socket
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .expect("timeout");
                let mut buf = [0u8; 64];
                while !flag.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(peer.ip().to_string().as_bytes(), peer);
                    }
                }
            }));
        }
        EchoServers { stop, threads }
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// TCP or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

/// Probes `target:port` from namespace `netns`; returns the address the far end saw, or `None`.
/// UDP probes use `source_port` (0: any), so a probe never rides on an earlier probe's conntrack entry.
pub fn probe_from(
    netns: &str,
    target: IpAddr,
    port: u16,
    proto: Proto,
    timeout: Duration,
    source_port: u16,
) -> JoinHandle<Option<String>> {
    in_netns(netns, move || {
        let address = SocketAddr::new(target, port);
        match proto {
            Proto::Tcp => {
                let mut stream = TcpStream::connect_timeout(&address, timeout).ok()?;
                stream.set_read_timeout(Some(timeout)).ok()?;
                let mut seen = String::new();
                stream.read_to_string(&mut seen).ok()?;
                Some(seen)
            }
            Proto::Udp => {
                let socket = UdpSocket::bind(("0.0.0.0", source_port)).ok()?;
                socket.set_read_timeout(Some(timeout)).ok()?;
                socket.send_to(b"probe", address).ok()?;
                let mut buf = [0u8; 64];
                let (n, _) = socket.recv_from(&mut buf).ok()?;
                Some(String::from_utf8_lossy(&buf[..n]).into_owned())
            }
        }
    })
}

/// A pod: its namespace, Kubernetes namespace and name, address, labels, node, host interface.
pub struct Pod {
    pub netns: Netns,
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<NamedPort>,
    pub node: usize,
    pub host_interface: String,
}

impl Pod {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The pod as a policy endpoint (local when `node` is its node).
    pub fn endpoint(&self, node: usize) -> Endpoint {
        Endpoint {
            key: self.id(),
            namespace: Some(self.namespace.clone()),
            labels: self.labels.clone(),
            addresses: vec![IpAddr::V4(self.ip)],
            service_account: Some("default".into()),
            ports: self.ports.clone(),
            interface: (self.node == node).then(|| self.host_interface.clone()),
            ..Endpoint::default()
        }
    }
}

/// Wires a pod namespace to a node namespace the way reef-cni does (host veth `reef<hash>` with MAC
/// ee:ee:ee:ee:ee:ee and proxy ARP, pod `eth0` with a /32 and a default route via 169.254.1.1, host
/// route `<ip>/32 dev reef<hash>`). Private stand-in for `reef_lab::pod`, which the integrator swaps in.
pub fn wire_pod_like_reef_cni(
    node: &Netns,
    pod: &Netns,
    namespace: &str,
    name: &str,
    ip: Ipv4Addr,
) -> String {
    let host = host_interface_name(Some((namespace, name)), "");
    let ip32 = format!("{ip}/32");
    let gateway = POD_GATEWAY_V4.to_string();
    node.ip(&[
        "link",
        "add",
        &host,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ])
    .unwrap();
    node.ip(&["link", "set", &host, "address", HOST_INTERFACE_MAC])
        .unwrap();
    node.sysctl(&format!("net.ipv4.conf.{host}.proxy_arp"), "1")
        .unwrap();
    node.sysctl(&format!("net.ipv4.neigh.{host}.proxy_delay"), "0")
        .unwrap();
    node.ip(&["link", "set", &host, "up"]).unwrap();
    pod.ip(&["addr", "add", &ip32, "dev", "eth0"]).unwrap();
    pod.ip(&["link", "set", "eth0", "up"]).unwrap();
    pod.ip(&["route", "add", &gateway, "dev", "eth0", "scope", "link"])
        .unwrap();
    pod.ip(&["route", "add", "default", "via", &gateway, "dev", "eth0"])
        .unwrap();
    node.ip(&["route", "add", &ip32, "dev", &host]).unwrap();
    host
}

/// Two nodes joined by a veth link, node A also linked to an "internet" namespace (203.0.113.0/24),
/// pods on both nodes. Pod addresses 10.244.<node+1>.<n>.
pub struct Cluster {
    // Declared first: the servers stop before their namespaces go.
    servers: Vec<EchoServers>,
    pub nodes: [Netns; 2],
    pub internet: Netns,
    /// Node A (`a` end) to node B (`b` end).
    pub link: Link,
    pub pods: Vec<Pod>,
}

/// (namespace, name, node, labels, named ports) of a pod to create.
pub type PodSpec<'a> = (
    &'a str,
    &'a str,
    usize,
    &'a [(&'a str, &'a str)],
    Vec<NamedPort>,
);

impl Cluster {
    pub fn new(tag: &str, specs: Vec<PodSpec>) -> Cluster {
        reef_lab::require_root();
        let nodes = [
            Netns::new(&format!("{tag}a")).unwrap(),
            Netns::new(&format!("{tag}b")).unwrap(),
        ];
        let internet = Netns::new(&format!("{tag}i")).unwrap();
        for node in &nodes {
            node.enable_forwarding().unwrap();
        }
        let link = veth(&nodes[0], &nodes[1]).unwrap();
        nodes[0]
            .ip(&[
                "route",
                "add",
                "10.244.2.0/24",
                "via",
                &link.b.v4.to_string(),
            ])
            .unwrap();
        nodes[1]
            .ip(&[
                "route",
                "add",
                "10.244.1.0/24",
                "via",
                &link.a.v4.to_string(),
            ])
            .unwrap();
        nodes[1]
            .ip(&["route", "add", "default", "via", &link.a.v4.to_string()])
            .unwrap();
        nodes[0]
            .ip(&[
                "link",
                "add",
                "uplink",
                "type",
                "veth",
                "peer",
                "name",
                "uplink",
                "netns",
                internet.name(),
            ])
            .unwrap();
        nodes[0]
            .ip(&[
                "addr",
                "add",
                &format!("{NODE_A_UPLINK}/24"),
                "dev",
                "uplink",
            ])
            .unwrap();
        nodes[0].ip(&["link", "set", "uplink", "up"]).unwrap();
        internet
            .ip(&["addr", "add", &format!("{INTERNET}/24"), "dev", "uplink"])
            .unwrap();
        internet.ip(&["link", "set", "uplink", "up"]).unwrap();
        internet
            .ip(&["route", "add", "default", "via", &NODE_A_UPLINK.to_string()])
            .unwrap();
        // Proxy ARP answers for 169.254.1.1 only when the node has a route to it: the default route.
        nodes[0]
            .ip(&["route", "add", "default", "via", &INTERNET.to_string()])
            .unwrap();
        let mut pods = Vec::new();
        let mut counts = [0u8; 2];
        for (namespace, name, node, labels, ports) in specs {
            counts[node] += 1;
            let ip = Ipv4Addr::new(10, 244, node as u8 + 1, counts[node]);
            let netns = Netns::new(&format!("{tag}p")).unwrap();
            let host_interface = wire_pod_like_reef_cni(&nodes[node], &netns, namespace, name, ip);
            pods.push(Pod {
                netns,
                namespace: namespace.into(),
                name: name.into(),
                ip,
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ports,
                node,
                host_interface,
            });
        }
        let mut servers: Vec<EchoServers> = pods
            .iter()
            .map(|p| EchoServers::start(p.netns.name()))
            .collect();
        servers.push(EchoServers::start(internet.name()));
        Cluster {
            nodes,
            internet,
            link,
            pods,
            servers,
        }
    }
}
