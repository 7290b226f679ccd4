//! Kubernetes backend: the resource's REST endpoints through a [`kube::Client`], `resourceVersion` as the
//! revision. Updates are `PUT`s carrying the read `resourceVersion` and deletes carry it as a precondition,
//! so the API server does the compare-and-swap: 409 maps to `Conflict`, 404 to `NotFound`, 410 Gone to
//! `Expired`. Lists page with continue tokens (one consistent snapshot); watches skip bookmarks.
//!
//! Requests are built with [`kube::core::Request`] rather than `kube::Api` because `Api::namespaced` needs
//! the scope at compile time, while the [`Store`] trait takes it as a runtime `Option`.

use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kube::api::{
    DeleteParams, GetParams, ListParams, ObjectList, PostParams, Preconditions, WatchParams,
};

use crate::{Error, Object, Revision, Store, WatchEvent, WatchStream, codec, end_after_error};

/// Objects per list page.
const LIST_PAGE: u32 = 500;
/// Upper bound for each request (the server ends a watch after `WatchParams`' 290 s by itself).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A Kubernetes API client. Clones share it.
#[derive(Clone)]
pub struct KubernetesBackend {
    client: kube::Client,
}

impl KubernetesBackend {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    pub fn store<K: Object>(&self) -> KubernetesStore<K> {
        KubernetesStore {
            client: self.client.clone(),
            kind: PhantomData,
        }
    }
}

/// The [`Store`] of one kind in the Kubernetes API.
pub struct KubernetesStore<K> {
    client: kube::Client,
    kind: PhantomData<fn() -> K>,
}

fn map_error(what: &str, error: kube::Error) -> Error {
    match error {
        kube::Error::Api(status) => match status.code {
            404 => Error::NotFound,
            409 if status.reason == "AlreadyExists" => Error::AlreadyExists,
            409 => Error::Conflict,
            410 => Error::Expired,
            400 | 422 => Error::Invalid(format!("Kubernetes rejected {what}: {}", status.message)),
            _ => Error::Backend(format!(
                "Kubernetes {what}: {} {}: {}",
                status.code, status.reason, status.message
            )),
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            unavailable(what, &error)
        }
        kube::Error::SerdeError(e) => Error::Decode(format!("Kubernetes {what}: {e}")),
        other => Error::Backend(format!("Kubernetes {what}: {other}")),
    }
}

fn unavailable(what: &str, detail: &dyn std::fmt::Display) -> Error {
    Error::Unavailable(format!(
        "the Kubernetes API server failed {what}: {detail}; check that it is reachable with the configured \
         credentials (KUBECONFIG, or the pod's service account in a cluster)"
    ))
}

fn build(
    what: &str,
    request: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
) -> Result<http::Request<Vec<u8>>, Error> {
    request.map_err(|e| Error::Invalid(format!("cannot build the Kubernetes {what} request: {e}")))
}

async fn bounded<T>(
    what: &str,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(result) => result.map_err(|e| map_error(what, e)),
        Err(_) => Err(unavailable(
            what,
            &format!("no answer within {REQUEST_TIMEOUT:?}"),
        )),
    }
}

fn encode<K: Object>(obj: &K) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(obj)
        .map_err(|e| Error::Invalid(format!("cannot encode {} as JSON: {e}", K::kind(&()))))
}

fn name_of<K: Object>(obj: &K) -> Result<&str, Error> {
    obj.meta()
        .name
        .as_deref()
        .ok_or_else(|| Error::Invalid("metadata.name is required".into()))
}

impl<K: Object> KubernetesStore<K> {
    /// The request builder for one namespace, or for the whole kind (cluster-scoped, or all namespaces).
    fn resource(namespace: Option<&str>) -> kube::core::Request {
        kube::core::Request::new(K::url_path(&(), namespace))
    }

    /// The request builder for a single object, with its scope checked.
    fn object_resource(namespace: Option<&str>) -> Result<kube::core::Request, Error> {
        codec::check_scope::<K>(namespace)?;
        Ok(Self::resource(namespace))
    }

    /// The request builder for a list or watch (no namespace on a cluster-scoped kind).
    fn collection_resource(namespace: Option<&str>) -> Result<kube::core::Request, Error> {
        if namespace.is_some() {
            codec::check_scope::<K>(namespace)?;
        }
        Ok(Self::resource(namespace))
    }

