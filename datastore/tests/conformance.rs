//! The datastore conformance suite: the same cases on every backend.
//!
//! - `memory::*` always run;
//! - `etcd::*` run against a real etcd started per test (`reef_lab::etcd::EtcdServer`, no root needed);
//! - `kubernetes::*` need a cluster: ignored, and when run anyway (`--run-ignored all`) without
//!   `KUBECONFIG` they return at once, reporting the skip on stderr.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ObjectMeta;
use kube::{CustomResource, CustomResourceExt, ResourceExt};
use reef_datastore::{
    Datastore, Error, EtcdConfig, Object, Revision, Store, WatchEvent, WatchStream,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A namespaced test resource: a counter with some payload to make objects non-trivial in size.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "test.reef.dev",
    version = "v1",
    kind = "Counter",
    derive = "PartialEq",
    status = "CounterStatus",
    namespaced
)]
pub struct CounterSpec {
    value: u64,
    payload: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct CounterStatus {
    observed: u64,
}

/// A cluster-scoped test resource.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "test.reef.dev",
    version = "v1",
    kind = "Marker",
    derive = "PartialEq"
)]
pub struct MarkerSpec {
    note: String,
}

/// Upper bound for any single wait on a watch stream.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

enum Backend {
    Memory(reef_datastore::MemoryBackend),
    Etcd {
        backend: reef_datastore::EtcdBackend,
        /// Kept running for the case; stopped on drop.
        _server: reef_lab::etcd::EtcdServer,
    },
    Kubernetes,
}

/// One backend prepared for one case: a datastore, a namespace of the case's own and a name prefix
/// (a shared cluster sees every test's cluster-scoped objects).
struct Harness {
    datastore: Datastore,
    backend: Backend,
    namespace: String,
    prefix: String,
}

impl Harness {
    fn memory() -> Harness {
        let backend = reef_datastore::MemoryBackend::new();
        Harness {
            datastore: Datastore::Memory(backend.clone()),
            backend: Backend::Memory(backend),
            namespace: "conformance".into(),
            prefix: "t".into(),
        }
    }

    async fn etcd() -> Harness {
        let server = reef_lab::etcd::EtcdServer::start()
            .expect("start etcd (Debian etcd-server, /usr/bin/etcd)");
        let backend = reef_datastore::EtcdBackend::connect(EtcdConfig::new([server.endpoint()]))
            .await
            .expect("etcd");
        Harness {
            datastore: Datastore::Etcd(backend.clone()),
            backend: Backend::Etcd {
                backend,
                _server: server,
            },
            namespace: "conformance".into(),
            prefix: "t".into(),
        }
    }

    /// `None` (skip) without KUBECONFIG. Installs the test CRDs and makes a namespace for the case.
    async fn kubernetes(case: &str) -> Option<Harness> {
        if std::env::var_os("KUBECONFIG").is_none() {
            eprintln!(
                "skipped: KUBECONFIG is not set (the Kubernetes conformance cases need a cluster)"
            );
            return None;
        }
        let client = kube::Client::try_default()
            .await
            .expect("Kubernetes client from KUBECONFIG");
        let datastore = Datastore::kubernetes(client);
        let crds = datastore.store::<CustomResourceDefinition>();
        for crd in [Counter::crd(), Marker::crd(), reef_crds::IPAMBlock::crd()] {
            match crds.create(&crd).await {
                Ok(_) | Err(Error::AlreadyExists) => {}
                Err(e) => panic!("install CRD {:?}: {e}", crd.metadata.name),
            }
        }
        let tag = format!("c{}-{}", std::process::id(), case.replace('_', "-"));
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(tag.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        datastore
            .store::<Namespace>()
            .create(&namespace)
            .await
            .expect("create the test namespace");
        // A new CRD is served after a moment: wait (bounded) until listing works.
        let counters = datastore.store::<Counter>();
        for _ in 0..60 {
            if counters.list(Some(&tag)).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Some(Harness {
            datastore,
            backend: Backend::Kubernetes,
            namespace: tag.clone(),
            prefix: tag,
        })
    }

    fn counters(&self) -> Arc<dyn Store<Counter>> {
        self.datastore.store()
    }

    fn counter(&self, name: &str, value: u64) -> Counter {
        let mut counter = Counter::new(
            &self.name(name),
            CounterSpec {
                value,
                payload: "x".repeat(64),
            },
        );
        counter.metadata.namespace = Some(self.namespace.clone());
        counter
    }

    fn name(&self, base: &str) -> String {
        format!("{}-{base}", self.prefix)
    }

    fn ns(&self) -> Option<&str> {
        Some(&self.namespace)
    }

    /// Compacts the history up to `revision`; `false` when the backend cannot be told to.
    async fn compact(&self, revision: &Revision) -> bool {
        let revision = numeric(revision);
        match &self.backend {
            Backend::Memory(backend) => backend.compact(revision),
            Backend::Etcd { backend, .. } => backend.compact(revision).await.expect("compact"),
            Backend::Kubernetes => return false,
        }
        true
    }
}

fn numeric(revision: &Revision) -> u64 {
    revision
        .as_u64()
        .unwrap_or_else(|| panic!("revision {revision} is not numeric"))
}

fn revision_of<K: Object>(obj: &K) -> Revision {
    Revision::of(obj).expect("stored objects carry metadata.resourceVersion")
}

async fn next_event<K: Object>(stream: &mut WatchStream<K>) -> WatchEvent<K> {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch error: {e}"),
        Ok(None) => panic!("watch stream ended"),
        Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}"),
    }
}

