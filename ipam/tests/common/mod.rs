//! Helpers shared by the allocator tests: pools and configs written straight into a datastore.

#![allow(dead_code)] // Each test binary uses a different subset.

use reef_crds::{IPAMConfig, IPAMConfigSpec, IPPool, IPPoolSpec};
use reef_datastore::Datastore;
use reef_ipam::{AutoAssignArgs, Ipam};

pub async fn add_pool(ds: &Datastore, name: &str, spec: serde_json::Value) {
    let spec: IPPoolSpec = serde_json::from_value(spec).expect("test pool spec is valid");
    ds.store::<IPPool>()
        .create(&IPPool::new(name, spec))
        .await
        .expect("create pool");
}

pub async fn set_config(ds: &Datastore, strict_affinity: bool, max_blocks_per_host: u32) {
    let spec = IPAMConfigSpec {
        strict_affinity,
        max_blocks_per_host,
        ..IPAMConfigSpec::default()
    };
    ds.store::<IPAMConfig>()
        .create(&IPAMConfig::new("default", spec))
        .await
        .expect("create config");
}

pub fn v4(node: &str, handle: &str, num: usize) -> AutoAssignArgs {
    AutoAssignArgs {
        handle_id: handle.into(),
        num_v4: num,
        node: node.into(),
        ..AutoAssignArgs::default()
    }
}

pub fn memory() -> (Datastore, Ipam) {
    let ds = Datastore::memory();
    let ipam = Ipam::new(&ds);
    (ds, ipam)
}