    /// A compare-and-swap `PUT` of the object, or of one of its subresources.
    async fn replace(&self, obj: &K, subresource: Option<&str>) -> Result<K, Error> {
        let resource = Self::object_resource(obj.meta().namespace.as_deref())?;
        if obj.meta().resource_version.is_none() {
            return Err(Error::Invalid(
                "metadata.resourceVersion is required (updates are compare-and-swap)".into(),
            ));
        }
        let (name, params, body) = (name_of(obj)?, PostParams::default(), encode(obj)?);
        let request = match subresource {
            None => resource.replace(name, &params, body),
            Some(subresource) => resource.replace_subresource(subresource, name, &params, body),
        };
        bounded(
            "update",
            self.client.request::<K>(build("update", request)?),
        )
        .await
    }
}

#[async_trait]
impl<K: Object> Store<K> for KubernetesStore<K> {
    async fn get(&self, namespace: Option<&str>, name: &str) -> Result<Option<K>, Error> {
        let request = build(
            "get",
            Self::object_resource(namespace)?.get(name, &GetParams::default()),
        )?;
        match bounded("get", self.client.request::<K>(request)).await {
            Ok(obj) => Ok(Some(obj)),
            Err(Error::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, namespace: Option<&str>) -> Result<(Vec<K>, Revision), Error> {
        let resource = Self::collection_resource(namespace)?;
        let mut objects = Vec::new();
        let mut params = ListParams::default().limit(LIST_PAGE);
        // The first page's resourceVersion is the snapshot; later pages continue in that snapshot.
        let mut revision = None;
        loop {
            let request = build("list", resource.list(&params))?;
            let page = bounded("list", self.client.request::<ObjectList<K>>(request)).await?;
            if revision.is_none() {
                revision = Some(page.metadata.resource_version.clone().ok_or_else(|| {
                    Error::Backend("Kubernetes list answer without metadata.resourceVersion".into())
                })?);
            }
            objects.extend(page.items);
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => break,
            }
        }
        Ok((objects, Revision::new(revision.unwrap_or_default())))
    }

    async fn create(&self, obj: &K) -> Result<K, Error> {
        let namespace = obj.meta().namespace.as_deref();
        let resource = Self::object_resource(namespace)?;
        name_of(obj)?;
        // The API server refuses a resourceVersion on create; the trait says it is ignored.
        let mut obj = obj.clone();
        obj.meta_mut().resource_version = None;
        let request = build(
            "create",
            resource.create(&PostParams::default(), encode(&obj)?),
        )?;
        bounded("create", self.client.request::<K>(request)).await
    }

    async fn update(&self, obj: &K) -> Result<K, Error> {
        self.replace(obj, None).await
    }

    async fn update_status(&self, obj: &K) -> Result<K, Error> {
        self.replace(obj, Some("status")).await
    }

    async fn delete(
        &self,
        namespace: Option<&str>,
        name: &str,
        expected: Option<&Revision>,
    ) -> Result<(), Error> {
        let resource = Self::object_resource(namespace)?;
        let params = DeleteParams {
            preconditions: expected.map(|revision| Preconditions {
                resource_version: Some(revision.as_str().to_owned()),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        let request = build("delete", resource.delete(name, &params))?;
        bounded("delete", self.client.request_status::<K>(request))
            .await
            .map(drop)
    }

    async fn watch(
        &self,
        namespace: Option<&str>,
        from: &Revision,
    ) -> Result<WatchStream<K>, Error> {
        let resource = Self::collection_resource(namespace)?;
        let request = build(
            "watch",
            resource.watch(&WatchParams::default(), from.as_str()),
        )?;
        let events = bounded("watch", self.client.request_events::<K>(request)).await?;
        let events = events.filter_map(|event| {
            futures::future::ready(match event {
                Ok(kube::core::WatchEvent::Added(obj)) => Some(Ok(WatchEvent::Added(obj))),
                Ok(kube::core::WatchEvent::Modified(obj)) => Some(Ok(WatchEvent::Modified(obj))),
                Ok(kube::core::WatchEvent::Deleted(obj)) => Some(Ok(WatchEvent::Deleted(obj))),
                // A bookmark only moves the revision on; it carries no change.
                Ok(kube::core::WatchEvent::Bookmark(_)) => None,
                Ok(kube::core::WatchEvent::Error(status)) => {
                    Some(Err(map_error("watch", kube::Error::Api(status))))
                }
                Err(e) => Some(Err(map_error("watch", e))),
            })
        });
        Ok(end_after_error(events))
    }
}

#[cfg(test)]
mod tests {
    //! Request and answer handling at the HTTP level: a `tower_test` mock stands in for the API server.

    use super::*;
    use http::{Method, Request, Response, StatusCode};
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock::{self, Handle};

    type ApiHandle = Handle<Request<Body>, Response<Body>>;

    fn datastore() -> (Datastore, ApiHandle) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (
            Datastore::kubernetes(kube::Client::new(service, "default")),
            handle,
        )
    }

    use crate::Datastore;

    fn config_map(name: &str, revision: Option<&str>, value: &str) -> ConfigMap {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": revision},
            "data": {"k": value},
        }))
        .expect("a ConfigMap")
    }

