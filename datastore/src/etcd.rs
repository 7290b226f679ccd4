//! etcd v3 backend. Keys `/reef/v1/<plural>/<namespace or "cluster">/<name>`, values the object JSON
//! without `resourceVersion`; the revision of an object is its key's `mod_revision`. `create` is a
//! transaction on `create_revision == 0`, `update` and `delete` on `mod_revision == expected`; `list`
//! pages through one consistent revision; `watch` starts at `from + 1`.
//!
//! Every call is bounded by [`EtcdConfig::timeout`]: a down etcd gives `Unavailable` naming the endpoints,
//! never a hang. The gRPC channel reconnects by itself, so calls succeed again once etcd is back.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue,
    Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;

use crate::{Error, Object, Revision, Store, WatchEvent, WatchStream, codec, end_after_error};

/// Objects fetched per range request of a list; keeps each answer far below gRPC's 4 MiB message limit.
const LIST_PAGE: i64 = 256;

/// Largest watch answer accepted.
const WATCH_MESSAGE_LIMIT: usize = 64 * 1024 * 1024;

/// How to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Upper bound for each call (a list counts once per page). Default 5 s.
    pub timeout: Duration,
    /// Upper bound for opening a connection. Default 2 s.
    pub connect_timeout: Duration,
}

impl EtcdConfig {
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// A connection to etcd. Clones share it.
#[derive(Clone)]
pub struct EtcdBackend {
    /// Boxed: the client is large, and the backends are moved around in `Datastore`.
    client: Arc<Client>,
    config: Arc<EtcdConfig>,
}

impl EtcdBackend {
    /// Sets up the connection; it is opened lazily, so an unreachable etcd shows on the first call.
    pub async fn connect(config: EtcdConfig) -> Result<Self, Error> {
        if config.endpoints.is_empty() {
            return Err(Error::Invalid("no etcd endpoints configured".into()));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            // HTTP/2 pings notice a dead peer even when no call is running (e.g. under a silent watch).
            .with_keep_alive(config.timeout, config.timeout)
            .with_keep_alive_while_idle(true);
        let client = tokio::time::timeout(
            config.timeout,
            Client::connect(&config.endpoints, Some(options)),
        )
        .await
        .map_err(|_| unavailable(&config, "connect", "no answer in time"))?
        .map_err(|e| map_error(&config, "connect", e))?;
        Ok(Self {
            client: Arc::new(client),
            config: Arc::new(config),
        })
    }

    pub fn store<K: Object>(&self) -> EtcdStore<K> {
        EtcdStore {
            backend: self.clone(),
            kind: PhantomData,
        }
    }

    /// Compacts the history up to `revision`: watches from older revisions then get `Expired`.
    pub async fn compact(&self, revision: u64) -> Result<(), Error> {
        let revision = to_etcd_revision(revision)?;
        let mut kv = self.client.kv_client();
        self.call("compact", async move { kv.compact(revision, None).await })
            .await
            .map(drop)
    }

    /// Runs one etcd call within the configured timeout.
    async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.config.timeout, call).await {
            Ok(result) => result.map_err(|e| map_error(&self.config, what, e)),
            Err(_) => Err(unavailable(
                &self.config,
                what,
                &format!("no answer within {:?}", self.config.timeout),
            )),
        }
    }
}

fn unavailable(config: &EtcdConfig, what: &str, detail: &str) -> Error {
    Error::Unavailable(format!(
        "etcd at {} failed {what}: {detail}; check that etcd is running and reachable at that address \
         (the datastore's etcd endpoints setting)",
        config.endpoints.join(",")
    ))
}

fn map_error(config: &EtcdConfig, what: &str, error: etcd_client::Error) -> Error {
    use tonic::Code;
    match &error {
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            Code::OutOfRange if status.message().contains("compacted") => Error::Expired,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                unavailable(config, what, &error.to_string())
            }
            Code::InvalidArgument => {
                Error::Invalid(format!("etcd rejected {what}: {}", status.message()))
            }
            _ => Error::Backend(format!("etcd {what}: {error}")),
        },
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            unavailable(config, what, &error.to_string())
        }
        _ => Error::Backend(format!("etcd {what}: {error}")),
    }
}

fn to_etcd_revision(revision: u64) -> Result<i64, Error> {
    i64::try_from(revision).map_err(|_| Error::Invalid(format!("revision {revision} out of range")))
}

