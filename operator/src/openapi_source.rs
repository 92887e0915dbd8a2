//! The OpenAPI documents ApiMonitors reference (`spec.openApi`): where they come from, and how an
//! edit reaches the agents.
//!
//! **One watch per referenced ConfigMap.** The operator watches exactly the ConfigMaps some
//! monitor references, each with its own watch (namespaced, `metadata.name` field selector),
//! started and stopped as monitors come, go or change their reference ([`ConfigMapWatches::sync`],
//! called by the compile loop on every change). Each event stores the ConfigMap in the
//! [`Hub`] (managed fields and annotations dropped: `last-applied-configuration` would double its
//! size) and wakes the compile loop, which parses the document once per resourceVersion
//! ([`load_document`], cached by the hub) and recompiles. So editing the ConfigMap sends the
//! new operations to the agents within the loop's 100 ms, and deleting it turns into a
//! `Degraded` condition on the monitor.
//!
//! Why not a reflector of all ConfigMaps, like Pods and Nodes: it would keep every ConfigMap of
//! the cluster in memory (bundles of certificates, dashboards, scripts) and recompile on each of
//! their changes (leader election still writes some every few seconds). Here memory holds only
//! referenced ConfigMaps, the API server filters the watches, and the cost is one watch
//! connection per referenced ConfigMap, which is one per monitor at most.
//!
//! RBAC: `list` and `watch` on `configmaps` (core group) in the namespaces of ApiMonitors (a
//! ClusterRole, since monitors may live in any namespace). No `get`, no writes.

use crate::state::Hub;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use palisade_api::agent::ApiOperation;
use palisade_api::openapi::{parse_operations, MAX_DOCUMENT_BYTES};
use palisade_api::v1alpha1::ApiMonitor;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A ConfigMap: `(namespace, name)`.
pub type ConfigMapKey = (String, String);

/// One document: a key of a ConfigMap, in the monitor's namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpenApiSource {
    pub namespace: String,
    pub config_map: String,
    pub key: String,
}

impl OpenApiSource {
    /// The document a monitor references, if any.
    pub fn of(monitor: &ApiMonitor) -> Option<OpenApiSource> {
        let r = monitor.spec.open_api.as_ref()?;
        Some(OpenApiSource {
            namespace: monitor.namespace().unwrap_or_default(),
            config_map: r.config_map.clone(),
            key: r.key.clone(),
        })
    }

    pub fn config_map_key(&self) -> ConfigMapKey {
        (self.namespace.clone(), self.config_map.clone())
    }
}

impl std::fmt::Display for OpenApiSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ConfigMap {}/{} key {}",
            self.namespace, self.config_map, self.key
        )
    }
}

/// What the watch of a referenced ConfigMap last said.
#[derive(Clone, Debug)]
pub enum ConfigMapState {
    Present(Arc<ConfigMap>),
    /// It does not exist (or was deleted).
    Missing,
    /// The watch fails before it could read it once (for example RBAC): the reason.
    Unreadable(String),
}

impl ConfigMapState {
    /// Identifies the content, so that a document is parsed once per version.
    pub fn fingerprint(&self) -> String {
        match self {
            ConfigMapState::Present(cm) => format!(
                "present {} {}",
                cm.uid().unwrap_or_default(),
                cm.resource_version().unwrap_or_default()
            ),
            ConfigMapState::Missing => "missing".into(),
            ConfigMapState::Unreadable(reason) => format!("unreadable {reason}"),
        }
    }
}

