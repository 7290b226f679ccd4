//! The FIB model: the routes Reef wants in a kernel routing table, independent of netlink.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// The route protocol number (`rtm_protocol`, `ip route ... proto 82`) on every route Reef installs.
/// Felix reads, replaces and deletes only routes carrying it. 82 (`'R'`) is unused by the kernel's
/// `RTPROT_*` list, iproute2's `rt_protos`, FRR's `rt_protos.d/frr.conf` (186–197) and Calico (80).
/// To see the name in `ip route`, add `82 reef` to `/etc/iproute2/rt_protos.d/reef.conf`.
pub const REEF_ROUTE_PROTOCOL: u8 = 82;

/// The main routing table (`RT_TABLE_MAIN`).
pub const MAIN_TABLE: u32 = 254;

/// What identifies a route in a kernel table for Reef: the table and the destination prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    pub table: u32,
    pub dst: IpNet,
}

/// One route. A unicast route with several next hops is a multipath (ECMP) kernel route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub table: u32,
    pub kind: RouteKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKind {
    /// Forward via the next hops (at least one).
    Unicast { next_hops: Vec<NextHop> },
    /// Drop silently (the aggregate of an affine IPAM block).
    Blackhole,
}

/// One next hop: a gateway, an interface, or both. An IPv4 route may have an IPv6 gateway
/// (RFC 8950, sent as `RTA_VIA`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NextHop {
    pub gateway: Option<IpAddr>,
    /// Interface index in the programmer's namespace (see `FibProgrammer::link_index`). `None` lets
    /// the kernel pick the interface towards the gateway.
    pub ifindex: Option<u32>,
    /// Relative weight among the hops of a multipath route, 1..=256 (ignored with a single hop).
    pub weight: u16,
    /// Use the gateway as directly attached even if no address of the interface covers it.
    pub onlink: bool,
}

impl NextHop {
    pub const MAX_WEIGHT: u16 = 256;

    /// Via `gateway`, the kernel finds the interface.
    pub fn via(gateway: IpAddr) -> NextHop {
        NextHop {
            gateway: Some(gateway),
            ifindex: None,
            weight: 1,
            onlink: false,
        }
    }

    /// Directly out of interface `ifindex` (e.g. a pod's host veth).
    pub fn dev(ifindex: u32) -> NextHop {
        NextHop {
            gateway: None,
            ifindex: Some(ifindex),
            weight: 1,
            onlink: false,
        }
    }

    pub fn with_ifindex(mut self, ifindex: u32) -> NextHop {
        self.ifindex = Some(ifindex);
        self
    }

    pub fn with_weight(mut self, weight: u16) -> NextHop {
        self.weight = weight;
        self
    }

    pub fn onlink(mut self) -> NextHop {
        self.onlink = true;
        self
    }

    /// Whether the kernel's next hop `actual` is this one. An interface left to the kernel
    /// (`ifindex: None`) matches whichever it chose; weights count only in multipath routes.
    fn satisfied_by(&self, actual: &NextHop, multipath: bool) -> bool {
        self.gateway == actual.gateway
            && self
                .ifindex
                .is_none_or(|ifindex| actual.ifindex == Some(ifindex))
            && (!multipath || self.weight == actual.weight)
            && self.onlink == actual.onlink
    }
}

impl Route {
    /// A unicast route; the next hops are kept in canonical (sorted) order, the order the diff
    /// compares them in.
    pub fn unicast(dst: IpNet, table: u32, mut next_hops: Vec<NextHop>) -> Route {
        next_hops.sort();
        Route {
            dst,
            table,
            kind: RouteKind::Unicast { next_hops },
        }
    }

    pub fn blackhole(dst: IpNet, table: u32) -> Route {
        Route {
            dst,
            table,
            kind: RouteKind::Blackhole,
        }
    }

    pub fn key(&self) -> RouteKey {
        RouteKey {
            table: self.table,
            dst: self.dst,
        }
    }

    /// Whether the kernel's route `actual` (same key) already is this route, so nothing needs
    /// replacing. Next hops are compared as sets.
    pub fn satisfied_by(&self, actual: &Route) -> bool {
        match (&self.kind, &actual.kind) {
            (RouteKind::Blackhole, RouteKind::Blackhole) => true,
            (RouteKind::Unicast { next_hops: want }, RouteKind::Unicast { next_hops: have }) => {
                let multipath = want.len() > 1;
                want.len() == have.len() && {
                    let mut want = want.clone();
                    let mut have = have.clone();
                    want.sort();
                    have.sort();
                    want.iter()
                        .zip(&have)
                        .all(|(want, have)| want.satisfied_by(have, multipath))
                }
            }
            _ => false,
        }
    }
}

/// Routes keyed by [`RouteKey`], the form [`crate::FibDiff::compute`] takes. A later route with the
/// same key replaces an earlier one.
pub fn by_key(routes: impl IntoIterator<Item = Route>) -> BTreeMap<RouteKey, Route> {
    routes
        .into_iter()
        .map(|route| (route.key(), route))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn kernel_chosen_interface_satisfies_unspecified_one() {
        let want = Route::unicast(
            net("10.0.0.0/24"),
            MAIN_TABLE,
            vec![NextHop::via(ip("198.18.0.2"))],
        );
        let have = Route::unicast(
            net("10.0.0.0/24"),
            MAIN_TABLE,
            vec![NextHop::via(ip("198.18.0.2")).with_ifindex(7)],
        );
        assert!(want.satisfied_by(&have));
        assert!(
            !have.satisfied_by(&want),
            "a pinned interface needs the kernel to report it"
        );
    }

    #[test]
    fn multipath_compares_hops_as_sets_with_weights() {
        let a = NextHop::via(ip("198.18.0.2"));
        let b = NextHop::via(ip("198.18.1.2"));
        let want = Route::unicast(net("10.0.0.0/24"), MAIN_TABLE, vec![a.clone(), b.clone()]);
        let reordered = Route {
            kind: RouteKind::Unicast {
                next_hops: vec![b.clone(), a.clone()],
            },
            ..want.clone()
        };
        assert!(want.satisfied_by(&reordered));
        let heavier = Route::unicast(
            net("10.0.0.0/24"),
            MAIN_TABLE,
            vec![a.clone(), b.with_weight(3)],
        );
        assert!(!want.satisfied_by(&heavier));
        let single = Route::unicast(net("10.0.0.0/24"), MAIN_TABLE, vec![a.clone()]);
        assert!(!want.satisfied_by(&single));
        // A single hop's weight means nothing to the kernel.
        let weighted = Route::unicast(net("10.0.0.0/24"), MAIN_TABLE, vec![a.with_weight(9)]);
        assert!(single.satisfied_by(&weighted));
    }

    #[test]
    fn blackhole_is_not_unicast() {
        let blackhole = Route::blackhole(net("10.0.0.0/26"), MAIN_TABLE);
        let unicast = Route::unicast(net("10.0.0.0/26"), MAIN_TABLE, vec![NextHop::dev(3)]);
        assert!(blackhole.satisfied_by(&blackhole.clone()));
        assert!(!blackhole.satisfied_by(&unicast));
        assert!(!unicast.satisfied_by(&blackhole));
    }
}
