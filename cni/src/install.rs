//! `reef-cni install`: puts `reef` and `reef-ipam` into the runtime's plugin directory and writes the
//! conflist, as the DaemonSet's init container does on every node. Every file is written to a temporary
//! name and renamed into place, so a runtime never sees half a binary or half a configuration.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use serde_json::{Value, json};

use crate::spec::Version;

/// The conflist's file name: `10-` sorts it before most others, so runtimes pick it as the default.
pub const CONFLIST_NAME: &str = "10-reef.conflist";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "reef-cni install",
    about = "Install the reef CNI plugin and its network configuration"
)]
pub struct InstallArgs {
    /// Where the runtime looks for plugin binaries.
    #[arg(long, env = "CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// Where the runtime looks for network configurations.
    #[arg(long, env = "CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The network name (the prefix of every address handle).
    #[arg(long, env = "REEF_NETWORK_NAME", default_value = "k8s-pod-network")]
    pub network_name: String,
    /// The node's name (the ReefNode's); the host name when absent.
    #[arg(long, env = "REEF_NODENAME")]
    pub node_name: Option<String>,
    /// etcd client URLs (comma separated); without them the Kubernetes datastore is used.
    #[arg(long, env = "REEF_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// The kubeconfig the plugin uses with the Kubernetes datastore.
    #[arg(long, env = "REEF_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Pools to allocate from (CIDRs or IPPool names); all that fit when absent.
    #[arg(long, env = "REEF_IPV4_POOLS", value_delimiter = ',')]
    pub ipv4_pools: Vec<String>,
    #[arg(long, env = "REEF_IPV6_POOLS", value_delimiter = ',')]
    pub ipv6_pools: Vec<String>,
    /// Give pods an IPv6 address too.
    #[arg(long, env = "REEF_ASSIGN_IPV6")]
    pub assign_ipv6: bool,
    /// Pod MTU; 0 = detect from the host interfaces.
    #[arg(long, env = "REEF_MTU", default_value_t = 0)]
    pub mtu: u32,
    #[arg(
        long,
        env = "REEF_CNI_LOG_FILE",
        default_value = "/var/log/reef/cni.log"
    )]
    pub log_file: PathBuf,
    /// Chain the reference portmap plugin (hostPort).
    #[arg(long, env = "REEF_CHAIN_PORTMAP", default_value_t = true, action = clap::ArgAction::Set)]
    pub portmap: bool,
    /// Chain the reference bandwidth plugin (traffic shaping annotations).
    #[arg(long, env = "REEF_CHAIN_BANDWIDTH", default_value_t = true, action = clap::ArgAction::Set)]
    pub bandwidth: bool,
    /// The conflist's cniVersion. 1.0.0 by default: containerd 1.6 (its libcni) and the reference plugins
    /// of Debian 12 refuse 1.1.0 results, and reef answers every version from 0.3.1 on.
    #[arg(long, env = "REEF_CNI_VERSION", default_value = "1.0.0", value_parser = parse_version)]
    pub cni_version: Version,
    /// The plugin binary to install (this executable by default).
    #[arg(long)]
    pub binary: Option<PathBuf>,
}

fn parse_version(text: &str) -> Result<Version, String> {
    Version::parse(text).map_err(|e| format!("{} ({})", e.msg, e.details))
}

