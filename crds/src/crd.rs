//! The CustomResourceDefinitions of all Reef resources, and their YAML as committed in `deploy/crds/`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{
    BGPConfiguration, BGPFilter, BGPPeer, BlockAffinity, GlobalNetworkPolicy, IPAMBlock,
    IPAMConfig, IPAMHandle, IPPool, NetworkPolicy, ReefNode, WorkloadEndpoint,
};

/// Header of every generated file.
pub const GENERATED_HEADER: &str = "# Generated from the Rust types in crds/src by reef-crds; do not edit.\n\
# Regenerate: REEF_UPDATE_CRDS=1 cargo nextest run -p reef-crds\n";

/// Every Reef CRD, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        BGPConfiguration::crd(),
        BGPFilter::crd(),
        BGPPeer::crd(),
        BlockAffinity::crd(),
        GlobalNetworkPolicy::crd(),
        IPAMBlock::crd(),
        IPAMConfig::crd(),
        IPAMHandle::crd(),
        IPPool::crd(),
        NetworkPolicy::crd(),
        ReefNode::crd(),
        WorkloadEndpoint::crd(),
    ]
}

/// File name of a CRD in `deploy/crds/`: `<plural>.reef.dev.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or_default())
}

/// The YAML document of a CRD, with the generated-file header.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    Ok(format!(
        "{GENERATED_HEADER}{}",
        serde_saphyr::to_string(crd)?
    ))
}

/// File name of the kustomization that lists the CRD files.
pub const KUSTOMIZATION_FILE: &str = "kustomization.yaml";

/// `deploy/crds/kustomization.yaml`: the CRD files as one kustomize resource set.
pub fn kustomization(crds: &[CustomResourceDefinition]) -> String {
    let mut out = format!(
        "{GENERATED_HEADER}apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n"
    );
    for crd in crds {
        out.push_str(&format!("- {}\n", file_name(crd)));
    }
    out
}
