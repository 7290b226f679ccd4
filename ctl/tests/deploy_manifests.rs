//! deploy/: every Kubernetes manifest parses into its strict k8s-openapi type and writes back to the
//! same JSON (a misspelt or misplaced field would be dropped and show as a difference); the RBAC rules
//! grant exactly the access reefd and reef-cni need (reef_datastore::access); the DaemonSet, ConfigMap
//! and kustomization agree with each other.

use std::collections::BTreeSet;
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use reef_datastore::access::{AGENT, AGENT_NAMESPACED, ApiAccess, CNI};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The documents of a manifest file.
fn documents(file: &str) -> Vec<Value> {
    let path = deploy_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// The document as `T`, which must write back to exactly the same JSON.
fn strict<T: DeserializeOwned + Serialize>(document: &Value, what: &str) -> T {
    let object: T =
        serde_json::from_value(document.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let written = serde_json::to_value(&object).unwrap();
    assert_eq!(
        &written, document,
        "{what}: fields lost or changed by the strict type"
    );
    object
}

/// Every document of every manifest file, typed by its kind.
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
}

fn manifests() -> Manifests {
    let mut m = Manifests {
        namespaces: vec![],
        service_accounts: vec![],
        cluster_roles: vec![],
        cluster_role_bindings: vec![],
        roles: vec![],
        role_bindings: vec![],
        config_maps: vec![],
        daemon_sets: vec![],
    };
    let mut files: Vec<String> = std::fs::read_dir(deploy_dir().join("reef"))
        .unwrap()
        .map(|e| format!("reef/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for file in files {
        for (n, doc) in documents(&file).iter().enumerate() {
            let what = format!("{file} document {n}");
            match doc["kind"].as_str().unwrap_or_default() {
                "Namespace" => m.namespaces.push(strict(doc, &what)),
                "ServiceAccount" => m.service_accounts.push(strict(doc, &what)),
                "ClusterRole" => m.cluster_roles.push(strict(doc, &what)),
                "ClusterRoleBinding" => m.cluster_role_bindings.push(strict(doc, &what)),
                "Role" => m.roles.push(strict(doc, &what)),
                "RoleBinding" => m.role_bindings.push(strict(doc, &what)),
                "ConfigMap" => m.config_maps.push(strict(doc, &what)),
                "DaemonSet" => m.daemon_sets.push(strict(doc, &what)),
                other => panic!("{what}: unexpected kind {other:?}"),
            }
        }
    }
    m
}

type Grant = (String, String, String);

/// (group, resource, verb) triples granted by RBAC rules.
fn granted(rules: &[PolicyRule]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in rules {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{rule:?}"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert_ne!(verb, "*", "no wildcard verbs");
                    assert_ne!(resource, "*", "no wildcard resources");
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

fn needed(lists: &[&[ApiAccess]]) -> BTreeSet<Grant> {
    lists
        .iter()
        .flat_map(|list| list.iter())
        .flat_map(|a| {
            a.verbs
                .iter()
                .map(|v| (a.group.to_string(), a.resource.to_string(), v.to_string()))
        })
        .collect()
}

#[test]
fn rbac_grants_exactly_what_reefd_and_reef_cni_use() {
    let m = manifests();
    assert_eq!(m.cluster_roles.len(), 1);
    let cluster = granted(m.cluster_roles[0].rules.as_deref().unwrap_or_default());
    let want = needed(&[AGENT, CNI]);
    let missing: Vec<_> = want.difference(&cluster).collect();
    let extra: Vec<_> = cluster.difference(&want).collect();
    assert!(missing.is_empty(), "ClusterRole lacks {missing:?}");
    assert!(
        extra.is_empty(),
        "ClusterRole grants more than the code uses: {extra:?}"
    );

    assert_eq!(m.roles.len(), 1);
    let namespaced = granted(m.roles[0].rules.as_deref().unwrap_or_default());
    assert_eq!(namespaced, needed(&[AGENT_NAMESPACED]));

    // Both bindings give the roles to the DaemonSet's service account, in its namespace.
    let account = &m.service_accounts[0].metadata;
    let namespace = m.namespaces[0].metadata.name.as_deref();
    assert_eq!(account.namespace.as_deref(), namespace);
    let pod = m.daemon_sets[0].spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name, account.name);
    let binding = &m.cluster_role_bindings[0];
    assert_eq!(
        binding.role_ref.name,
        m.cluster_roles[0].metadata.name.clone().unwrap()
    );
    let role_binding = &m.role_bindings[0];
    assert_eq!(
        role_binding.role_ref.name,
        m.roles[0].metadata.name.clone().unwrap()
    );
    assert_eq!(role_binding.metadata.namespace.as_deref(), namespace);
    for subjects in [&binding.subjects, &role_binding.subjects] {
        let subject = &subjects.as_ref().unwrap()[0];
        assert_eq!(subject.kind, "ServiceAccount");
        assert_eq!(Some(&subject.name), account.name.as_ref());
        assert_eq!(subject.namespace.as_deref(), namespace);
    }
}

#[test]
fn daemonset_runs_privileged_on_the_host_network_with_probes_on_the_health_port() {
    let m = manifests();
    let config = m.config_maps[0].data.clone().unwrap();
    let health_port: i32 = config["REEF_HEALTH_LISTEN"]
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let daemon_set = &m.daemon_sets[0];
    let pod = daemon_set.spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    // Shorter than the default graceful restart time (120 s): the peers keep our routes while the
    // pod is replaced.
    let grace = pod.termination_grace_period_seconds.unwrap();
    assert!((10..120).contains(&grace), "{grace}");

    let reefd = &pod.containers[0];
    assert_eq!(
        reefd.security_context.as_ref().unwrap().privileged,
        Some(true)
    );
    for (probe, path) in [
        (&reefd.liveness_probe, "/healthz"),
        (&reefd.readiness_probe, "/readyz"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(health_port)
        );
    }
    let env_from = reefd.env_from.as_ref().unwrap();
    let config_name = m.config_maps[0].metadata.name.clone();
    assert_eq!(
        env_from[0].config_map_ref.as_ref().map(|c| c.name.clone()),
        config_name
    );

    // The init container installs the plugin and its conflist into the host's CNI directories.
    let init = &pod.init_containers.as_ref().unwrap()[0];
    let volumes = pod.volumes.as_ref().unwrap();
    let host_path = |mount: &str| {
        let name = &init
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == mount)
            .unwrap_or_else(|| panic!("no mount at {mount}"))
            .name;
        volumes
            .iter()
            .find(|v| &v.name == name)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.clone())
    };
    assert_eq!(
        host_path("/host/opt/cni/bin").as_deref(),
        Some("/opt/cni/bin")
    );
    assert_eq!(
        host_path("/host/etc/cni/net.d").as_deref(),
        Some("/etc/cni/net.d")
    );
    let script = &config["install-cni.sh"];
    for needle in ["/host/opt/cni/bin/$name", "10-reef.conflist", "reef-ipam"] {
        assert!(script.contains(needle), "install-cni.sh lacks {needle}");
    }
    // Every volume mounted exists.
    for container in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        for mount in container.volume_mounts.iter().flatten() {
            assert!(
                volumes.iter().any(|v| v.name == mount.name),
                "{}",
                mount.name
            );
        }
    }
    // The conflist is JSON with the reef plugin and its IPAM.
    let conflist: Value = serde_json::from_str(&config["cni_network_config"]).unwrap();
    assert_eq!(conflist["plugins"][0]["type"], "reef");
    assert_eq!(conflist["plugins"][0]["ipam"]["type"], "reef-ipam");
}

#[test]
fn kustomization_lists_existing_resources_and_the_dockerfile_is_multi_stage() {
    let kustomization = &documents("kustomization.yaml")[0];
    assert_eq!(kustomization["kind"], "Kustomization");
    let resources: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for resource in &resources {
        let path = deploy_dir().join(resource);
        assert!(
            path.is_file() || path.join("kustomization.yaml").is_file(),
            "{resource} does not exist"
        );
    }
    let mut listed: BTreeSet<&str> = resources.iter().copied().collect();
    listed.remove("crds");
    let files: BTreeSet<String> = std::fs::read_dir(deploy_dir().join("reef"))
        .unwrap()
        .map(|e| format!("reef/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    assert_eq!(listed, files.iter().map(String::as_str).collect());

    let dockerfile = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    assert!(dockerfile.matches("\nFROM ").count() >= 2, "multi-stage");
    for binary in ["reefd", "reefctl", "reef-cni"] {
        assert!(dockerfile.contains(&format!("-p {binary}")), "{binary}");
    }
}
