//! The convergence and RIB memory machinery end to end against BIRD: namespaces, the kernel route
//! watcher, BFD with a cut link, two injector peers. No timing is asserted.

use std::path::PathBuf;
use std::time::Duration;

use reef_bench::convergence::{ConvergenceOptions, Trigger};
use reef_bench::receivers::{BfdTimers, Daemon};
use reef_bench::rib_memory::RibMemoryOptions;
use reef_bench::workload::Workload;

fn convergence_options(trigger: Trigger) -> ConvergenceOptions {
    ConvergenceOptions {
        runs: 3,
        trigger,
        bfd: BfdTimers {
            interval: Duration::from_millis(100),
            multiplier: 3,
        },
        settle: Duration::from_millis(20),
        event_timeout: Duration::from_secs(10),
        start_timeout: Duration::from_secs(30),
        table_size: 0,
        table_timeout: Duration::from_secs(60),
        reefd: PathBuf::from("reefd"),
    }
}

#[test]
#[ignore = "needs root: network namespaces"]
fn bird_removes_withdrawn_routes_from_the_kernel() {
    reef_lab::require_root();
    // With 1000 other routes in the table, as `--table-size`.
    let options = ConvergenceOptions {
        table_size: 1000,
        ..convergence_options(Trigger::Withdraw)
    };
    let result = reef_bench::convergence::measure(Daemon::Bird, &options);
    assert_eq!(result.error, None, "{result:?}");
    assert_eq!(result.samples_ms.len(), 3, "{result:?}");
    assert_eq!(result.failed_runs, 0, "{result:?}");
    // BIRD's kernel routes carry RTPROT_BIRD: the watcher saw the daemon's own routes.
    assert_eq!(result.kernel_protocol, Some(12), "{result:?}");
}

#[test]
#[ignore = "needs root: network namespaces, nftables"]
fn bird_removes_routes_when_bfd_sees_the_link_cut() {
    reef_lab::require_root();
    // With 1000 other routes on every session: all of them go with the session.
    let options = ConvergenceOptions {
        table_size: 1000,
        ..convergence_options(Trigger::Bfd)
    };
    let result = reef_bench::convergence::measure(Daemon::Bird, &options);
    assert_eq!(result.error, None, "{result:?}");
    assert_eq!(result.samples_ms.len(), 3, "{result:?}");
    assert_eq!(result.flush_samples_ms.len(), 3, "{result:?}");
    assert_eq!(result.kernel_protocol, Some(12), "{result:?}");
}

#[test]
#[ignore = "needs root: network namespaces"]
fn bird_keeps_both_peers_paths() {
    reef_lab::require_root();
    let workload = Workload::new(10_000, 100).unwrap();
    let options = RibMemoryOptions {
        peers: 2,
        poll_interval: Duration::from_millis(20),
        timeout: Duration::from_secs(60),
        start_timeout: Duration::from_secs(30),
        settle: Duration::ZERO,
        reefd: PathBuf::from("reefd"),
    };
    let result = reef_bench::rib_memory::measure(Daemon::Bird, &workload, &options);
    assert_eq!(result.error, None, "{result:?}");
    assert_eq!(result.received, vec![10_000, 10_000], "{result:?}");
    assert_eq!(result.paths_first_last, Some([2, 2]), "{result:?}");
    assert!(result.peak_rss_mib.is_some(), "{result:?}");
}
