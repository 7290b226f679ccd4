//! Typed datastore trait with compare-and-swap writes and watches; Kubernetes, etcd v3 and in-memory backends.
//!
//! Every backend speaks the same [`Store`] trait over a resource type `K` (any [`Object`]: a kube resource
//! with static type information that serialises to JSON):
//!
//! - every stored object carries its revision in `metadata.resourceVersion`;
//! - [`Store::update`] and [`Store::delete`] are compare-and-swap on that revision: a stale revision gives
//!   [`Error::Conflict`], so read-modify-write loops retry on conflict;
//! - [`Store::list`] returns the store revision it was read at; [`Store::watch`] from that revision delivers
//!   every later change exactly once, in order; a revision that was compacted away gives [`Error::Expired`]
//!   and the caller lists again.
//!
//! [`Datastore`] is the handle that hands out a [`Store`] per kind for the chosen backend.

pub mod access;
mod codec;
pub mod etcd;
pub mod kubernetes;
pub mod memory;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use etcd::{EtcdBackend, EtcdConfig};
pub use kubernetes::KubernetesBackend;
pub use memory::MemoryBackend;

/// What a datastore can hold: a kube resource with static type information (a `CustomResource` derive or a
/// k8s-openapi type) that round-trips through JSON.
pub trait Object:
    kube::Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

impl<K> Object for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// A store revision, as found in `metadata.resourceVersion`.
///
/// Opaque as in Kubernetes: compare revisions only for equality, except that the etcd and in-memory
/// backends (and Kubernetes on etcd in practice) hand out decimal numbers that grow with every write, which
/// [`Revision::as_u64`] exposes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Revision(String);

impl Revision {
    pub fn new(revision: impl Into<String>) -> Self {
        Self(revision.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The revision as a number, when the backend numbers its revisions (etcd, in-memory).
    pub fn as_u64(&self) -> Option<u64> {
        self.0.parse().ok()
    }

    /// The revision an object carries, if it was read from a store.
    pub fn of<K: kube::Resource>(obj: &K) -> Option<Self> {
        obj.meta().resource_version.clone().map(Self)
    }
}

impl From<u64> for Revision {
    fn from(revision: u64) -> Self {
        Self(revision.to_string())
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Datastore errors. The first four are outcomes callers act on; the rest are failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("object not found")]
    NotFound,
    #[error("object already exists")]
    AlreadyExists,
    /// The expected revision is stale: someone else wrote the object first. Re-read and retry.
    #[error("revision conflict: the object was changed by another writer")]
    Conflict,
    /// The revision to watch from was compacted away. List again and watch from the list's revision.
    #[error("revision expired (compacted): list again")]
    Expired,
    /// The backend did not answer in time or could not be reached; the message names the endpoint and a fix.
    /// A write that ends so may or may not have been applied: re-read before deciding (a retried create may
    /// then meet `AlreadyExists`).
    #[error("datastore unavailable: {0}")]
    Unavailable(String),
    /// The request was rejected before or by the backend as malformed (missing name, revision, ...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A stored value or a backend answer could not be decoded into the resource type.
    #[error("cannot decode stored object: {0}")]
    Decode(String),
    /// Any other backend failure (permission denied, internal server error, ...).
    #[error("datastore error: {0}")]
    Backend(String),
}

/// One change seen by [`Store::watch`]. The object carries the revision of the change in
/// `metadata.resourceVersion`; for `Deleted` it is the last stored state with the revision of the delete.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent<K> {
    Added(K),
    Modified(K),
    Deleted(K),
}

impl<K: kube::Resource> WatchEvent<K> {
    pub fn object(&self) -> &K {
        match self {
            Self::Added(obj) | Self::Modified(obj) | Self::Deleted(obj) => obj,
        }
    }

