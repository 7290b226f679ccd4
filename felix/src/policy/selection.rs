//! Endpoint selections (selector + namespace scope + service accounts) and an index that finds their
//! members without testing every endpoint against every selector.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use reef_crds::Selector;
use reef_crds::selector::NAMESPACE_LABEL;

use super::model::{Endpoint, Labels};

/// Label under which a service account's name is visible to `serviceAccountSelector`.
pub const SERVICE_ACCOUNT_NAME_LABEL: &str = "reef.dev/name";

/// Which namespaces a selection looks in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NamespaceScope {
    /// Every endpoint, namespaced or not.
    Any,
    /// Endpoints of one namespace.
    Only(String),
    /// Endpoints of namespaces whose labels match (`global()` matches endpoints outside namespaces).
    Matching(Selector),
}

/// A set of endpoints: selector on their labels, their namespace, their service account.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Selection {
    /// Selector on the endpoint's labels (plus `reef.dev/namespace`).
    pub endpoints: Selector,
    /// Namespace scope.
    pub namespace: NamespaceScope,
    /// Selector on the service account's labels (plus `reef.dev/name`), if any.
    pub service_accounts: Option<Selector>,
}

impl Selection {
    /// Every endpoint.
    pub fn everything() -> Selection {
        Selection {
            endpoints: Selector::All,
            namespace: NamespaceScope::Any,
            service_accounts: None,
        }
    }

    /// A stable text form, used to name the set that holds the selection's addresses.
    pub fn canonical(&self) -> String {
        let namespace = match &self.namespace {
            NamespaceScope::Any => "*".to_string(),
            NamespaceScope::Only(ns) => format!("={ns}"),
            NamespaceScope::Matching(s) => format!("~{s}"),
        };
        let accounts = self
            .service_accounts
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        format!("{namespace}|{}|{accounts}", self.endpoints)
    }

    /// Whether the endpoint is selected.
    pub fn matches(&self, endpoint: &Endpoint, namespaces: &BTreeMap<String, Labels>) -> bool {
        let in_namespace = match (&self.namespace, &endpoint.namespace) {
            (NamespaceScope::Any, _) => true,
            (NamespaceScope::Only(want), Some(ns)) => want == ns,
            (NamespaceScope::Only(_), None) => false,
            (NamespaceScope::Matching(selector), Some(ns)) => {
                let empty = Labels::new();
                let labels = namespaces.get(ns).unwrap_or(&empty);
                // The namespace label keeps `global()` from matching namespaced endpoints.
                selector.matches_with(&|key: &str| {
                    if key == NAMESPACE_LABEL {
                        Some(ns.as_str())
                    } else {
                        labels.get(key).map(String::as_str)
                    }
                })
            }
            (NamespaceScope::Matching(selector), None) => selector.matches(&Labels::new()),
        };
        if !in_namespace {
            return false;
        }
        let labels_match = self.endpoints.matches_with(&|key: &str| {
            if key == NAMESPACE_LABEL {
                endpoint.namespace.as_deref()
            } else {
                endpoint.labels.get(key).map(String::as_str)
            }
        });
        labels_match
            && self.service_accounts.as_ref().is_none_or(|selector| {
                endpoint.service_account.as_ref().is_some_and(|name| {
                    selector.matches_with(&|key: &str| {
                        if key == SERVICE_ACCOUNT_NAME_LABEL {
                            Some(name.as_str())
                        } else {
                            endpoint.service_account_labels.get(key).map(String::as_str)
                        }
                    })
                })
            })
    }
}

fn slice(found: Option<&Vec<usize>>) -> Cow<'_, [usize]> {
    Cow::Borrowed(found.map_or(&[][..], Vec::as_slice))
}

/// Endpoints indexed by label, label key and namespace.
pub struct EndpointIndex<'a> {
    endpoints: Vec<&'a Endpoint>,
    /// key -> value -> endpoints.
    by_label: HashMap<&'a str, HashMap<&'a str, Vec<usize>>>,
    by_key: HashMap<&'a str, Vec<usize>>,
    by_namespace: HashMap<&'a str, Vec<usize>>,
    all: Vec<usize>,
}

impl<'a> EndpointIndex<'a> {
    /// Indexes the endpoints.
    pub fn new(endpoints: impl IntoIterator<Item = &'a Endpoint>) -> Self {
        let endpoints: Vec<&Endpoint> = endpoints.into_iter().collect();
        let mut by_label: HashMap<&str, HashMap<&str, Vec<usize>>> = HashMap::new();
        let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut by_namespace: HashMap<&str, Vec<usize>> = HashMap::new();
        for (n, endpoint) in endpoints.iter().enumerate() {
            for (key, value) in &endpoint.labels {
                by_label
                    .entry(key)
                    .or_default()
                    .entry(value)
                    .or_default()
                    .push(n);
                by_key.entry(key).or_default().push(n);
            }
            if let Some(ns) = &endpoint.namespace {
                by_namespace.entry(ns).or_default().push(n);
            }
        }
        let all = (0..endpoints.len()).collect();
        EndpointIndex {
            endpoints,
            by_label,
            by_key,
            by_namespace,
            all,
        }
    }

