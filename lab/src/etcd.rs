//! A real etcd started on a loopback port for tests, stopped on drop.
