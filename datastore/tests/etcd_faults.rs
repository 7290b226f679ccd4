//! etcd faults: a stopped or frozen etcd makes calls fail with `Unavailable` in bounded time (never a
//! hang), open watches end with `Unavailable`, and everything works again once etcd is back.

use std::time::Duration;

use futures::StreamExt;
use kube::CustomResource;
use reef_datastore::{Datastore, Error, EtcdConfig, Revision, Store, WatchEvent, WatchStream};
use reef_lab::etcd::EtcdServer;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "test.reef.dev",
    version = "v1",
    kind = "Gauge",
    derive = "PartialEq"
)]
pub struct GaugeSpec {
    value: u64,
}

/// Far above the store's own 1 s call timeout: hitting this bound means a call hung.
const HANG: Duration = Duration::from_secs(30);

async fn datastore(server: &EtcdServer) -> Datastore {
    let config = EtcdConfig {
        timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(500),
        ..EtcdConfig::new([server.endpoint()])
    };
    Datastore::etcd(config).await.expect("etcd datastore")
}

/// Runs a call that must fail fast with `Unavailable` naming the endpoint.
async fn expect_unavailable<T>(
    endpoint: &str,
    call: impl std::future::Future<Output = Result<T, Error>>,
) {
    match tokio::time::timeout(HANG, call).await {
        Ok(Err(Error::Unavailable(message))) => {
            assert!(
                message.contains(endpoint),
                "the message names the endpoint: {message}"
            )
        }
        Ok(Err(e)) => panic!("expected Unavailable, got {e}"),
        Ok(Ok(_)) => panic!("expected Unavailable, got a success"),
        Err(_) => panic!("the call hung for {HANG:?}"),
    }
}

async fn expect_stream_unavailable(stream: &mut WatchStream<Gauge>) {
    match tokio::time::timeout(HANG, stream.next()).await {
        Ok(Some(Err(Error::Unavailable(_)))) => {}
        Ok(other) => panic!("expected the watch to fail with Unavailable, got {other:?}"),
        Err(_) => panic!("the watch neither failed nor ended within {HANG:?}"),
    }
    let end = tokio::time::timeout(HANG, stream.next()).await;
    assert!(matches!(end, Ok(None)), "the watch ends after its error");
}

/// The first call after etcd comes back may meet the channel's reconnect backoff: retry, bounded.
async fn get_when_back(gauges: &dyn Store<Gauge>, name: &str) -> Gauge {
    for _ in 0..100 {
        match gauges.get(None, name).await {
            Ok(found) => return found.expect("the object survived the restart"),
            Err(Error::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("get after restart: {e}"),
        }
    }
    panic!("etcd did not answer again after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_etcd_is_unavailable_and_recovers_after_restart() {
    let mut server = EtcdServer::start().expect("start etcd");
    let endpoint = server.endpoint();
    let ds = datastore(&server).await;
    let gauges = ds.store::<Gauge>();
    let created = gauges
        .create(&Gauge::new("g", GaugeSpec { value: 1 }))
        .await
        .expect("create");
    let (_, listed_at) = gauges.list(None).await.expect("list");
    let mut watch = gauges.watch(None, &listed_at).await.expect("watch");

    server.stop();
    expect_unavailable(&endpoint, gauges.get(None, "g")).await;
    expect_unavailable(&endpoint, gauges.list(None)).await;
    expect_unavailable(&endpoint, gauges.update(&created)).await;
    expect_unavailable(&endpoint, gauges.watch(None, &listed_at)).await;
    expect_stream_unavailable(&mut watch).await;

    server.start_again().expect("start etcd again");
    let stored = get_when_back(gauges.as_ref(), "g").await;
    assert_eq!(
        stored, created,
        "same object, same revision after the restart"
    );
    let mut next = stored.clone();
    next.spec.value = 2;
    let updated = gauges
        .update(&next)
        .await
        .expect("update after the restart");
    // A watch resumed from the last revision seen before the outage gets what happened since.
    let mut watch = gauges
        .watch(None, &listed_at)
        .await
        .expect("watch after the restart");
    match tokio::time::timeout(HANG, watch.next()).await {
        Ok(Some(Ok(WatchEvent::Modified(gauge)))) => assert_eq!(gauge, updated),
        other => panic!("expected the update, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_etcd_is_unavailable_within_the_call_timeout() {
    let server = EtcdServer::start().expect("start etcd");
    let endpoint = server.endpoint();
    let ds = datastore(&server).await;
    let gauges = ds.store::<Gauge>();
    gauges
        .create(&Gauge::new("g", GaugeSpec { value: 1 }))
        .await
        .expect("create");
    let mut watch = gauges.watch(None, &Revision::from(0)).await.expect("watch");
    assert!(matches!(watch.next().await, Some(Ok(WatchEvent::Added(_)))));

    // Frozen: connections stay open and nothing answers, so only the timeouts end the calls.
    server.freeze().expect("freeze etcd");
    expect_unavailable(&endpoint, gauges.get(None, "g")).await;
    expect_unavailable(
        &endpoint,
        gauges.create(&Gauge::new("h", GaugeSpec { value: 2 })),
    )
    .await;
    // The HTTP/2 keep-alive notices the silent server under the idle watch.
    expect_stream_unavailable(&mut watch).await;

    server.thaw().expect("thaw etcd");
    let stored = get_when_back(gauges.as_ref(), "g").await;
    assert_eq!(stored.spec.value, 1);
}
