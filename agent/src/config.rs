//! The YAML config file of speaker mode (format in README.md). Field names follow Calico's
//! BGPConfiguration/BGPPeer where they exist.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use ipnet::IpNet;
use reef_bgp::driver::{PeerConfig, SpeakerConfig};
use reef_bgp::policy::MaxPrefix;
use reef_bgp::routing::{
    DEFAULT_SELECTION_DEFERRAL, GracefulRestartConfig, NextHopMode, PeerRouting, RoutingConfig,
};
use reef_crds::Validate;
use reef_crds::bgp::{BGPFilter, BGPFilterRule, BGPFilterSpec, BfdConfig};
use serde::Deserialize;

use crate::desired::{DesiredBgp, DesiredPeer, PeerKind};
use crate::filters::{self, AnyCommunity, parse_community};

/// The largest restart time the graceful restart capability can carry (12 bits, RFC 4724 §3).
const MAX_RESTART_TIME: u32 = 4095;
/// The ECMP set size when `maxPaths` is not given.
const DEFAULT_MAX_PATHS: usize = 8;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    pub router_id: Ipv4Addr,
    pub as_number: u32,
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub prefixes: Vec<IpNet>,
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// Set: reflect routes (RFC 4456) for the peers with `routeReflectorClient`.
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
    /// ECMP set size (1 = no multipath); 8 when unset.
    pub max_paths: Option<usize>,
    /// Learned routes equal to, covering or inside these are refused unless a filter accepts them.
    #[serde(default)]
    pub protected_prefixes: Vec<IpNet>,
    /// Absent: no graceful restart.
    pub graceful_restart: Option<GracefulRestart>,
    /// Absent: no kernel routes (speaker only).
    pub fib: Option<Fib>,
    /// Named BGPFilter specs, referenced from `peers[].filters`.
    #[serde(default)]
    pub filters: Vec<NamedFilter>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GracefulRestart {
    /// Seconds peers keep our routes while we restart (advertised); 120 when unset.
    pub restart_time: Option<u32>,
    /// Seconds a restarted peer's stale routes are kept at most; 360 when unset.
    pub stale_routes_time: Option<u64>,
    /// Seconds we wait at most for the peers' End-of-RIB before the first FIB sync; 30 when unset.
    pub selection_deferral_time: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fib {
    /// The kernel routing table; the main table (254) when unset.
    #[serde(default = "Fib::default_table")]
    pub table: u32,
}

impl Fib {
    fn default_table() -> u32 {
        reef_felix::fib::MAIN_TABLE
    }
}

/// A BGPFilter spec with its name (fields of Calico's BGPFilter `spec`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedFilter {
    pub name: String,
    #[serde(default, rename = "importV4")]
    pub import_v4: Vec<BGPFilterRule>,
    #[serde(default, rename = "exportV4")]
    pub export_v4: Vec<BGPFilterRule>,
    #[serde(default, rename = "importV6")]
    pub import_v6: Vec<BGPFilterRule>,
    #[serde(default, rename = "exportV6")]
    pub export_v6: Vec<BGPFilterRule>,
}

impl NamedFilter {
    fn spec(&self) -> BGPFilterSpec {
        BGPFilterSpec {
            import_v4: self.import_v4.clone(),
            export_v4: self.export_v4.clone(),
            import_v6: self.import_v6.clone(),
            export_v6: self.export_v6.clone(),
        }
    }
}

