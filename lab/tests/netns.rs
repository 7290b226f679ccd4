//! The lab primitives on the real kernel: namespaces, veth links, processes, cleanup.

use std::time::Duration;

use reef_lab::{Netns, binary, require_root, veth, wait_until};

fn namespace_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

#[test]
#[ignore = "needs root: network namespaces"]
fn veth_link_carries_ipv4_and_ipv6_and_everything_goes_on_drop() {
    require_root();
    let a = Netns::new("lab-a").unwrap();
    let b = Netns::new("lab-b").unwrap();
    let link = veth(&a, &b).unwrap();
    assert!(link.a.ifname.len() <= 15);
    a.exec(&["ping", "-c", "1", "-W", "2", &link.b.v4.to_string()])
        .unwrap();
    a.exec(&["ping", "-6", "-c", "1", "-W", "2", &link.b.v6.to_string()])
        .unwrap();
    // The link is not in the root namespace.
    let root_links =
        reef_lab::run_ok(std::process::Command::new("ip").args(["-o", "link"])).unwrap();
    assert!(!root_links.contains(&link.a.ifname), "{root_links}");

    let sleeper = a
        .spawn(
            "sleep",
            "sleep",
            &["600"],
            &std::env::temp_dir().join("lab-sleep.log"),
        )
        .unwrap();
    let pid = sleeper.pid();
    // `ip netns exec` enters the namespace just before it execs the program: wait for it.
    let inside = wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
        (a.pids() == vec![pid]).then_some(())
    });
    assert!(inside.is_some(), "{:?} != [{pid}]", a.pids());
    let names = (a.name().to_string(), b.name().to_string());
    std::mem::forget(sleeper); // the namespace guard must kill it
    drop(a);
    drop(b);
    assert!(!namespace_exists(&names.0) && !namespace_exists(&names.1));
    let gone = wait_until(Duration::from_secs(2), Duration::from_millis(10), || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        (stat.is_empty() || stat.contains(") Z ")).then_some(())
    });
    assert!(gone.is_some(), "process {pid} still running");
}

#[test]
#[ignore = "needs root: network namespaces"]
fn process_guard_kills_on_drop_and_bounded_wait() {
    require_root();
    let ns = Netns::new("lab-p").unwrap();
    let log = std::env::temp_dir().join(format!("lab-p-{}.log", std::process::id()));
    let mut p = ns.spawn("sleep", "sleep", &["600"], &log).unwrap();
    assert!(p.is_running());
    assert!(p.wait_timeout(Duration::from_millis(200)).is_err());
    assert!(!p.is_running());
    let _ = std::fs::remove_file(log);
}

#[test]
fn binary_lookup_names_the_directory() {
    let err = binary("no-such-binary-here").unwrap_err().to_string();
    assert!(err.contains("no-such-binary-here"), "{err}");
}

#[test]
fn wait_until_is_bounded() {
    let mut calls = 0;
    let got: Option<()> = wait_until(Duration::from_millis(50), Duration::from_millis(10), || {
        calls += 1;
        None
    });
    assert!(got.is_none());
    assert!((2..=10).contains(&calls), "{calls}");
    assert_eq!(
        wait_until(Duration::from_secs(1), Duration::from_millis(1), || Some(7)),
        Some(7)
    );
}