    /// The revision of this change: resume a watch from here to see only later changes.
    pub fn revision(&self) -> Option<Revision> {
        Revision::of(self.object())
    }
}

/// A stream of changes, in revision order.
///
/// It yields `Err(Expired)` when the history it needs is gone, `Err(Unavailable)` when the backend is lost,
/// and may simply end (e.g. the Kubernetes server's watch timeout); after an error it ends. To go on, watch
/// again from the revision of the last event seen (or list again after `Expired`).
pub type WatchStream<K> = BoxStream<'static, Result<WatchEvent<K>, Error>>;

/// Typed access to one kind of resource. `namespace` is `None` for cluster-scoped kinds; for `list` and
/// `watch` of a namespaced kind, `None` means all namespaces.
#[async_trait]
pub trait Store<K: Object>: Send + Sync {
    /// The object, with its revision in `metadata.resourceVersion`, or `None`.
    async fn get(&self, namespace: Option<&str>, name: &str) -> Result<Option<K>, Error>;

    /// All objects (each with its revision) and the store revision they were read at, to watch from.
    async fn list(&self, namespace: Option<&str>) -> Result<(Vec<K>, Revision), Error>;

    /// Stores a new object (any `resourceVersion` it carries is ignored) and returns it as stored.
    /// `AlreadyExists` if the name is taken.
    async fn create(&self, obj: &K) -> Result<K, Error>;

    /// Replaces the object if its `metadata.resourceVersion` is still the stored one (`Conflict` if not,
    /// `NotFound` if it is gone, `Invalid` without a revision). Returns it with its new revision.
    async fn update(&self, obj: &K) -> Result<K, Error>;

    /// [`Store::update`] for the status of a kind with a status subresource (the Kubernetes API ignores
    /// status changes in a plain update, and spec changes in a status update). The etcd and in-memory
    /// backends store the whole object either way, which is safe because both are compare-and-swap.
    async fn update_status(&self, obj: &K) -> Result<K, Error>;

    /// Deletes the object; with `expected`, only if that is still its revision (`Conflict` if not).
    /// `NotFound` if there is no such object.
    async fn delete(
        &self,
        namespace: Option<&str>,
        name: &str,
        expected: Option<&Revision>,
    ) -> Result<(), Error>;

    /// Every change after revision `from` (exclusive), in order. If `from` was compacted: `Err(Expired)`,
    /// from this call or as the stream's first item (the backends differ; handle both).
    async fn watch(
        &self,
        namespace: Option<&str>,
        from: &Revision,
    ) -> Result<WatchStream<K>, Error>;
}

/// The datastore handle: one backend, a [`Store`] for each kind. Cheap to clone.
#[derive(Clone)]
pub enum Datastore {
    /// In-process maps, for unit tests.
    Memory(MemoryBackend),
    /// etcd v3: the datastore for non-Kubernetes hosts, the lab and integration tests.
    Etcd(EtcdBackend),
    /// The Kubernetes API server (custom resources); the production default in a cluster.
    Kubernetes(KubernetesBackend),
}

impl Datastore {
    /// A fresh, empty in-memory datastore.
    pub fn memory() -> Self {
        Self::Memory(MemoryBackend::new())
    }

    /// Connects to etcd (lazily: an unreachable etcd shows as `Unavailable` on the first call).
    pub async fn etcd(config: EtcdConfig) -> Result<Self, Error> {
        EtcdBackend::connect(config).await.map(Self::Etcd)
    }

    /// Uses a Kubernetes client (e.g. from `kube::Client::try_default()`).
    pub fn kubernetes(client: kube::Client) -> Self {
        Self::Kubernetes(KubernetesBackend::new(client))
    }

    /// The store for kind `K`.
    pub fn store<K: Object>(&self) -> Arc<dyn Store<K>> {
        match self {
            Self::Memory(backend) => Arc::new(backend.store::<K>()),
            Self::Etcd(backend) => Arc::new(backend.store::<K>()),
            Self::Kubernetes(backend) => Arc::new(backend.store::<K>()),
        }
    }
}

/// Ends a watch stream right after its first error, as [`WatchStream`] promises.
pub(crate) fn end_after_error<K, S>(stream: S) -> WatchStream<K>
where
    S: futures::Stream<Item = Result<WatchEvent<K>, Error>> + Send + 'static,
    K: Send + 'static,
{
    use futures::StreamExt;
    stream
        .scan(false, |failed, item| {
            let next = if *failed { None } else { Some(item) };
            *failed = *failed || next.as_ref().is_some_and(Result::is_err);
            futures::future::ready(next)
        })
        .boxed()
}