/// What a change looks like independent of revisions: ("added" | "modified" | "deleted", name, value).
fn summary(event: &WatchEvent<Counter>) -> (&'static str, String, u64) {
    let kind = match event {
        WatchEvent::Added(_) => "added",
        WatchEvent::Modified(_) => "modified",
        WatchEvent::Deleted(_) => "deleted",
    };
    let obj = event.object();
    (kind, obj.name_any(), obj.spec.value)
}

/// Applies `count` changes to counters (creates, updates, some deletes) and returns their summaries.
async fn write_changes(h: &Harness, tag: &str, count: usize) -> Vec<(&'static str, String, u64)> {
    let counters = h.counters();
    let mut expected = Vec::new();
    let mut current: Option<Counter> = None;
    for i in 0..count as u64 {
        let name = h.name(&format!("{tag}-{}", i / 3));
        current = Some(match (i % 3, current.take()) {
            (0, _) => {
                let created = counters
                    .create(&h.counter(&format!("{tag}-{}", i / 3), i))
                    .await
                    .expect("create");
                expected.push(("added", name, i));
                created
            }
            (1, Some(mut obj)) => {
                obj.spec.value = i;
                let updated = counters.update(&obj).await.expect("update");
                expected.push(("modified", name, i));
                updated
            }
            (_, Some(obj)) => {
                counters
                    .delete(h.ns(), &name, Some(&revision_of(&obj)))
                    .await
                    .expect("delete");
                expected.push(("deleted", name, obj.spec.value));
                continue;
            }
            (_, None) => unreachable!("every third change creates"),
        });
    }
    expected
}

async fn create_get_list(h: Harness) {
    let counters = h.counters();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let created = counters
            .create(&h.counter(name, i as u64))
            .await
            .expect("create");
        assert_eq!(created.spec.value, i as u64);
        let got = counters
            .get(h.ns(), &h.name(name))
            .await
            .expect("get")
            .expect("created object is found");
        assert_eq!(got.spec, created.spec);
        assert_eq!(revision_of(&got), revision_of(&created));
        assert!(
            got.metadata.creation_timestamp.is_some(),
            "the store stamps the creation time"
        );
    }
    let (listed, revision) = counters.list(h.ns()).await.expect("list");
    let names: BTreeSet<String> = listed.iter().map(ResourceExt::name_any).collect();
    assert_eq!(names, ["a", "b", "c"].iter().map(|n| h.name(n)).collect());
    for obj in &listed {
        assert!(
            numeric(&revision_of(obj)) <= numeric(&revision),
            "list revision covers its objects"
        );
    }
    assert_eq!(
        counters
            .get(h.ns(), &h.name("missing"))
            .await
            .expect("get missing"),
        None
    );
    // A namespaced kind needs a namespace; a cluster-scoped one refuses it.
    assert!(matches!(
        counters.get(None, &h.name("a")).await,
        Err(Error::Invalid(_))
    ));
    let markers = h.datastore.store::<Marker>();
    assert!(matches!(
        markers.get(Some("x"), "m").await,
        Err(Error::Invalid(_))
    ));
    let marker = markers
        .create(&Marker::new(
            &h.name("m"),
            MarkerSpec {
                note: "cluster".into(),
            },
        ))
        .await
        .expect("create");
    let got = markers
        .get(None, &h.name("m"))
        .await
        .expect("get")
        .expect("marker");
    assert_eq!(got.spec, marker.spec);
    let (all_markers, _) = markers.list(None).await.expect("list markers");
    assert!(all_markers.iter().any(|m| m.name_any() == h.name("m")));
}

