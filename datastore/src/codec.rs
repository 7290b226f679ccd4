//! Keys and JSON values shared by the backends that keep objects as bytes (etcd, in-memory).
//!
//! Key layout: `/reef/v1/<plural>/<namespace, or "cluster" for cluster-scoped kinds>/<name>`. The value is
//! the object's JSON without `metadata.resourceVersion`: the revision is the key's modification revision and
//! is put back on read.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::{Error, Object};

const CLUSTER_SCOPE_SEGMENT: &str = "cluster";

/// Whether `K` lives in namespaces. `K::Scope` is a marker type (k8s-openapi's `NamespaceResourceScope` or
/// `ClusterResourceScope`) that is not required to be `'static`, so its name is compared.
pub(crate) fn is_namespaced<K: Object>() -> bool {
    std::any::type_name::<K::Scope>().ends_with("::NamespaceResourceScope")
}

fn segment<'a>(what: &str, value: &'a str) -> Result<&'a str, Error> {
    if value.is_empty() || value.contains('/') {
        return Err(Error::Invalid(format!(
            "{what} {value:?} must be non-empty and contain no '/'"
        )));
    }
    Ok(value)
}

/// The scope segment of a single object's key: its namespace, or `cluster`.
fn scope_segment<K: Object>(namespace: Option<&str>) -> Result<&str, Error> {
    match (is_namespaced::<K>(), namespace) {
        (true, Some(ns)) => segment("namespace", ns),
        (false, None) => Ok(CLUSTER_SCOPE_SEGMENT),
        (true, None) => Err(Error::Invalid(format!(
            "{} is namespaced: a namespace is required",
            K::kind(&())
        ))),
        (false, Some(ns)) => Err(Error::Invalid(format!(
            "{} is cluster-scoped: unexpected namespace {ns:?}",
            K::kind(&())
        ))),
    }
}

/// Checks that a namespace is given exactly for namespaced kinds.
pub(crate) fn check_scope<K: Object>(namespace: Option<&str>) -> Result<(), Error> {
    scope_segment::<K>(namespace).map(drop)
}

/// The key prefix of a list or watch: one namespace, or the whole kind.
pub(crate) fn list_prefix<K: Object>(namespace: Option<&str>) -> Result<String, Error> {
    let kind = format!("/reef/v1/{}/", K::plural(&()));
    match namespace {
        None => Ok(kind),
        Some(_) => Ok(format!("{kind}{}/", scope_segment::<K>(namespace)?)),
    }
}

pub(crate) fn object_key<K: Object>(namespace: Option<&str>, name: &str) -> Result<String, Error> {
    let scope = scope_segment::<K>(namespace)?;
    Ok(format!(
        "/reef/v1/{}/{scope}/{}",
        K::plural(&()),
        segment("name", name)?
    ))
}

/// The key of an object from its own metadata.
pub(crate) fn key_of<K: Object>(obj: &K) -> Result<String, Error> {
    let meta = obj.meta();
    let name = meta
        .name
        .as_deref()
        .ok_or_else(|| Error::Invalid("metadata.name is required".into()))?;
    object_key::<K>(meta.namespace.as_deref(), name)
}

/// The revision an update expects, from `metadata.resourceVersion`.
pub(crate) fn expected_revision<K: Object>(obj: &K) -> Result<u64, Error> {
    let revision = obj.meta().resource_version.as_deref().ok_or_else(|| {
        Error::Invalid("metadata.resourceVersion is required (updates are compare-and-swap)".into())
    })?;
    parse_revision(revision)
}

pub(crate) fn parse_revision(revision: &str) -> Result<u64, Error> {
    revision
        .parse()
        .map_err(|_| Error::Invalid(format!("revision {revision:?} is not a number")))
}

/// A new object as it is stored by `create`: no revision, and a creation time if it has none.
pub(crate) fn new_object<K: Object>(obj: &K) -> K {
    let mut obj = obj.clone();
    let meta = obj.meta_mut();
    meta.resource_version = None;
    meta.creation_timestamp
        .get_or_insert_with(|| Time(k8s_openapi::jiff::Timestamp::now()));
    obj
}

pub(crate) fn encode<K: Object>(obj: &K) -> Result<Vec<u8>, Error> {
    let mut obj = obj.clone();
    obj.meta_mut().resource_version = None;
    serde_json::to_vec(&obj)
        .map_err(|e| Error::Invalid(format!("cannot encode {} as JSON: {e}", K::kind(&()))))
}

pub(crate) fn decode<K: Object>(key: &str, value: &[u8], revision: u64) -> Result<K, Error> {
    let mut obj: K =
        serde_json::from_slice(value).map_err(|e| Error::Decode(format!("{key}: {e}")))?;
    obj.meta_mut().resource_version = Some(revision.to_string());
    Ok(obj)
}