/// `peers[].nextHopMode`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum NextHopModeName {
    #[default]
    Auto,
    #[serde(rename = "Self")]
    SelfAddress,
    Keep,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaxPrefixes {
    /// More received prefixes than this (per family) end the session with Cease 6/1.
    pub limit: u32,
    /// Warn at this percentage of the limit; 75 when unset, 0 = no warning.
    pub warning_percent: Option<u8>,
    /// Seconds until the session is restarted; unset = stays down.
    pub restart_time: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listen {
    #[serde(default = "Listen::default_address")]
    pub address: IpAddr,
    #[serde(default = "Listen::default_port")]
    pub port: u16,
}

impl Listen {
    fn default_address() -> IpAddr {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
    fn default_port() -> u16 {
        179
    }
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            address: Listen::default_address(),
            port: Listen::default_port(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Admin {
    #[serde(default = "Admin::default_socket")]
    pub socket: PathBuf,
}

impl Admin {
    pub fn default_socket() -> PathBuf {
        PathBuf::from("/run/reef/reefd.sock")
    }
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            socket: Admin::default_socket(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    pub address: IpAddr,
    pub as_number: u32,
    pub port: Option<u16>,
    pub local_as_number: Option<u32>,
    pub password: Option<String>,
    pub hold_time: Option<u16>,
    pub keepalive_time: Option<u16>,
    #[serde(default)]
    pub passive: bool,
    pub source_address: Option<IpAddr>,
    pub ttl_security: Option<u8>,
    pub multihop: Option<u8>,
    pub connect_retry_time: Option<u64>,
    pub next_hop: Option<Ipv4Addr>,
    pub next_hop_v6: Option<Ipv6Addr>,
    #[serde(default)]
    pub route_reflector_client: bool,
    #[serde(default)]
    pub next_hop_mode: NextHopModeName,
    /// Names from the top-level `filters`, applied in order.
    #[serde(default)]
    pub filters: Vec<String>,
    /// Added to every route sent to this peer: `aa:nn` or `aa:nn:mm`.
    #[serde(default)]
    pub communities: Vec<String>,
    #[serde(default, rename = "numAllowedLocalASNumbers")]
    pub num_allowed_local_as_numbers: u8,
    pub max_prefixes: Option<MaxPrefixes>,
    /// Seconds: cap on how long this peer's routes are kept while it restarts.
    pub max_restart_time: Option<u64>,
    #[serde(default)]
    pub rfc8212: bool,
    pub bfd: Option<BfdConfig>,
}

impl Peer {
    /// The BFD settings when BFD is enabled for this peer.
    pub fn bfd_session(&self) -> Option<reef_bfd::SessionConfig> {
        crate::bfd::session_config(self.bfd.as_ref()?)
    }
}

/// Rejects prefixes with host bits set: "10.0.0.1/24" is almost always a typo for an address.
pub fn check_prefix(prefix: &IpNet) -> anyhow::Result<()> {
    if prefix.trunc() != *prefix {
        bail!(
            "prefix {prefix} has host bits set (did you mean {}?)",
            prefix.trunc()
        );
    }
    Ok(())
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let config: Config = serde_saphyr::from_str(&text)
            .with_context(|| format!("invalid config {}", path.display()))?;
        config
            .validate()
            .with_context(|| format!("invalid config {}", path.display()))?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        for prefix in &self.prefixes {
            check_prefix(prefix)?;
        }
        for prefix in &self.protected_prefixes {
            check_prefix(prefix).context("protectedPrefixes")?;
        }
        if self.max_paths == Some(0) {
            bail!("maxPaths must be at least 1 (1 = no multipath; default 8)");
        }
        if let Some(gr) = &self.graceful_restart
            && let Some(time) = gr.restart_time.filter(|t| *t > MAX_RESTART_TIME)
        {
            bail!(
                "gracefulRestart.restartTime {time} is too large: the capability carries at most {MAX_RESTART_TIME} seconds"
            );
        }
        if let Some(fib) = &self.fib
            && matches!(fib.table, 0 | 255)
        {
            bail!(
                "fib.table {} is not a table for routes (use 254 for main, or another table id 1..=252)",
                fib.table
            );
        }
        let filters = self.converted_filters()?;
        let mut seen = HashSet::new();
        for peer in &self.peers {
            if !seen.insert(peer.address) {
                bail!("peer {} is configured twice", peer.address);
            }
            self.validate_peer(peer, &filters)
                .with_context(|| format!("peer {}", peer.address))?;
        }
        Ok(())
    }

    fn validate_peer(
        &self,
        peer: &Peer,
        filters: &BTreeMap<&str, filters::Converted>,
    ) -> anyhow::Result<()> {
        if matches!(peer.hold_time, Some(1 | 2)) {
            bail!("holdTime must be 0 or at least 3 seconds");
        }
        if peer.ttl_security.is_some() && peer.multihop.is_some() {
            bail!("ttlSecurity and multihop exclude each other");
        }
        if let Some(key) = &peer.password
            && key.len() > reef_bgp::driver::socket::MD5_MAX_KEY_LEN
        {
            bail!("password longer than 80 bytes");
        }
        if peer.route_reflector_client && self.route_reflector_cluster_id.is_none() {
            bail!(
                "routeReflectorClient needs routeReflectorClusterId at the top level (e.g. routeReflectorClusterId: {})",
                self.router_id
            );
        }
        for name in &peer.filters {
            if !filters.contains_key(name.as_str()) {
                bail!(
                    "filter {name:?} is not defined: add it to the top-level filters list (- name: {name}) or remove it from this peer's filters"
                );
            }
        }
        for (n, text) in peer.communities.iter().enumerate() {
            parse_community(text).with_context(|| format!("communities[{n}]"))?;
        }
        if let Some(max) = &peer.max_prefixes {
            if max.limit == 0 {
                bail!("maxPrefixes.limit must be at least 1 (omit maxPrefixes for no limit)");
            }
            if max.warning_percent.is_some_and(|p| p > 100) {
                bail!("maxPrefixes.warningPercent must be 0..=100 (0 = no warning)");
            }
        }
        if let Some(bfd) = &peer.bfd {
            if bfd.multiplier == Some(0) {
                bail!("bfd.multiplier must be 1..=255 (3 is usual)");
            }
            for (field, interval) in [("minRx", bfd.min_rx), ("minTx", bfd.min_tx)] {
                if interval.is_some_and(|d| {
                    d.is_negative() || Duration::from(d) < Duration::from_millis(1)
                }) {
                    bail!("bfd.{field} must be at least 1ms (e.g. 300ms, the default)");
                }
            }
        }
        Ok(())
    }

    /// Every named filter validated (reef-crds' BGPFilter rules) and converted, by name.
    fn converted_filters(&self) -> anyhow::Result<BTreeMap<&str, filters::Converted>> {
        let mut converted = BTreeMap::new();
        for (n, filter) in self.filters.iter().enumerate() {
            if filter.name.is_empty() {
                bail!("filters[{n}] needs a name (peers refer to it in their filters list)");
            }
            let spec = filter.spec();
            BGPFilter::new(&filter.name, spec.clone())
                .validate()
                .map_err(|errors| {
                    // Field paths as they are in this file: filters[NAME].importV4[0].cidr.
                    let text = errors
                        .to_string()
                        .replace("spec.", &format!("filters[{}].", filter.name));
                    anyhow::anyhow!(text)
                })?;
            let filter_converted =
                filters::convert(&spec).with_context(|| format!("filters[{}]", filter.name))?;
            if converted
                .insert(filter.name.as_str(), filter_converted)
                .is_some()
            {
                bail!("filter {:?} is defined twice", filter.name);
            }
        }
        Ok(converted)
    }

    /// Speaker-wide routing settings. `restarting`: the kernel still holds our routes of a previous
    /// run (found by the FIB programmer before the speaker starts): they stay until the peers' End-of-RIB
    /// (at most the selection deferral time), with or without graceful restart.
    pub fn routing(&self, restarting: bool) -> RoutingConfig {
        let deferral = self
            .graceful_restart
            .as_ref()
            .and_then(|gr| gr.selection_deferral_time)
            .map_or(DEFAULT_SELECTION_DEFERRAL, Duration::from_secs);
        RoutingConfig {
            cluster_id: self.route_reflector_cluster_id,
            max_paths: self.max_paths.unwrap_or(DEFAULT_MAX_PATHS),
            protected: self.protected_prefixes.clone(),
            fib: self.fib.is_some(),
            fib_sync_deferral: restarting.then_some(deferral),
            graceful_restart: self.graceful_restart.as_ref().map(|gr| {
                let default = GracefulRestartConfig::default();
                GracefulRestartConfig {
                    // Validated <= 4095.
                    restart_time: gr
                        .restart_time
                        .map_or(default.restart_time, |t| t.min(MAX_RESTART_TIME) as u16),
                    stale_routes_time: gr
                        .stale_routes_time
                        .map_or(default.stale_routes_time, Duration::from_secs),
                    restarting,
                }
            }),
        }
    }

    pub fn speaker(&self, restarting: bool) -> SpeakerConfig {
        SpeakerConfig {
            router_id: self.router_id,
            local_as: self.as_number,
            listen: (self.listen.port != 0)
                .then(|| SocketAddr::new(self.listen.address, self.listen.port)),
            routing: self.routing(restarting),
        }
    }

    /// What the speaker runs: the same model node mode computes from resources.
    pub fn desired(&self, restarting: bool) -> anyhow::Result<DesiredBgp> {
        let peers = self
            .peers()?
            .into_iter()
            .zip(&self.peers)
            .map(|(config, peer)| {
                let desired = DesiredPeer {
                    config,
                    bfd: peer.bfd_session(),
                    kind: PeerKind::Configured,
                    origin: "config".to_string(),
                };
                (peer.address, desired)
            })
            .collect();
        Ok(DesiredBgp {
            speaker: self.speaker(restarting),
            peers,
            prefixes: self.prefixes.iter().copied().collect(),
        })
    }

    pub fn peers(&self) -> anyhow::Result<Vec<PeerConfig>> {
        let filters = self.converted_filters()?;
        self.peers
            .iter()
            .map(|p| {
                let mut peer = PeerConfig::new(p.address, p.as_number);
                peer.port = p.port.unwrap_or(179);
                peer.local_as = p.local_as_number;
                peer.password = p.password.clone();
                peer.hold_time = p.hold_time.unwrap_or(90);
                peer.keepalive_time = p.keepalive_time;
                peer.passive = p.passive;
                peer.source_address = p.source_address;
                peer.ttl_security = p.ttl_security;
                peer.multihop = p.multihop;
                peer.connect_retry = Duration::from_secs(p.connect_retry_time.unwrap_or(5).max(1));
                peer.next_hop_v4 = p.next_hop;
                peer.next_hop_v6 = p.next_hop_v6;
                peer.routing =
                    peer_routing(p, &filters).with_context(|| format!("peer {}", p.address))?;
                Ok(peer)
            })
            .collect()
    }
}

/// Warning threshold of `maxPrefixes` when `warningPercent` is not given.
const DEFAULT_WARNING_PERCENT: u8 = 75;

fn peer_routing(
    peer: &Peer,
    filters: &BTreeMap<&str, filters::Converted>,
) -> anyhow::Result<PeerRouting> {
    let mut routing = PeerRouting {
        route_reflector_client: peer.route_reflector_client,
        next_hop_mode: match peer.next_hop_mode {
            NextHopModeName::Auto => NextHopMode::Auto,
            NextHopModeName::SelfAddress => NextHopMode::SelfAddress,
            NextHopModeName::Keep => NextHopMode::Keep,
        },
        allow_own_as: peer.num_allowed_local_as_numbers,
        max_prefix: peer.max_prefixes.as_ref().map(|max| MaxPrefix {
            limit: max.limit,
            warn_threshold_pct: max.warning_percent.unwrap_or(DEFAULT_WARNING_PERCENT),
            restart_after: max.restart_time.map(Duration::from_secs),
        }),
        max_restart_time: peer.max_restart_time.map(Duration::from_secs),
        rfc8212: peer.rfc8212,
        ..PeerRouting::default()
    };
    for name in &peer.filters {
        let filter = filters
            .get(name.as_str())
            .with_context(|| format!("filter {name:?} is not defined"))?;
        routing.import.push(filter.import.clone());
        routing.export.push(filter.export.clone());
    }
    for (n, text) in peer.communities.iter().enumerate() {
        match parse_community(text).with_context(|| format!("communities[{n}]"))? {
            AnyCommunity::Standard(c) => routing.communities.push(c),
            AnyCommunity::Large(c) => routing.large_communities.push(c),
        }
    }
    Ok(routing)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
routerId: 198.51.100.1
asNumber: 64512
listen: { address: "0.0.0.0", port: 179 }
admin: { socket: /run/reef/reefd.sock }
prefixes: ["10.65.0.0/26", "fd00:65::/122"]
peers:
  - { address: 198.51.100.2, asNumber: 65001, port: 179, password: "secret", holdTime: 9, keepaliveTime: 3, passive: false, sourceAddress: 198.51.100.1, ttlSecurity: 1, connectRetryTime: 1 }
  - { address: "2001:db8::2", asNumber: 64512, multihop: 2 }
"#;

    #[test]
    fn parses_the_documented_example() {
        let config: Config = serde_saphyr::from_str(EXAMPLE).unwrap();
        config.validate().unwrap();
        assert_eq!(config.router_id, Ipv4Addr::new(198, 51, 100, 1));
        assert_eq!(config.prefixes.len(), 2);
        let peers = config.peers().unwrap();
        assert_eq!(peers[0].password.as_deref(), Some("secret"));
        assert_eq!(peers[0].hold_time, 9);
        assert_eq!(peers[0].ttl_security, Some(1));
        assert_eq!(peers[0].connect_retry, Duration::from_secs(1));
        assert_eq!(peers[1].port, 179);
        assert_eq!(peers[1].multihop, Some(2));
        assert_eq!(
            config.speaker(false).listen,
            Some("0.0.0.0:179".parse().unwrap())
        );
    }

    #[test]
    fn rejects_unknown_fields_bad_hold_time_and_host_bits() {
        let unknown = "routerId: 1.1.1.1\nasNumber: 1\nasnumber: 2\n";
        assert!(serde_saphyr::from_str::<Config>(unknown).is_err());
        let hold: Config =
            serde_saphyr::from_str("routerId: 1.1.1.1\nasNumber: 1\npeers: [{address: 1.1.1.2, asNumber: 2, holdTime: 2}]\n")
                .unwrap();
        assert!(hold.validate().is_err());
        let host_bits: Config =
            serde_saphyr::from_str("routerId: 1.1.1.1\nasNumber: 1\nprefixes: [10.0.0.1/24]\n")
                .unwrap();
        assert!(
            host_bits
                .validate()
                .unwrap_err()
                .to_string()
                .contains("host bits")
        );
    }

    const ROUTING_EXAMPLE: &str = r#"
routerId: 198.51.100.1
asNumber: 64512
routeReflectorClusterId: 198.51.100.1
maxPaths: 4
protectedPrefixes: ["10.65.0.0/16"]
gracefulRestart: {restartTime: 90, staleRoutesTime: 300, selectionDeferralTime: 20}
fib: {table: 100}
filters:
  - name: no-10-99
    importV4: [{cidr: 10.99.0.0/16, matchOperator: In, action: Reject}]
    exportV4: [{cidr: 10.65.0.0/16, matchOperator: In, action: Accept,
                operations: [{addCommunity: {value: "64512:100"}}]}]
  - name: v6
    importV6: [{cidr: "2001:db8::/32", matchOperator: NotIn, prefixLength: {max: 48}, action: Reject}]
peers:
  - address: 198.51.100.2
    asNumber: 65001
    sourceAddress: 198.51.100.1
    routeReflectorClient: true
    nextHopMode: Self
    filters: [no-10-99, v6]
    communities: ["64512:100", "64512:1:2"]
    numAllowedLocalASNumbers: 2
    maxPrefixes: {limit: 1000, warningPercent: 80, restartTime: 30}
    maxRestartTime: 120
    rfc8212: true
    bfd: {enabled: true, minRx: 100ms, minTx: 200ms, multiplier: 5}
  - address: 198.51.100.3
    asNumber: 64512
    nextHopMode: Keep
    bfd: {enabled: false}
"#;

    fn parse(yaml: &str) -> anyhow::Result<Config> {
        let config: Config = serde_saphyr::from_str(yaml)?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn parses_the_routing_fields() {
        let config = parse(ROUTING_EXAMPLE).unwrap();
        let routing = config.speaker(true).routing;
        assert_eq!(routing.cluster_id, Some(Ipv4Addr::new(198, 51, 100, 1)));
        assert_eq!(routing.max_paths, 4);
        assert_eq!(
            routing.protected,
            ["10.65.0.0/16".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            routing.graceful_restart,
            Some(GracefulRestartConfig {
                restart_time: 90,
                stale_routes_time: Duration::from_secs(300),
                restarting: true,
            })
        );
        assert_eq!(config.fib.as_ref().unwrap().table, 100);
        assert!(routing.fib);

        let peers = config.peers().unwrap();
        let first = &peers[0].routing;
        assert!(first.route_reflector_client);
        assert_eq!(first.next_hop_mode, NextHopMode::SelfAddress);
        assert_eq!(first.import.len(), 2);
        assert_eq!(first.export.len(), 2);
        assert_eq!(first.import[0].rules.len(), 1);
        assert!(first.export[1].rules.is_empty());
        assert_eq!(
            first.communities,
            [reef_bgp::wire::Community::new(64512, 100)]
        );
        assert_eq!(first.large_communities.len(), 1);
        assert_eq!(first.allow_own_as, 2);
        assert_eq!(
            first.max_prefix,
            Some(MaxPrefix {
                limit: 1000,
                warn_threshold_pct: 80,
                restart_after: Some(Duration::from_secs(30)),
            })
        );
        assert_eq!(first.max_restart_time, Some(Duration::from_secs(120)));
        assert!(first.rfc8212);
        let second = &peers[1].routing;
        assert_eq!(second.next_hop_mode, NextHopMode::Keep);
        assert_eq!(
            *second,
            PeerRouting {
                next_hop_mode: NextHopMode::Keep,
                ..PeerRouting::default()
            }
        );

        let desired = config.desired(false).unwrap();
        let bfd: Vec<_> = desired.peers.values().filter_map(|p| p.bfd).collect();
        assert_eq!(bfd.len(), 1, "only the peer with bfd.enabled");
        assert_eq!(bfd[0].min_rx, Duration::from_millis(100));
        assert_eq!(bfd[0].min_tx, Duration::from_millis(200));
        assert_eq!(bfd[0].multiplier, 5);
        let first = &desired.peers[&"198.51.100.2".parse::<IpAddr>().unwrap()];
        assert_eq!(
            first.config.source_address,
            Some("198.51.100.1".parse().unwrap())
        );
        assert_eq!(first.kind, PeerKind::Configured);
    }

    #[test]
    fn defaults_without_routing_fields() {
        let config = parse(EXAMPLE).unwrap();
        let routing = config.speaker(true).routing;
        assert_eq!(routing.max_paths, 8);
        assert_eq!(routing.graceful_restart, None, "no gracefulRestart: GR off");
        assert!(config.fib.is_none());
        assert!(!routing.fib);
        assert_eq!(config.peers().unwrap()[0].routing, PeerRouting::default());
        let gr = parse("routerId: 1.1.1.1\nasNumber: 1\ngracefulRestart: {}\nfib: {}\n").unwrap();
        assert_eq!(
            gr.speaker(false).routing.graceful_restart,
            Some(GracefulRestartConfig::default())
        );
        assert_eq!(gr.fib.unwrap().table, 254);
    }

    /// The error text of a config that must be refused.
    fn refused(yaml: &str) -> String {
        format!("{:#}", parse(yaml).unwrap_err())
    }

    #[test]
    fn validation_names_the_fix() {
        let base = "routerId: 198.51.100.1\nasNumber: 64512\n";
        let error = refused(&format!(
            "{base}peers: [{{address: 198.51.100.2, asNumber: 1, filters: [nope]}}]\n"
        ));
        assert!(error.contains("peer 198.51.100.2"), "{error}");
        assert!(error.contains("filter \"nope\" is not defined"), "{error}");
        assert!(error.contains("- name: nope"), "{error}");

        let error = refused(&format!(
            "{base}peers: [{{address: 198.51.100.2, asNumber: 64512, routeReflectorClient: true}}]\n"
        ));
        assert!(
            error.contains("routeReflectorClusterId: 198.51.100.1"),
            "{error}"
        );

        let error = refused(&format!(
            "{base}peers: [{{address: 198.51.100.2, asNumber: 1, communities: [\"64512:70000\"]}}]\n"
        ));
        assert!(error.contains("communities[0]"), "{error}");
        assert!(error.contains("aa:nn"), "{error}");

        let error = refused(&format!("{base}gracefulRestart: {{restartTime: 5000}}\n"));
        assert!(error.contains("4095"), "{error}");

        let error = refused(&format!(
            "{base}filters: [{{name: f, importV4: [{{cidr: 10.0.0.1/8, matchOperator: In, action: Reject}}]}}]\n"
        ));
        assert!(error.contains("filters[f].importV4[0].cidr"), "{error}");
        assert!(error.contains("did you mean 10.0.0.0/8"), "{error}");

        let error = refused(&format!("{base}filters: [{{name: f}}, {{name: f}}]\n"));
        assert!(error.contains("defined twice"), "{error}");

        let error = refused(&format!("{base}maxPaths: 0\n"));
        assert!(error.contains("maxPaths"), "{error}");

        let error = refused(&format!(
            "{base}peers: [{{address: 198.51.100.2, asNumber: 1, bfd: {{enabled: true, multiplier: 0}}}}]\n"
        ));
        assert!(error.contains("bfd.multiplier"), "{error}");

        let error = refused(&format!(
            "{base}peers: [{{address: 198.51.100.2, asNumber: 1, maxPrefixes: {{limit: 10, warningPercent: 120}}}}]\n"
        ));
        assert!(error.contains("warningPercent"), "{error}");

        assert!(refused(&format!("{base}fib: {{table: 0}}\n")).contains("fib.table"));
        assert!(refused(&format!("{base}nextHopMode: Self\n")).contains("unknown field"));
        assert!(
            refused(&format!(
                "{base}peers: [{{address: 198.51.100.2, asNumber: 1, nextHopMode: Sometimes}}]\n"
            ))
            .contains("Sometimes")
        );
    }
}