/// etcd revisions are positive; a negative one would be a server bug.
fn from_etcd_revision(revision: i64) -> Result<u64, Error> {
    u64::try_from(revision)
        .map_err(|_| Error::Backend(format!("etcd returned negative revision {revision}")))
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<u64, Error> {
    from_etcd_revision(
        header
            .ok_or_else(|| Error::Backend("etcd answer without header".into()))?
            .revision(),
    )
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // Only an all-0xff prefix gets here; "\0" means "to the end of the keyspace" to etcd.
    vec![0]
}

fn decode_kv<K: Object>(kv: &KeyValue) -> Result<K, Error> {
    let key = String::from_utf8_lossy(kv.key());
    codec::decode(&key, kv.value(), from_etcd_revision(kv.mod_revision())?)
}

/// An expected revision for a compare: etcd compares a missing key's `mod_revision` as 0, so 0 would
/// match an absent object and must not be sent.
fn compare_revision(revision: u64) -> Result<i64, Error> {
    if revision == 0 {
        return Err(Error::Invalid(
            "revision 0 is never a stored object's revision".into(),
        ));
    }
    to_etcd_revision(revision)
}

/// The [`Store`] of one kind in etcd.
pub struct EtcdStore<K> {
    backend: EtcdBackend,
    kind: PhantomData<fn() -> K>,
}

impl<K: Object> EtcdStore<K> {
    /// A compare-and-swap transaction on `key`'s `mod_revision`: runs `operation` if it is `expected`;
    /// otherwise tells whether the key is gone (`NotFound`) or changed (`Conflict`). Returns the new revision.
    async fn swap(
        &self,
        what: &str,
        key: String,
        expected: u64,
        operation: TxnOp,
    ) -> Result<u64, Error> {
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                compare_revision(expected)?,
            )])
            .and_then([operation])
            .or_else([TxnOp::get(key, None)]);
        let mut kv = self.backend.client.kv_client();
        let response = self
            .backend
            .call(what, async move { kv.txn(txn).await })
            .await?;
        if response.succeeded() {
            return header_revision(response.header());
        }
        match response.op_responses().first() {
            Some(TxnOpResponse::Get(get)) if get.kvs().is_empty() => Err(Error::NotFound),
            Some(TxnOpResponse::Get(_)) => Err(Error::Conflict),
            _ => Err(Error::Backend(format!(
                "etcd {what}: unexpected transaction answer"
            ))),
        }
    }
}

#[async_trait]
impl<K: Object> Store<K> for EtcdStore<K> {
    async fn get(&self, namespace: Option<&str>, name: &str) -> Result<Option<K>, Error> {
        let key = codec::object_key::<K>(namespace, name)?;
        let mut kv = self.backend.client.kv_client();
        let response = self
            .backend
            .call("get", async move { kv.get(key, None).await })
            .await?;
        response.kvs().first().map(decode_kv).transpose()
    }