async fn already_exists(h: Harness) {
    let counters = h.counters();
    let first = counters.create(&h.counter("dup", 1)).await.expect("create");
    assert_eq!(
        counters.create(&h.counter("dup", 2)).await,
        Err(Error::AlreadyExists)
    );
    let stored = counters
        .get(h.ns(), &h.name("dup"))
        .await
        .expect("get")
        .expect("dup");
    assert_eq!(
        stored.spec.value, 1,
        "a refused create leaves the object alone"
    );
    assert_eq!(revision_of(&stored), revision_of(&first));
}

async fn update_conflict(h: Harness) {
    let counters = h.counters();
    let created = counters.create(&h.counter("cas", 0)).await.expect("create");
    let mut first = created.clone();
    first.spec.value = 1;
    let updated = counters
        .update(&first)
        .await
        .expect("update at the current revision");
    assert_ne!(revision_of(&updated), revision_of(&created));
    assert_eq!(updated.spec.value, 1);
    let mut stale = created.clone();
    stale.spec.value = 2;
    assert_eq!(
        counters.update(&stale).await,
        Err(Error::Conflict),
        "stale revision"
    );
    let stored = counters
        .get(h.ns(), &h.name("cas"))
        .await
        .expect("get")
        .expect("cas");
    assert_eq!(stored.spec.value, 1, "a refused update changes nothing");
    assert_eq!(revision_of(&stored), revision_of(&updated));
    let mut no_revision = stored.clone();
    no_revision.metadata.resource_version = None;
    assert!(
        matches!(counters.update(&no_revision).await, Err(Error::Invalid(_))),
        "updates must be CAS"
    );
    let mut gone = h.counter("gone", 0);
    gone.metadata.resource_version = Some(revision_of(&stored).to_string());
    assert_eq!(counters.update(&gone).await, Err(Error::NotFound));
}

async fn delete_conflict(h: Harness) {
    let counters = h.counters();
    let created = counters.create(&h.counter("del", 0)).await.expect("create");
    let mut changed = created.clone();
    changed.spec.value = 1;
    let changed = counters.update(&changed).await.expect("update");
    let name = h.name("del");
    assert_eq!(
        counters
            .delete(h.ns(), &name, Some(&revision_of(&created)))
            .await,
        Err(Error::Conflict)
    );
    assert!(
        counters.get(h.ns(), &name).await.expect("get").is_some(),
        "a refused delete keeps the object"
    );
    counters
        .delete(h.ns(), &name, Some(&revision_of(&changed)))
        .await
        .expect("delete at the current revision");
    assert_eq!(counters.get(h.ns(), &name).await.expect("get"), None);
    assert_eq!(
        counters.delete(h.ns(), &name, None).await,
        Err(Error::NotFound)
    );
    assert_eq!(
        counters
            .delete(h.ns(), &name, Some(&revision_of(&changed)))
            .await,
        Err(Error::NotFound)
    );
    counters
        .create(&h.counter("del2", 0))
        .await
        .expect("create");
    counters
        .delete(h.ns(), &h.name("del2"), None)
        .await
        .expect("unconditional delete");
    assert_eq!(
        counters.get(h.ns(), &h.name("del2")).await.expect("get"),
        None
    );
}

