//! One watcher task per resource kind: list, then watch from the list's revision, sending deltas on a
//! bounded channel. `Expired` lists again; an unavailable datastore is retried with a backoff, watching
//! on from the last revision seen. Meanwhile nothing is sent, so the snapshot (and BGP) stay as they
//! were; a re-list replaces the kind whole, which changes nothing when nothing changed.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use reef_crds::{BGPConfiguration, BGPFilter, BGPPeer, BlockAffinity, IPAMBlock, IPPool, ReefNode};
use reef_datastore::{Datastore, Error, Object, Revision, Store, WatchEvent};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::calc::{Change, Delta};

/// Backoff after a failed list or watch: doubles up to the maximum.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a watcher reports.
#[derive(Debug)]
pub enum Event {
    /// Boxed: deltas carry whole objects and lists.
    Delta(Box<Delta>),
    /// A list or watch of `kind` failed (the datastore is down or refuses): retried.
    Failed { kind: &'static str, error: Error },
}

/// The watcher tasks; they end when this is dropped (or when the receiver is gone).
pub struct Watchers {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The kinds node mode watches (for the initial sync).
pub const KINDS: [&str; 8] = [
    "BGPConfiguration",
    "BGPPeer",
    "BGPFilter",
    "ReefNode",
    "IPPool",
    "IPAMBlock",
    "BlockAffinity",
    "Secret",
];

/// The kind of a delta, one of [`KINDS`].
pub fn kind(delta: &Delta) -> &'static str {
    match delta {
        Delta::BgpConfiguration(_) => KINDS[0],
        Delta::BgpPeer(_) => KINDS[1],
        Delta::BgpFilter(_) => KINDS[2],
        Delta::Node(_) => KINDS[3],
        Delta::Pool(_) => KINDS[4],
        Delta::Block(_) => KINDS[5],
        Delta::Affinity(_) => KINDS[6],
        Delta::Secret(_) => KINDS[7],
    }
}

/// Starts one watcher per kind; Secrets only in `secrets_namespace`.
pub fn start(
    datastore: &Datastore,
    secrets_namespace: &str,
    events: mpsc::Sender<Event>,
) -> Watchers {
    let tasks = vec![
        spawn::<BGPConfiguration>(datastore, None, Delta::BgpConfiguration, &events),
        spawn::<BGPPeer>(datastore, None, Delta::BgpPeer, &events),
        spawn::<BGPFilter>(datastore, None, Delta::BgpFilter, &events),
        spawn::<ReefNode>(datastore, None, Delta::Node, &events),
        spawn::<IPPool>(datastore, None, Delta::Pool, &events),
        spawn::<IPAMBlock>(datastore, None, Delta::Block, &events),
        spawn::<BlockAffinity>(datastore, None, Delta::Affinity, &events),
        spawn::<Secret>(
            datastore,
            Some(secrets_namespace.to_string()),
            Delta::Secret,
            &events,
        ),
    ];
    Watchers { tasks }
}

fn spawn<K: Object>(
    datastore: &Datastore,
    namespace: Option<String>,
    wrap: fn(Change<K>) -> Delta,
    events: &mpsc::Sender<Event>,
) -> JoinHandle<()> {
    tokio::spawn(watch_kind(
        datastore.store::<K>(),
        namespace,
        wrap,
        events.clone(),
    ))
}

/// Sleeps the current backoff and doubles it.
async fn back_off(backoff: &mut Duration) {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

async fn watch_kind<K: Object>(
    store: Arc<dyn Store<K>>,
    namespace: Option<String>,
    wrap: fn(Change<K>) -> Delta,
    events: mpsc::Sender<Event>,
) {
    let kind = kind(&wrap(Change::Replaced(Vec::new())));
    let namespace = namespace.as_deref();
    let mut backoff = MIN_BACKOFF;
    loop {
        let (objects, mut revision) = match store.list(namespace).await {
            Ok(listed) => listed,
            Err(error) => {
                if events.send(Event::Failed { kind, error }).await.is_err() {
                    return;
                }
                back_off(&mut backoff).await;
                continue;
            }
        };
        debug!(kind, objects = objects.len(), %revision, "listed");
        if events
            .send(Event::Delta(Box::new(wrap(Change::Replaced(objects)))))
            .await
            .is_err()
        {
            return;
        }
        backoff = MIN_BACKOFF;
        // Watch until the history is gone (Expired): then list again.
        loop {
            match watch_from(&*store, namespace, &mut revision, wrap, &events).await {
                Ok(()) if events.is_closed() => return,
                Ok(()) => tokio::time::sleep(MIN_BACKOFF).await,
                Err(Error::Expired) => {
                    info!(kind, %revision, "watch expired: listing again");
                    break;
                }
                Err(error) => {
                    if events.is_closed() {
                        return;
                    }
                    warn!(kind, %error, "watch failed: retrying");
                    if events.send(Event::Failed { kind, error }).await.is_err() {
                        return;
                    }
                    back_off(&mut backoff).await;
                }
            }
        }
    }
}

/// Watches from `revision` until the stream ends (`Ok`) or fails, sending each change and moving
/// `revision` along.
async fn watch_from<K: Object>(
    store: &dyn Store<K>,
    namespace: Option<&str>,
    revision: &mut Revision,
    wrap: fn(Change<K>) -> Delta,
    events: &mpsc::Sender<Event>,
) -> Result<(), Error> {
    let mut stream = store.watch(namespace, revision).await?;
    while let Some(item) = stream.next().await {
        let event = item?;
        if let Some(at) = event.revision() {
            *revision = at;
        }
        let change = match event {
            WatchEvent::Added(obj) | WatchEvent::Modified(obj) => Change::Stored(obj),
            WatchEvent::Deleted(obj) => Change::Deleted(obj),
        };
        if events
            .send(Event::Delta(Box::new(wrap(change))))
            .await
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}