    async fn list(&self, namespace: Option<&str>) -> Result<(Vec<K>, Revision), Error> {
        let prefix = codec::list_prefix::<K>(namespace)?;
        let end = prefix_end(&prefix);
        let mut objects = Vec::new();
        let mut start = prefix.into_bytes();
        // Pages after the first are read at the first page's revision, so the list is one snapshot.
        let mut revision = None;
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if let Some(revision) = revision {
                options = options.with_revision(to_etcd_revision(revision)?);
            }
            let mut kv = self.backend.client.kv_client();
            let key = start.clone();
            let response = self
                .backend
                .call("list", async move { kv.get(key, Some(options)).await })
                .await?;
            let page_revision = *revision.get_or_insert(header_revision(response.header())?);
            for kv in response.kvs() {
                objects.push(decode_kv(kv)?);
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    // The next page starts just after the last key seen.
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok((objects, page_revision.into())),
            }
        }
    }

    async fn create(&self, obj: &K) -> Result<K, Error> {
        let key = codec::key_of(obj)?;
        let obj = codec::new_object(obj);
        let value = codec::encode(&obj)?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value.clone(), None)]);
        let mut kv = self.backend.client.kv_client();
        let response = self
            .backend
            .call("create", async move { kv.txn(txn).await })
            .await?;
        if !response.succeeded() {
            return Err(Error::AlreadyExists);
        }
        codec::decode(&key, &value, header_revision(response.header())?)
    }

    async fn update(&self, obj: &K) -> Result<K, Error> {
        let key = codec::key_of(obj)?;
        let expected = codec::expected_revision(obj)?;
        let value = codec::encode(obj)?;
        let put = TxnOp::put(key.clone(), value.clone(), None);
        let revision = self.swap("update", key.clone(), expected, put).await?;
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
        match expected {
            Some(expected) => {
                let expected = codec::parse_revision(expected.as_str())?;
                let delete = TxnOp::delete(key.clone(), None::<DeleteOptions>);
                self.swap("delete", key, expected, delete).await.map(drop)
            }
            None => {
                let mut kv = self.backend.client.kv_client();
                let response = self
                    .backend
                    .call("delete", async move { kv.delete(key, None).await })
                    .await?;
                if response.deleted() == 0 {
                    Err(Error::NotFound)
                } else {
                    Ok(())
                }
            }
        }
    }

    async fn watch(
        &self,
        namespace: Option<&str>,
        from: &Revision,
    ) -> Result<WatchStream<K>, Error> {
        let prefix = codec::list_prefix::<K>(namespace)?;
        let start = to_etcd_revision(codec::parse_revision(from.as_str())?.saturating_add(1))?;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start)
            .with_prev_key();
        // A catching-up watch may get large batches: allow more than gRPC's default 4 MiB per answer.
        let mut client = self
            .backend
            .client
            .watch_client()
            .max_decoding_message_size(WATCH_MESSAGE_LIMIT);
        let mut stream = self
            .backend
            .call(
                "watch",
                async move { client.watch(prefix, Some(options)).await },
            )
            .await?;
        // The first answer confirms the watch, or cancels it at once when `from` was compacted.
        let created = self.backend.call("watch", stream.message()).await?;
        match created {
            Some(response) if response.canceled() => {
                return Err(cancelled(&self.backend.config, &response));
            }
            Some(response) if !response.events().is_empty() => {
                return Err(Error::Backend(
                    "etcd sent events before confirming the watch".into(),
                ));
            }
            Some(_) => {}
            None => {
                return Err(unavailable(
                    &self.backend.config,
                    "watch",
                    "stream closed at once",
                ));
            }
        }
        let config = self.backend.config.clone();
        let batches = futures::stream::unfold(Some(stream), move |stream| {
            let config = config.clone();
            async move {
                let mut stream = stream?;
                let batch: Vec<Result<WatchEvent<K>, Error>> = match stream.message().await {
                    Ok(Some(response)) if response.canceled() => {
                        vec![Err(cancelled(&config, &response))]
                    }
                    Ok(Some(response)) => response.events().iter().map(watch_event::<K>).collect(),
                    Ok(None) => vec![Err(unavailable(&config, "watch", "stream closed"))],
                    Err(e) => vec![Err(map_error(&config, "watch", e))],
                };
                let failed = batch.iter().any(Result::is_err);
                Some((futures::stream::iter(batch), (!failed).then_some(stream)))
            }
        });
        Ok(end_after_error(batches.flatten()))
    }
}

fn cancelled(config: &EtcdConfig, response: &etcd_client::WatchResponse) -> Error {
    if response.compact_revision() > 0 {
        Error::Expired
    } else {
        unavailable(
            config,
            "watch",
            &format!("watch cancelled: {}", response.cancel_reason()),
        )
    }
}

fn watch_event<K: Object>(event: &etcd_client::Event) -> Result<WatchEvent<K>, Error> {
    let kv = event
        .kv()
        .ok_or_else(|| Error::Backend("etcd watch event without key".into()))?;
    match event.event_type() {
        EventType::Put if kv.create_revision() == kv.mod_revision() => {
            decode_kv(kv).map(WatchEvent::Added)
        }
        EventType::Put => decode_kv(kv).map(WatchEvent::Modified),
        EventType::Delete => {
            // The deleted object is its last value at the revision of the delete. Without it (compacted
            // already) the caller cannot know what went away: list again.
            let previous = event.prev_kv().ok_or(Error::Expired)?;
            let key = String::from_utf8_lossy(kv.key());
            codec::decode(
                &key,
                previous.value(),
                from_etcd_revision(kv.mod_revision())?,
            )
            .map(WatchEvent::Deleted)
        }
    }
}
