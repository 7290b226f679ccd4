//! The IPv6 next hop of an IPv4 session comes from the interface that holds the session's address.
//! Runs in a network namespace of its own (`unshare`, gone when the test process exits).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;

use reef_bgp::driver::socket::global_ipv6_beside;

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("ip runs");
    assert!(status.success(), "ip {args:?}");
}

#[test]
#[ignore = "needs root: creates a network namespace and a veth pair"]
fn ipv6_next_hop_is_the_global_address_beside_the_ipv4_one() {
    // SAFETY: unshare only moves this thread (and the `ip` children it spawns) to a new, empty netns;
    // nextest runs each test in its own process.
    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
    // A veth pair (the dummy driver is not always available): two interfaces in the new namespace.
    ip(&[
        "link", "add", "reefnh0", "type", "veth", "peer", "name", "reefnh1",
    ]);
    ip(&["addr", "add", "198.51.100.1/24", "dev", "reefnh0"]);
    ip(&["addr", "add", "2001:db8:1::9/64", "dev", "reefnh0", "nodad"]);
    ip(&["addr", "add", "2001:db8:1::5/64", "dev", "reefnh0", "nodad"]);
    ip(&["addr", "add", "2001:db8:2::1/64", "dev", "reefnh1", "nodad"]);
    ip(&["addr", "add", "203.0.113.1/24", "dev", "reefnh1"]);
    ip(&["link", "set", "reefnh0", "up"]);
    ip(&["link", "set", "reefnh1", "up"]);
    assert_eq!(
        global_ipv6_beside(Ipv4Addr::new(198, 51, 100, 1)),
        Some("2001:db8:1::5".parse::<Ipv6Addr>().unwrap()),
        "the lowest global address of the interface holding the IPv4 address"
    );
    assert_eq!(
        global_ipv6_beside(Ipv4Addr::new(203, 0, 113, 1)),
        Some("2001:db8:2::1".parse::<Ipv6Addr>().unwrap())
    );
    assert_eq!(global_ipv6_beside(Ipv4Addr::new(192, 0, 2, 1)), None);
}