/// The conflist for these arguments.
pub fn conflist(args: &InstallArgs) -> Value {
    let datastore = if args.etcd_endpoints.is_empty() {
        json!({"type": "kubernetes", "kubeconfig": args.kubeconfig})
    } else {
        json!({"type": "etcd", "etcdEndpoints": args.etcd_endpoints})
    };
    let mut ipam = json!({"type": "reef-ipam"});
    if !args.ipv4_pools.is_empty() {
        ipam["ipv4Pools"] = json!(args.ipv4_pools);
    }
    if !args.ipv6_pools.is_empty() || args.assign_ipv6 {
        ipam["ipv6Pools"] = json!(args.ipv6_pools);
        ipam["assignIPv6"] = json!(true);
    }
    let mut reef = json!({
        "type": "reef",
        "datastore": datastore,
        "ipam": ipam,
        "logFile": args.log_file,
    });
    if let Some(node) = &args.node_name {
        reef["nodename"] = json!(node);
    }
    if args.mtu > 0 {
        reef["mtu"] = json!(args.mtu);
    }
    let mut plugins = vec![reef];
    if args.portmap {
        plugins
            .push(json!({"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}));
    }
    if args.bandwidth {
        plugins.push(json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    }
    json!({
        "cniVersion": args.cni_version.as_str(),
        "name": args.network_name,
        "plugins": plugins,
    })
}

/// Writes `bytes` to `target` through a temporary file in the same directory and a rename.
fn write_atomically(target: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = target
        .parent()
        .ok_or_else(|| std::io::Error::other("target has no directory"))?;
    std::fs::create_dir_all(dir)?;
    let file_name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    std::fs::write(&temporary, bytes)?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&temporary, target).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

/// Installs the binaries and the conflist; returns the paths written.
pub fn install(args: &InstallArgs) -> Result<Vec<PathBuf>, String> {
    let binary = match &args.binary {
        Some(path) => path.clone(),
        None => std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?,
    };
    let bytes = std::fs::read(&binary).map_err(|e| format!("reading {}: {e}", binary.display()))?;
    let mut written = Vec::new();
    for name in ["reef", "reef-ipam"] {
        let target = args.bin_dir.join(name);
        write_atomically(&target, &bytes, 0o755).map_err(|e| {
            format!(
                "writing {}: {e} (is {} writable?)",
                target.display(),
                args.bin_dir.display()
            )
        })?;
        written.push(target);
    }
    let conf = args.conf_dir.join(CONFLIST_NAME);
    let text = serde_json::to_vec_pretty(&conflist(args)).map_err(|e| e.to_string())?;
    write_atomically(&conf, &text, 0o644).map_err(|e| {
        format!(
            "writing {}: {e} (is {} writable?)",
            conf.display(),
            args.conf_dir.display()
        )
    })?;
    written.push(conf);
    Ok(written)
}

/// `reef-cni install [flags]`.
pub fn main(args: impl Iterator<Item = String>) -> ExitCode {
    let args = match InstallArgs::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    match install(&args) {
        Ok(paths) => {
            for path in paths {
                println!("installed {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("reef-cni install: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> InstallArgs {
        let mut argv = vec!["install"];
        argv.extend_from_slice(extra);
        InstallArgs::try_parse_from(argv).unwrap()
    }

    #[test]
    fn conflist_chains_portmap_and_bandwidth_by_default() {
        let c = conflist(&args(&[
            "--etcd-endpoints",
            "http://198.51.100.1:2379",
            "--node-name",
            "n1",
        ]));
        assert_eq!(c["cniVersion"], "1.0.0");
        let newest = conflist(&args(&["--cni-version", "1.1.0"]));
        assert_eq!(newest["cniVersion"], "1.1.0");
        assert!(InstallArgs::try_parse_from(["install", "--cni-version", "0.2.0"]).is_err());
        let types: Vec<&str> = c["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["reef", "portmap", "bandwidth"]);
        assert_eq!(c["plugins"][0]["datastore"]["type"], "etcd");
        assert_eq!(c["plugins"][0]["nodename"], "n1");
        let plain = conflist(&args(&["--portmap", "false", "--bandwidth", "false"]));
        assert_eq!(plain["plugins"].as_array().unwrap().len(), 1);
        assert_eq!(plain["plugins"][0]["datastore"]["type"], "kubernetes");
    }

    #[test]
    fn install_writes_binaries_and_conflist_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-binary");
        std::fs::write(&fake, b"#!/bin/sh\n").unwrap();
        let bin = dir.path().join("bin");
        let conf = dir.path().join("net.d");
        let a = args(&[
            "--bin-dir",
            bin.to_str().unwrap(),
            "--conf-dir",
            conf.to_str().unwrap(),
            "--binary",
            fake.to_str().unwrap(),
        ]);
        let written = install(&a).unwrap();
        assert_eq!(written.len(), 3);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(bin.join("reef-ipam"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let text = std::fs::read_to_string(conf.join(CONFLIST_NAME)).unwrap();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["name"], "k8s-pod-network");
        // No temporary file is left behind; a second install replaces in place.
        install(&a).unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(&bin)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty());
    }
}
