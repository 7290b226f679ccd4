//! The YAML config file of speaker mode (format in README.md). Field names follow Calico's
//! BGPConfiguration/BGPPeer where they exist.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use ipnet::IpNet;
use reef_bgp::driver::{PeerConfig, SpeakerConfig};
use serde::Deserialize;

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
        let mut seen = std::collections::HashSet::new();
        for peer in &self.peers {
            if !seen.insert(peer.address) {
                bail!("peer {} is configured twice", peer.address);
            }
            if matches!(peer.hold_time, Some(1 | 2)) {
                bail!(
                    "peer {}: holdTime must be 0 or at least 3 seconds",
                    peer.address
                );
            }
            if peer.ttl_security.is_some() && peer.multihop.is_some() {
                bail!(
                    "peer {}: ttlSecurity and multihop exclude each other",
                    peer.address
                );
            }
            if let Some(key) = &peer.password
                && key.len() > reef_bgp::driver::socket::MD5_MAX_KEY_LEN
            {
                bail!("peer {}: password longer than 80 bytes", peer.address);
            }
        }
        Ok(())
    }

    pub fn speaker(&self) -> SpeakerConfig {
        SpeakerConfig {
            router_id: self.router_id,
            local_as: self.as_number,
            listen: (self.listen.port != 0)
                .then(|| SocketAddr::new(self.listen.address, self.listen.port)),
        }
    }

    pub fn peers(&self) -> Vec<PeerConfig> {
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
                peer
            })
            .collect()
    }
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
        let peers = config.peers();
        assert_eq!(peers[0].password.as_deref(), Some("secret"));
        assert_eq!(peers[0].hold_time, 9);
        assert_eq!(peers[0].ttl_security, Some(1));
        assert_eq!(peers[0].connect_retry, Duration::from_secs(1));
        assert_eq!(peers[1].port, 179);
        assert_eq!(peers[1].multihop, Some(2));
        assert_eq!(
            config.speaker().listen,
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
}