    fn label(&self, key: &str, value: &str) -> Option<&Vec<usize>> {
        self.by_label.get(key)?.get(value)
    }

    /// Endpoints that may match `selector` (a superset, ascending), or `None` when the selector
    /// names no label every match must carry.
    fn candidates_of(&self, selector: &Selector) -> Option<Cow<'_, [usize]>> {
        match selector {
            Selector::Eq(key, value) => Some(slice(self.label(key, value))),
            Selector::Has(key)
            | Selector::Contains(key, _)
            | Selector::StartsWith(key, _)
            | Selector::EndsWith(key, _) => Some(slice(self.by_key.get(key.as_str()))),
            Selector::In(key, values) => {
                let mut union: Vec<usize> = values
                    .iter()
                    .filter_map(|v| self.label(key, v))
                    .flatten()
                    .copied()
                    .collect();
                union.sort_unstable();
                union.dedup();
                Some(Cow::Owned(union))
            }
            Selector::And(terms) => terms
                .iter()
                .filter_map(|t| self.candidates_of(t))
                .min_by_key(|c| c.len()),
            _ => None,
        }
    }

    /// The endpoints in `selection`.
    pub fn members<'s>(
        &'s self,
        selection: &'s Selection,
        namespaces: &'s BTreeMap<String, Labels>,
    ) -> impl Iterator<Item = &'a Endpoint> + 's {
        let by_namespace = match &selection.namespace {
            NamespaceScope::Only(ns) => Some(Cow::Borrowed(
                self.by_namespace
                    .get(ns.as_str())
                    .map_or(&[][..], Vec::as_slice),
            )),
            _ => None,
        };
        let by_labels = self.candidates_of(&selection.endpoints);
        let candidates = match (by_namespace, by_labels) {
            (Some(a), Some(b)) => {
                if a.len() <= b.len() {
                    a
                } else {
                    b
                }
            }
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => Cow::Borrowed(self.all.as_slice()),
        };
        let candidates: Vec<usize> = candidates.into_owned();
        candidates
            .into_iter()
            .map(move |n| self.endpoints[n])
            .filter(move |endpoint| selection.matches(endpoint, namespaces))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(key: &str, ns: Option<&str>, labels: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            key: key.into(),
            namespace: ns.map(Into::into),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Endpoint::default()
        }
    }

    #[test]
    fn index_finds_the_same_members_as_a_scan() {
        let endpoints = vec![
            endpoint("a/1", Some("a"), &[("app", "web"), ("tier", "fe")]),
            endpoint("a/2", Some("a"), &[("app", "db")]),
            endpoint("b/1", Some("b"), &[("app", "web")]),
            endpoint("/h", None, &[("app", "web")]),
        ];
        let mut namespaces = BTreeMap::new();
        namespaces.insert(
            "a".to_string(),
            Labels::from([("team".to_string(), "x".to_string())]),
        );
        namespaces.insert("b".to_string(), Labels::new());
        let index = EndpointIndex::new(&endpoints);
        let cases = [
            (
                "app == 'web'",
                NamespaceScope::Any,
                vec!["a/1", "b/1", "/h"],
            ),
            (
                "app == 'web'",
                NamespaceScope::Only("a".into()),
                vec!["a/1"],
            ),
            (
                "app in {'web','db'} && !has(tier)",
                NamespaceScope::Any,
                vec!["a/2", "b/1", "/h"],
            ),
            (
                "all()",
                NamespaceScope::Matching(Selector::parse("team == 'x'").unwrap()),
                vec!["a/1", "a/2"],
            ),
            (
                "all()",
                NamespaceScope::Matching(Selector::Global),
                vec!["/h"],
            ),
            ("global()", NamespaceScope::Any, vec!["/h"]),
        ];
        for (text, namespace, want) in cases {
            let selection = Selection {
                endpoints: Selector::parse(text).unwrap(),
                namespace,
                service_accounts: None,
            };
            let found: Vec<&str> = index
                .members(&selection, &namespaces)
                .map(|e| e.key.as_str())
                .collect();
            let scanned: Vec<&str> = endpoints
                .iter()
                .filter(|e| selection.matches(e, &namespaces))
                .map(|e| e.key.as_str())
                .collect();
            assert_eq!(found, want, "{text}");
            assert_eq!(scanned, want, "{text}");
        }
    }
}