async fn watch_order(h: Harness) {
    let counters = h.counters();
    let (_, start) = counters.list(h.ns()).await.expect("list");
    let mut stream = counters.watch(h.ns(), &start).await.expect("watch");
    let expected = write_changes(&h, "w", 60).await;
    let mut last = numeric(&start);
    let mut seen = Vec::new();
    for _ in 0..expected.len() {
        let event = next_event(&mut stream).await;
        let revision = numeric(&event.revision().expect("events carry a revision"));
        assert!(
            revision > last,
            "revisions increase: {revision} after {last}"
        );
        last = revision;
        seen.push(summary(&event));
    }
    assert_eq!(seen, expected);
    // Objects of another namespace are not in this namespace's watch.
    let mut other = h.counter("other-ns", 7);
    other.metadata.namespace = Some(format!("{}-other", h.namespace));
    if matches!(h.backend, Backend::Kubernetes) {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: other.metadata.namespace.clone(),
                ..Default::default()
            },
            ..Default::default()
        };
        h.datastore
            .store::<Namespace>()
            .create(&ns)
            .await
            .expect("namespace");
    }
    counters
        .create(&other)
        .await
        .expect("create in another namespace");
    counters
        .create(&h.counter("after", 8))
        .await
        .expect("create");
    assert_eq!(
        summary(&next_event(&mut stream).await),
        ("added", h.name("after"), 8)
    );
}

async fn watch_resume(h: Harness) {
    let counters = h.counters();
    let (_, start) = counters.list(h.ns()).await.expect("list");
    let first_batch = write_changes(&h, "r1", 30).await;
    let mut stream = counters.watch(h.ns(), &start).await.expect("watch");
    let mut seen = Vec::new();
    let mut resume_at = start.clone();
    for _ in 0..first_batch.len() / 2 {
        let event = next_event(&mut stream).await;
        resume_at = event.revision().expect("revision");
        seen.push(summary(&event));
    }
    drop(stream);
    let second_batch = write_changes(&h, "r2", 30).await;
    let mut stream = counters
        .watch(h.ns(), &resume_at)
        .await
        .expect("watch again");
    let total = first_batch.len() + second_batch.len();
    while seen.len() < total {
        seen.push(summary(&next_event(&mut stream).await));
    }
    let expected: Vec<_> = first_batch.into_iter().chain(second_batch).collect();
    assert_eq!(seen, expected, "resuming loses nothing and repeats nothing");
    // Nothing more is pending: the next event is a new write.
    counters
        .create(&h.counter("final", 99))
        .await
        .expect("create");
    assert_eq!(
        summary(&next_event(&mut stream).await),
        ("added", h.name("final"), 99)
    );
}

async fn expired_revision(h: Harness) {
    let counters = h.counters();
    let (_, old) = counters.list(h.ns()).await.expect("list");
    write_changes(&h, "e", 12).await;
    counters
        .create(&h.counter("kept", 1))
        .await
        .expect("create");
    let (_, current) = counters.list(h.ns()).await.expect("list");
    let from = if h.compact(&current).await {
        old
    } else {
        Revision::new("1")
    };
    match counters.watch(h.ns(), &from).await {
        Err(Error::Expired) => {}
        Ok(mut stream) => match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
            Ok(Some(Err(Error::Expired))) => {}
            other => panic!("watch from a compacted revision: expected Expired, got {other:?}"),
        },
        Err(e) => panic!("watch from a compacted revision: expected Expired, got {e}"),
    }
    // The way out: list again and watch from the list's revision.
    let (objects, revision) = counters.list(h.ns()).await.expect("list after Expired");
    let names: Vec<String> = objects.iter().map(ResourceExt::name_any).collect();
    assert_eq!(names, [h.name("kept")], "the changes leave one counter");
    let mut stream = counters
        .watch(h.ns(), &revision)
        .await
        .expect("watch from the new list");
    counters
        .create(&h.counter("fresh", 5))
        .await
        .expect("create");
    assert_eq!(
        summary(&next_event(&mut stream).await),
        ("added", h.name("fresh"), 5)
    );
}