/// What came of a monitor's OpenAPI document.
#[derive(Clone, Debug, PartialEq)]
pub enum OpenApiDocument {
    /// The ConfigMap's watch has not answered yet.
    Pending,
    /// Its operations (sorted, each method and path once).
    Loaded(Arc<Vec<ApiOperation>>),
    /// It could not be used: a condition reason, and a message naming the ConfigMap and key.
    Failed { reason: &'static str, message: String },
}

/// The document of `source`, from what the watch of its ConfigMap says (`None`: nothing yet).
pub fn load_document(source: &OpenApiSource, state: Option<&ConfigMapState>) -> OpenApiDocument {
    let failed = |reason: &'static str, problem: String| OpenApiDocument::Failed {
        reason,
        message: format!(
            "spec.openApi: {source}: {problem}; capture goes on without shadow and zombie endpoint detection"
        ),
    };
    let cm = match state {
        None => return OpenApiDocument::Pending,
        Some(ConfigMapState::Missing) => {
            return failed(
                "OpenApiConfigMapNotFound",
                "the ConfigMap does not exist in this namespace".into(),
            )
        }
        Some(ConfigMapState::Unreadable(reason)) => {
            return failed(
                "OpenApiConfigMapUnreadable",
                format!("the ConfigMap cannot be read: {reason}"),
            )
        }
        Some(ConfigMapState::Present(cm)) => cm,
    };
    let text: std::borrow::Cow<'_, str> =
        if let Some(text) = cm.data.as_ref().and_then(|d| d.get(&source.key)) {
            text.into()
        } else if let Some(bytes) = cm.binary_data.as_ref().and_then(|d| d.get(&source.key)) {
            if bytes.0.len() > MAX_DOCUMENT_BYTES {
                return failed(
                    "OpenApiDocumentTooLarge",
                    format!(
                        "the document is {} bytes, more than the {MAX_DOCUMENT_BYTES} accepted",
                        bytes.0.len()
                    ),
                );
            }
            match std::str::from_utf8(&bytes.0) {
                Ok(text) => text.into(),
                Err(e) => {
                    return failed(
                        "OpenApiDocumentUnparsable",
                        format!("the document in binaryData is not UTF-8 text: {e}"),
                    )
                }
            }
        } else {
            let keys: Vec<&String> = cm
                .data
                .iter()
                .flat_map(|d| d.keys())
                .chain(cm.binary_data.iter().flat_map(|d| d.keys()))
                .collect();
            let listed = if keys.is_empty() {
                "it has no keys".to_string()
            } else {
                let shown: Vec<&str> = keys.iter().take(10).map(|k| k.as_str()).collect();
                let more = if keys.len() > shown.len() { ", ..." } else { "" };
                format!("its keys: {}{more}", shown.join(", "))
            };
            return failed(
                "OpenApiKeyNotFound",
                format!("the ConfigMap has no key {} ({listed})", source.key),
            );
        };
    match parse_operations(&text) {
        Ok(ops) => OpenApiDocument::Loaded(Arc::new(ops)),
        Err(e) => failed(e.reason(), e.to_string()),
    }
}

/// The ConfigMaps the monitors reference.
pub fn referenced_config_maps(monitors: &[Arc<ApiMonitor>]) -> BTreeSet<ConfigMapKey> {
    monitors
        .iter()
        .filter_map(|m| OpenApiSource::of(m))
        .map(|s| s.config_map_key())
        .collect()
}

/// The running watches, one per referenced ConfigMap (see the module docs).
pub struct ConfigMapWatches {
    client: kube::Client,
    hub: Arc<Hub>,
    changed: mpsc::UnboundedSender<()>,
    running: HashMap<ConfigMapKey, JoinHandle<()>>,
}

impl ConfigMapWatches {
    /// Watches that store into `hub` and send `()` on `changed` after each event.
    pub fn new(client: kube::Client, hub: Arc<Hub>, changed: mpsc::UnboundedSender<()>) -> Self {
        ConfigMapWatches {
            client,
            hub,
            changed,
            running: HashMap::new(),
        }
    }

    /// Starts watches for newly referenced ConfigMaps and stops those no monitor references.
    pub fn sync(&mut self, wanted: &BTreeSet<ConfigMapKey>) {
        let stale: Vec<ConfigMapKey> = self
            .running
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for key in stale {
            if let Some(task) = self.running.remove(&key) {
                task.abort();
            }
            self.hub.forget_config_map(&key);
            tracing::debug!(namespace = %key.0, name = %key.1, "stopped watching ConfigMap");
        }
        for key in wanted {
            if self.running.contains_key(key) {
                continue;
            }
            let task = tokio::spawn(watch_config_map(
                self.client.clone(),
                self.hub.clone(),
                self.changed.clone(),
                key.clone(),
            ));
            self.running.insert(key.clone(), task);
            tracing::debug!(namespace = %key.0, name = %key.1, "watching ConfigMap");
        }
    }

    /// The ConfigMaps watched now.
    pub fn watched(&self) -> Vec<ConfigMapKey> {
        self.running.keys().cloned().collect()
    }
}

