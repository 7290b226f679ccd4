//! The benchmark machinery end to end against a real daemon: namespaces, BIRD, the injector's session,
//! the pre-encoded UPDATEs and the prefix-count probe. No timing is asserted.

use std::path::PathBuf;
use std::time::Duration;

use reef_bench::ingest::{IngestOptions, measure};
use reef_bench::receivers::Daemon;
use reef_bench::workload::Workload;

#[test]
#[ignore = "needs root: network namespaces"]
fn injector_delivers_every_prefix_to_bird() {
    reef_lab::require_root();
    let workload = Workload::new(10_000, 100).unwrap();
    let mut options = IngestOptions::new(PathBuf::from("reefd"));
    options.timeout = Duration::from_secs(60);
    let result = measure(Daemon::Bird, &workload, &options);
    assert_eq!(result.error, None, "{result:?}");
    assert_eq!(result.prefixes_received, 10_000, "{result:?}");
    assert!(
        result.seconds.is_some() && result.peak_rss_mib.is_some(),
        "{result:?}"
    );
}