async fn large_list(h: Harness) {
    const COUNT: usize = 2000;
    const WRITERS: usize = 16;
    let h = Arc::new(h);
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let h = h.clone();
        writers.push(tokio::spawn(async move {
            let counters = h.counters();
            for i in (writer..COUNT).step_by(WRITERS) {
                counters
                    .create(&h.counter(&format!("big-{i:04}"), i as u64))
                    .await
                    .expect("create");
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer task");
    }
    let (listed, _) = h.counters().list(h.ns()).await.expect("list");
    assert_eq!(listed.len(), COUNT);
    let values: BTreeSet<u64> = listed.iter().map(|c| c.spec.value).collect();
    assert_eq!(
        values,
        (0..COUNT as u64).collect(),
        "every object exactly once"
    );
    let (all_namespaces, _) = h.counters().list(None).await.expect("list all namespaces");
    assert!(all_namespaces.len() >= COUNT);
}

async fn concurrent_cas(h: Harness) {
    const TASKS: u64 = 8;
    const INCREMENTS: u64 = 25;
    let h = Arc::new(h);
    h.counters()
        .create(&h.counter("shared", 0))
        .await
        .expect("create");
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let counters = h.counters();
            let mut conflicts = 0u64;
            for _ in 0..INCREMENTS {
                // Bounded retries: with 8 writers a round cannot lose this many times in a row.
                for attempt in 0.. {
                    assert!(attempt < 10_000, "increment kept conflicting");
                    let mut counter = counters
                        .get(h.ns(), &h.name("shared"))
                        .await
                        .expect("get")
                        .expect("shared");
                    counter.spec.value += 1;
                    match counters.update(&counter).await {
                        Ok(_) => break,
                        Err(Error::Conflict) => conflicts += 1,
                        Err(e) => panic!("update: {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.expect("task");
    }
    let counter = h
        .counters()
        .get(h.ns(), &h.name("shared"))
        .await
        .expect("get")
        .expect("shared");
    assert_eq!(
        counter.spec.value,
        TASKS * INCREMENTS,
        "no lost update ({conflicts} conflicts retried)"
    );
}

async fn status_update(h: Harness) {
    let counters = h.counters();
    let created = counters.create(&h.counter("st", 3)).await.expect("create");
    let mut observed = created.clone();
    observed.status = Some(CounterStatus { observed: 3 });
    let updated = counters
        .update_status(&observed)
        .await
        .expect("status update");
    assert_eq!(updated.status, observed.status);
    let got = counters
        .get(h.ns(), &h.name("st"))
        .await
        .expect("get")
        .expect("st");
    assert_eq!(got.status, observed.status);
    assert_eq!(got.spec, created.spec);
    assert_eq!(revision_of(&got), revision_of(&updated));
    assert_eq!(
        counters.update_status(&observed).await,
        Err(Error::Conflict),
        "status updates are CAS too"
    );
}

/// A real resource type of Reef (cluster-scoped, nested spec) through the same calls.
async fn ipam_block(h: Harness) {
    use reef_crds::{IPAMBlock, IPAMBlockSpec};
    let blocks = h.datastore.store::<IPAMBlock>();
    let name = h.name("10-244-3-64-26");
    let spec: IPAMBlockSpec = serde_json::from_value(
        serde_json::json!({"cidr": "10.244.3.64/26", "affinity": "host:node-a"}),
    )
    .expect("IPAMBlock spec");
    let created = blocks
        .create(&IPAMBlock::new(&name, spec))
        .await
        .expect("create");
    let (_, start) = blocks.list(None).await.expect("list");
    let mut stream = blocks.watch(None, &start).await.expect("watch");
    let mut claimed = created.clone();
    claimed.spec.sequence_number += 1;
    let claimed = blocks.update(&claimed).await.expect("update");
    assert_eq!(blocks.update(&created).await, Err(Error::Conflict));
    let got = blocks.get(None, &name).await.expect("get").expect("block");
    assert_eq!(got.spec, claimed.spec);
    match next_event(&mut stream).await {
        WatchEvent::Modified(block) => assert_eq!(block.spec, claimed.spec),
        other => panic!("expected Modified, got {other:?}"),
    }
    blocks
        .delete(None, &name, Some(&revision_of(&claimed)))
        .await
        .expect("delete");
    assert!(
        matches!(next_event(&mut stream).await, WatchEvent::Deleted(block) if block.spec == claimed.spec)
    );
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Harness::memory()).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Harness::etcd().await).await;
                }
            )*
        }
        mod kubernetes {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs KUBECONFIG: a Kubernetes cluster"]
                async fn $case() {
                    if let Some(harness) = super::Harness::kubernetes(stringify!($case)).await {
                        super::$case(harness).await;
                    }
                }
            )*
        }
    };
}

conformance!(
    create_get_list,
    already_exists,
    update_conflict,
    delete_conflict,
    watch_order,
    watch_resume,
    expired_revision,
    large_list,
    concurrent_cas,
    status_update,
    ipam_block,
);
