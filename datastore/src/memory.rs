//! In-memory backend for unit tests: etcd's model in a map. One revision counter for all kinds, real
//! compare-and-swap, a history of changes for watches, and [`MemoryBackend::compact`] to make old revisions
//! expire.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::broadcast;

use crate::{Error, Object, Revision, Store, WatchEvent, WatchStream, codec, end_after_error};

/// Changes a live watcher may fall behind by before it gets `Expired`.
const WATCH_BUFFER: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeKind {
    Created,
    Modified,
    Deleted,
}

/// One write in the history; `value` is the new value, or the last one for a delete.
#[derive(Debug)]
struct Change {
    revision: u64,
    key: String,
    kind: ChangeKind,
    value: Arc<[u8]>,
}

struct Entry {
    value: Arc<[u8]>,
    mod_revision: u64,
}

#[derive(Default)]
struct State {
    revision: u64,
    compacted: u64,
    objects: BTreeMap<String, Entry>,
    /// Changes after `compacted`, in revision order.
    history: Vec<Arc<Change>>,
}

struct Shared {
    state: Mutex<State>,
    changes: broadcast::Sender<Arc<Change>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-written (each write is one insert or
        // remove plus one push), so a poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies one write under the lock and tells the watchers.
    fn commit(&self, state: &mut State, key: String, kind: ChangeKind, value: Arc<[u8]>) -> u64 {
        state.revision += 1;
        let revision = state.revision;
        match kind {
            ChangeKind::Deleted => {
                state.objects.remove(&key);
            }
            ChangeKind::Created | ChangeKind::Modified => {
                state.objects.insert(
                    key.clone(),
                    Entry {
                        value: value.clone(),
                        mod_revision: revision,
                    },
                );
            }
        }
        let change = Arc::new(Change {
            revision,
            key,
            kind,
            value,
        });
        state.history.push(change.clone());
        // No receiver is not an error: nobody is watching.
        let _ = self.changes.send(change);
        revision
    }
}

/// The in-memory datastore. Clones share the same data.
#[derive(Clone)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(WATCH_BUFFER);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changes,
            }),
        }
    }

    pub fn store<K: Object>(&self) -> MemoryStore<K> {
        MemoryStore {
            shared: self.shared.clone(),
            kind: PhantomData,
        }
    }

    /// The current store revision (the revision of the last write).
    pub fn revision(&self) -> u64 {
        self.shared.lock().revision
    }

    /// Forgets the history up to and including `revision`, as etcd compaction does: watching from an
    /// older revision then gives `Expired`.
    pub fn compact(&self, revision: u64) {
        let mut state = self.shared.lock();
        let revision = revision.min(state.revision);
        state.compacted = state.compacted.max(revision);
        state.history.retain(|change| change.revision > revision);
    }
}

/// The [`Store`] of one kind in a [`MemoryBackend`].
pub struct MemoryStore<K> {
    shared: Arc<Shared>,
    kind: PhantomData<fn() -> K>,
}

fn watch_event<K: Object>(change: &Change) -> Result<WatchEvent<K>, Error> {
    let obj = codec::decode::<K>(&change.key, &change.value, change.revision)?;
    Ok(match change.kind {
        ChangeKind::Created => WatchEvent::Added(obj),
        ChangeKind::Modified => WatchEvent::Modified(obj),
        ChangeKind::Deleted => WatchEvent::Deleted(obj),
    })
}

#[async_trait]
impl<K: Object> Store<K> for MemoryStore<K> {
    async fn get(&self, namespace: Option<&str>, name: &str) -> Result<Option<K>, Error> {
        let key = codec::object_key::<K>(namespace, name)?;
        let state = self.shared.lock();
        state
            .objects
            .get(&key)
            .map(|entry| codec::decode(&key, &entry.value, entry.mod_revision))
            .transpose()
    }

    async fn list(&self, namespace: Option<&str>) -> Result<(Vec<K>, Revision), Error> {
        let prefix = codec::list_prefix::<K>(namespace)?;
        let state = self.shared.lock();
        let objects = state
            .objects
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .map(|(key, entry)| codec::decode(key, &entry.value, entry.mod_revision))
            .collect::<Result<Vec<K>, Error>>()?;
        Ok((objects, state.revision.into()))
    }

    async fn create(&self, obj: &K) -> Result<K, Error> {
        let key = codec::key_of(obj)?;
        let obj = codec::new_object(obj);
        let value: Arc<[u8]> = codec::encode(&obj)?.into();
        let mut state = self.shared.lock();
        if state.objects.contains_key(&key) {
            return Err(Error::AlreadyExists);
        }
        let revision =
            self.shared
                .commit(&mut state, key.clone(), ChangeKind::Created, value.clone());
        codec::decode(&key, &value, revision)
    }

    async fn update(&self, obj: &K) -> Result<K, Error> {
        let key = codec::key_of(obj)?;
        let expected = codec::expected_revision(obj)?;
        let value: Arc<[u8]> = codec::encode(obj)?.into();
        let mut state = self.shared.lock();
        match state.objects.get(&key) {
            None => return Err(Error::NotFound),
            Some(entry) if entry.mod_revision != expected => return Err(Error::Conflict),
            Some(_) => {}
        }
        let revision =
            self.shared
                .commit(&mut state, key.clone(), ChangeKind::Modified, value.clone());
        codec::decode(&key, &value, revision)
    }

    async fn update_status(&self, obj: &K) -> Result<K, Error> {
        self.update(obj).await
    }

    async fn delete(
        &self,
        namespace: Option<&str>,
        name: &str,
        expected: Option<&Revision>,
    ) -> Result<(), Error> {
        let key = codec::object_key::<K>(namespace, name)?;
        let expected = expected
            .map(|revision| codec::parse_revision(revision.as_str()))
            .transpose()?;
        let mut state = self.shared.lock();
        let value = match state.objects.get(&key) {
            None => return Err(Error::NotFound),
            Some(entry) if expected.is_some_and(|expected| expected != entry.mod_revision) => {
                return Err(Error::Conflict);
            }
            Some(entry) => entry.value.clone(),
        };
        self.shared
            .commit(&mut state, key, ChangeKind::Deleted, value);
        Ok(())
    }

    async fn watch(
        &self,
        namespace: Option<&str>,
        from: &Revision,
    ) -> Result<WatchStream<K>, Error> {
        let prefix = codec::list_prefix::<K>(namespace)?;
        let from = codec::parse_revision(from.as_str())?;
        // Subscribing and copying the history under one lock: no change is missed or seen twice.
        let (replay, receiver) = {
            let state = self.shared.lock();
            if from < state.compacted {
                return Err(Error::Expired);
            }
            let start = state
                .history
                .partition_point(|change| change.revision <= from);
            let replay: Vec<Arc<Change>> = state.history[start..]
                .iter()
                .filter(|change| change.key.starts_with(&prefix))
                .cloned()
                .collect();
            (replay, self.shared.changes.subscribe())
        };
        let live = futures::stream::unfold(receiver, move |mut receiver| {
            let prefix = prefix.clone();
            async move {
                loop {
                    match receiver.recv().await {
                        Ok(change) if change.key.starts_with(&prefix) => {
                            return Some((Ok(change), receiver));
                        }
                        Ok(_) => continue,
                        // Fell behind: changes were dropped, so the caller must list again.
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            return Some((Err(Error::Expired), receiver));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        let changes = futures::stream::iter(replay.into_iter().map(Ok)).chain(live);
        Ok(end_after_error(changes.map(|change| {
            change.and_then(|change| watch_event::<K>(&change))
        })))
    }
}
