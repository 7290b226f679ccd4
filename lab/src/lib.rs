//! reef-lab: the test lab. Network namespaces and veth links with unique names that are removed on drop,
//! and the real daemons (BIRD, FRR, GoBGP, ExaBGP, etcd) started inside them and stopped by pid.

pub mod etcd;
