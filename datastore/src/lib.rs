//! Typed datastore trait with compare-and-swap writes and watches; Kubernetes, etcd v3 and in-memory backends.