impl Drop for ConfigMapWatches {
    fn drop(&mut self) {
        for task in self.running.values() {
            task.abort();
        }
    }
}

async fn watch_config_map(
    client: kube::Client,
    hub: Arc<Hub>,
    changed: mpsc::UnboundedSender<()>,
    key: ConfigMapKey,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &key.0);
    let mut events = std::pin::pin!(watcher::watch_object(api, &key.1).default_backoff());
    while let Some(event) = events.next().await {
        let state = match event {
            Ok(Some(mut cm)) => {
                cm.metadata.managed_fields = None;
                cm.metadata.annotations = None;
                ConfigMapState::Present(Arc::new(cm))
            }
            Ok(None) => ConfigMapState::Missing,
            Err(error) => {
                tracing::warn!(namespace = %key.0, name = %key.1, %error, "watching ConfigMap failed; retrying");
                // A ConfigMap read before stays in use through a transient failure.
                if hub.config_map_present(&key) {
                    continue;
                }
                ConfigMapState::Unreadable(error.to_string())
            }
        };
        hub.set_config_map(key.clone(), state);
        if changed.send(()).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn source() -> OpenApiSource {
        OpenApiSource {
            namespace: "demo".into(),
            config_map: "api-doc".into(),
            key: "openapi.yaml".into(),
        }
    }

    fn config_map(data: &[(&str, &str)]) -> ConfigMapState {
        ConfigMapState::Present(Arc::new(ConfigMap {
            data: Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        }))
    }

    fn failure(doc: OpenApiDocument) -> (&'static str, String) {
        match doc {
            OpenApiDocument::Failed { reason, message } => (reason, message),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn a_document_loads_from_data_or_binary_data() {
        let text = "openapi: 3.0.0\npaths: {/a: {get: {}}, /b: {post: {deprecated: true}}}";
        let doc = load_document(&source(), Some(&config_map(&[("openapi.yaml", text)])));
        let OpenApiDocument::Loaded(ops) = doc else {
            panic!("not loaded: {doc:?}");
        };
        assert_eq!(ops.len(), 2);
        assert!(ops[1].deprecated);

        let binary = ConfigMapState::Present(Arc::new(ConfigMap {
            binary_data: Some(BTreeMap::from([(
                "openapi.yaml".to_string(),
                ByteString(text.as_bytes().to_vec()),
            )])),
            ..Default::default()
        }));
        assert!(matches!(
            load_document(&source(), Some(&binary)),
            OpenApiDocument::Loaded(_)
        ));
        assert_eq!(load_document(&source(), None), OpenApiDocument::Pending);
    }

    #[test]
    fn every_failure_names_the_config_map_and_key() {
        let cases = [
            (
                ConfigMapState::Missing,
                "OpenApiConfigMapNotFound",
                "does not exist",
            ),
            (
                ConfigMapState::Unreadable("configmaps is forbidden".into()),
                "OpenApiConfigMapUnreadable",
                "forbidden",
            ),
            (
                config_map(&[("openapi.json", "{}"), ("other", "")]),
                "OpenApiKeyNotFound",
                "its keys: openapi.json, other",
            ),
            (
                config_map(&[("openapi.yaml", "openapi: 3.0.0\npaths: [")]),
                "OpenApiDocumentUnparsable",
                "not valid YAML",
            ),
            (
                config_map(&[("openapi.yaml", "hello: world")]),
                "OpenApiDocumentInvalid",
                "not an OpenAPI document",
            ),
        ];
        for (state, reason, detail) in cases {
            let (r, message) = failure(load_document(&source(), Some(&state)));
            assert_eq!(r, reason, "{message}");
            assert!(
                message.contains("ConfigMap demo/api-doc key openapi.yaml"),
                "{message}"
            );
            assert!(message.contains(detail), "{message}");
            assert!(message.contains("without shadow and zombie"), "{message}");
        }
        let big = ConfigMapState::Present(Arc::new(ConfigMap {
            binary_data: Some(BTreeMap::from([(
                "openapi.yaml".to_string(),
                ByteString(vec![b' '; MAX_DOCUMENT_BYTES + 1]),
            )])),
            ..Default::default()
        }));
        assert_eq!(
            failure(load_document(&source(), Some(&big))).0,
            "OpenApiDocumentTooLarge"
        );
    }
}