    fn status(code: u16, reason: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
               "message": format!("test answer {code} {reason}")})
    }

    /// Serves one request: checks method and path (with query), returns its JSON body (or `Null`).
    async fn serve(
        handle: &mut ApiHandle,
        method: Method,
        path_and_query: &str,
        code: u16,
        answer: Value,
    ) -> Value {
        let (request, respond) = handle
            .next_request()
            .await
            .expect("a request reaches the API server");
        assert_eq!(request.method(), method);
        assert_eq!(
            request.uri().path_and_query().map(|p| p.as_str()),
            Some(path_and_query)
        );
        let body = request
            .into_body()
            .collect_bytes()
            .await
            .expect("request body");
        let body = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).expect("JSON body")
        };
        let response = Response::builder()
            .status(StatusCode::from_u16(code).expect("status code"))
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&answer).expect("JSON")))
            .expect("response");
        respond.send_response(response);
        body
    }

    const CM: &str = "/api/v1/namespaces/ns/configmaps";

    #[tokio::test]
    async fn get_maps_200_and_404() {
        let (ds, mut handle) = datastore();
        let store = ds.store::<ConfigMap>();
        let server = tokio::spawn(async move {
            serve(
                &mut handle,
                Method::GET,
                &format!("{CM}/a"),
                200,
                serde_json::to_value(config_map("a", Some("7"), "v")).unwrap(),
            )
            .await;
            serve(
                &mut handle,
                Method::GET,
                &format!("{CM}/b"),
                404,
                status(404, "NotFound"),
            )
            .await;
        });
        let got = store
            .get(Some("ns"), "a")
            .await
            .expect("get")
            .expect("found");
        assert_eq!(got.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(store.get(Some("ns"), "b").await, Ok(None));
        server.await.expect("server");
    }

    #[tokio::test]
    async fn create_drops_revision_and_maps_already_exists() {
        let (ds, mut handle) = datastore();
        let store = ds.store::<ConfigMap>();
        let server = tokio::spawn(async move {
            let stored = serde_json::to_value(config_map("a", Some("11"), "v")).unwrap();
            let body = serve(&mut handle, Method::POST, &format!("{CM}?"), 201, stored).await;
            assert_eq!(body["metadata"]["name"], "a");
            assert_eq!(
                body["metadata"].get("resourceVersion"),
                None,
                "no resourceVersion on create"
            );
            serve(
                &mut handle,
                Method::POST,
                &format!("{CM}?"),
                409,
                status(409, "AlreadyExists"),
            )
            .await;
        });
        let created = store
            .create(&config_map("a", Some("3"), "v"))
            .await
            .expect("create");
        assert_eq!(created.metadata.resource_version.as_deref(), Some("11"));
        assert_eq!(
            store.create(&config_map("a", None, "v")).await,
            Err(Error::AlreadyExists)
        );
        server.await.expect("server");
    }

    #[tokio::test]
    async fn update_sends_revision_and_maps_conflict() {
        let (ds, mut handle) = datastore();
        let store = ds.store::<ConfigMap>();
        let server = tokio::spawn(async move {
            let stored = serde_json::to_value(config_map("a", Some("6"), "new")).unwrap();
            let body = serve(&mut handle, Method::PUT, &format!("{CM}/a?"), 200, stored).await;
            assert_eq!(body["metadata"]["resourceVersion"], "5");
            assert_eq!(body["data"]["k"], "new");
            let body = serve(
                &mut handle,
                Method::PUT,
                &format!("{CM}/a?"),
                409,
                status(409, "Conflict"),
            )
            .await;
            assert_eq!(body["metadata"]["resourceVersion"], "5");
            serve(
                &mut handle,
                Method::PUT,
                &format!("{CM}/a?"),
                404,
                status(404, "NotFound"),
            )
            .await;
            let stored = serde_json::to_value(config_map("a", Some("8"), "new")).unwrap();
            let body = serve(
                &mut handle,
                Method::PUT,
                &format!("{CM}/a/status?"),
                200,
                stored,
            )
            .await;
            assert_eq!(body["metadata"]["resourceVersion"], "7");
        });
        let updated = store
            .update(&config_map("a", Some("5"), "new"))
            .await
            .expect("update");
        assert_eq!(updated.metadata.resource_version.as_deref(), Some("6"));
        assert_eq!(
            store.update(&config_map("a", Some("5"), "new")).await,
            Err(Error::Conflict)
        );
        assert_eq!(
            store.update(&config_map("a", Some("5"), "new")).await,
            Err(Error::NotFound)
        );
        let status_updated = store
            .update_status(&config_map("a", Some("7"), "new"))
            .await;
        assert_eq!(
            status_updated
                .expect("status update")
                .metadata
                .resource_version
                .as_deref(),
            Some("8")
        );
        // Without a revision nothing is sent: an unconditional PUT would break compare-and-swap.
        assert!(matches!(
            store.update(&config_map("a", None, "new")).await,
            Err(Error::Invalid(_))
        ));
        server.await.expect("server");
    }

    #[tokio::test]
    async fn delete_sends_precondition_and_maps_errors() {
        let (ds, mut handle) = datastore();
        let store = ds.store::<ConfigMap>();
        let server = tokio::spawn(async move {
            let body = serve(
                &mut handle,
                Method::DELETE,
                &format!("{CM}/a?"),
                409,
                status(409, "Conflict"),
            )
            .await;
            assert_eq!(body["preconditions"]["resourceVersion"], "5");
            let ok =
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200});
            serve(&mut handle, Method::DELETE, &format!("{CM}/a?"), 200, ok).await;
            let body = serve(
                &mut handle,
                Method::DELETE,
                &format!("{CM}/a?"),
                404,
                status(404, "NotFound"),
            )
            .await;
            assert_eq!(body.get("preconditions"), None);
        });
        let five = Revision::new("5");
        assert_eq!(
            store.delete(Some("ns"), "a", Some(&five)).await,
            Err(Error::Conflict)
        );
        assert_eq!(store.delete(Some("ns"), "a", Some(&five)).await, Ok(()));
        assert_eq!(
            store.delete(Some("ns"), "a", None).await,
            Err(Error::NotFound)
        );
        server.await.expect("server");
    }

    #[tokio::test]
    async fn list_follows_continue_tokens_and_keeps_the_first_revision() {
        let (ds, mut handle) = datastore();
        let store = ds.store::<ConfigMap>();
        let server = tokio::spawn(async move {
            let page = |items: Vec<ConfigMap>, revision: &str, next: Option<&str>| {
                json!({"apiVersion": "v1", "kind": "ConfigMapList", "items": items,
                       "metadata": {"resourceVersion": revision, "continue": next}})
            };
            let first = page(
                vec![
                    config_map("a", Some("3"), "1"),
                    config_map("b", Some("4"), "2"),
                ],
                "10",
                Some("tok"),
            );
            serve(
                &mut handle,
                Method::GET,
                &format!("{CM}?&limit=500"),
                200,
                first,
            )
            .await;
            let second = page(vec![config_map("c", Some("9"), "3")], "12", None);
            serve(
                &mut handle,
                Method::GET,
                &format!("{CM}?&limit=500&continue=tok"),
                200,
                second,
            )
            .await;
            serve(
                &mut handle,
                Method::GET,
                &format!("{CM}?&limit=500"),
                410,
                status(410, "Expired"),
            )
            .await;
        });
        let (objects, revision) = store.list(Some("ns")).await.expect("list");
        let names: Vec<_> = objects
            .iter()
            .map(|o| o.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(
            revision,
            Revision::new("10"),
            "the snapshot is the first page's"
        );
        assert_eq!(store.list(Some("ns")).await, Err(Error::Expired));
        server.await.expect("server");
    }

    #[tokio::test]
    async fn watch_streams_changes_skips_bookmarks_and_maps_gone() {
        let (ds, mut handle) = datastore();
        let store = ds.store::<ConfigMap>();
        let server = tokio::spawn(async move {
            let (request, respond) = handle.next_request().await.expect("watch request");
            assert_eq!(request.method(), Method::GET);
            let query = request.uri().query().unwrap_or_default().to_string();
            assert!(
                query.contains("watch=true") && query.contains("resourceVersion=10"),
                "query: {query}"
            );
            let lines: Vec<String> = [
                json!({"type": "ADDED", "object": config_map("a", Some("11"), "1")}),
                json!({"type": "BOOKMARK", "object": {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"resourceVersion": "12"}}}),
                json!({"type": "MODIFIED", "object": config_map("a", Some("13"), "2")}),
                json!({"type": "DELETED", "object": config_map("a", Some("14"), "2")}),
                json!({"type": "ERROR", "object": status(410, "Expired")}),
                json!({"type": "ADDED", "object": config_map("never", Some("15"), "1")}),
            ]
            .iter()
            .map(|line| format!("{line}\n"))
            .collect();
            respond.send_response(Response::new(Body::from(lines.concat().into_bytes())));
            serve(&mut handle, Method::GET, "/api/v1/namespaces?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=1", 410, status(410, "Expired")).await;
        });
        let events: Vec<_> = store
            .watch(Some("ns"), &Revision::new("10"))
            .await
            .expect("watch")
            .collect()
            .await;
        let summary: Vec<_> = events
            .iter()
            .map(|event| match event {
                Ok(event) => format!("{:?}", (std::mem::discriminant(event), event.revision())),
                Err(e) => format!("{e:?}"),
            })
            .collect();
        assert_eq!(
            events.len(),
            4,
            "three changes, then Expired, then the stream ends: {summary:?}"
        );
        assert!(
            matches!(&events[0], Ok(WatchEvent::Added(o)) if o.metadata.resource_version.as_deref() == Some("11"))
        );
        assert!(
            matches!(&events[1], Ok(WatchEvent::Modified(o)) if o.metadata.resource_version.as_deref() == Some("13"))
        );
        assert!(
            matches!(&events[2], Ok(WatchEvent::Deleted(o)) if o.metadata.resource_version.as_deref() == Some("14"))
        );
        assert_eq!(events[3], Err(Error::Expired));
        let namespaces = ds.store::<Namespace>();
        assert!(matches!(
            namespaces.watch(None, &Revision::new("1")).await,
            Err(Error::Expired)
        ));
        server.await.expect("server");
    }

    #[tokio::test]
    async fn scope_is_checked_before_sending_and_server_errors_are_typed() {
        let (ds, mut handle) = datastore();
        let config_maps = ds.store::<ConfigMap>();
        let namespaces = ds.store::<Namespace>();
        assert!(matches!(
            config_maps.get(None, "a").await,
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            namespaces.get(Some("ns"), "a").await,
            Err(Error::Invalid(_))
        ));
        let server = tokio::spawn(async move {
            serve(
                &mut handle,
                Method::GET,
                "/api/v1/namespaces/kube-system",
                403,
                status(403, "Forbidden"),
            )
            .await;
            serve(
                &mut handle,
                Method::GET,
                "/api/v1/namespaces/x",
                422,
                status(422, "Invalid"),
            )
            .await;
        });
        assert!(
            matches!(namespaces.get(None, "kube-system").await, Err(Error::Backend(m)) if m.contains("403"))
        );
        assert!(matches!(
            namespaces.get(None, "x").await,
            Err(Error::Invalid(_))
        ));
        server.await.expect("server");
    }
}
