//! The pure core of the FIB programmer: what to change so the kernel's Reef routes become the
//! desired ones.

use std::collections::BTreeMap;

use super::model::{Route, RouteKey};

/// One change to a kernel routing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FibOp {
    /// Install a route whose key has no Reef route yet. Sent exclusive (`NLM_F_EXCL`): if a route
    /// of another owner holds the key, the kernel refuses it and the other route stays.
    Add(Route),
    /// Replace Reef's route at this key, which differs from the desired one.
    Replace(Route),
    /// Remove Reef's route at this key (only a route with Reef's protocol number is removed).
    Delete(RouteKey),
}

impl FibOp {
    pub fn key(&self) -> RouteKey {
        match self {
            FibOp::Add(route) | FibOp::Replace(route) => route.key(),
            FibOp::Delete(key) => *key,
        }
    }
}

/// Desired versus actual Reef routes.
pub struct FibDiff;

impl FibDiff {
    /// The operations that turn `actual` (the Reef routes in the kernel: routes of other owners are
    /// never in it) into `desired`. Adds and replaces come before deletes, so traffic moving from a
    /// withdrawn prefix to a covering one finds the new route first. A route already satisfied by
    /// the kernel's (see [`Route::satisfied_by`]) gives no operation.
    pub fn compute(
        desired: &BTreeMap<RouteKey, Route>,
        actual: &BTreeMap<RouteKey, Route>,
    ) -> Vec<FibOp> {
        let mut ops = Vec::new();
        for (key, route) in desired {
            match actual.get(key) {
                None => ops.push(FibOp::Add(route.clone())),
                Some(have) if !route.satisfied_by(have) => ops.push(FibOp::Replace(route.clone())),
                Some(_) => {}
            }
        }
        ops.extend(
            actual
                .keys()
                .filter(|key| !desired.contains_key(key))
                .map(|key| FibOp::Delete(*key)),
        );
        ops
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use ipnet::IpNet;
    use proptest::prelude::*;

    use super::*;
    use crate::fib::model::{MAIN_TABLE, NextHop, by_key};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn adds_replaces_and_deletes() {
        let gw1 = NextHop::via(ip("198.18.0.2"));
        let gw2 = NextHop::via(ip("198.18.1.2"));
        let actual = by_key([
            Route::unicast(net("10.0.0.0/24"), MAIN_TABLE, vec![gw1.clone()]),
            Route::unicast(
                net("10.0.1.0/24"),
                MAIN_TABLE,
                vec![gw1.clone(), gw2.clone()],
            ),
            Route::blackhole(net("10.0.2.0/26"), MAIN_TABLE),
        ]);
        let desired = by_key([
            Route::unicast(net("10.0.0.0/24"), MAIN_TABLE, vec![gw1.clone()]),
            Route::unicast(net("10.0.1.0/24"), MAIN_TABLE, vec![gw2.clone()]),
            Route::unicast(net("2001:db8:1::/48"), 100, vec![NextHop::dev(4)]),
        ]);
        let ops = FibDiff::compute(&desired, &actual);
        assert_eq!(
            ops,
            vec![
                // Keys in order: table 100 sorts before the main table (254).
                FibOp::Add(Route::unicast(
                    net("2001:db8:1::/48"),
                    100,
                    vec![NextHop::dev(4)]
                )),
                FibOp::Replace(Route::unicast(net("10.0.1.0/24"), MAIN_TABLE, vec![gw2])),
                FibOp::Delete(RouteKey {
                    table: MAIN_TABLE,
                    dst: net("10.0.2.0/26")
                }),
            ]
        );
    }

    #[test]
    fn nothing_to_do_when_the_kernel_filled_in_the_interface() {
        let desired = by_key([Route::unicast(
            net("10.0.0.0/24"),
            MAIN_TABLE,
            vec![NextHop::via(ip("198.18.0.2"))],
        )]);
        let actual = by_key([Route::unicast(
            net("10.0.0.0/24"),
            MAIN_TABLE,
            vec![NextHop::via(ip("198.18.0.2")).with_ifindex(2)],
        )]);
        assert!(FibDiff::compute(&desired, &actual).is_empty());
    }

    /// What the kernel does with the operations, for Reef's routes.
    fn apply(actual: &BTreeMap<RouteKey, Route>, ops: &[FibOp]) -> BTreeMap<RouteKey, Route> {
        let mut table = actual.clone();
        for op in ops {
            match op {
                FibOp::Add(route) => {
                    assert!(
                        table.insert(route.key(), route.clone()).is_none(),
                        "add over an existing route"
                    );
                }
                FibOp::Replace(route) => {
                    assert!(
                        table.insert(route.key(), route.clone()).is_some(),
                        "replace of a missing route"
                    );
                }
                FibOp::Delete(key) => {
                    assert!(table.remove(key).is_some(), "delete of a missing route");
                }
            }
        }
        table
    }

    fn arb_route() -> impl Strategy<Value = Route> {
        let dst = prop_oneof![
            (0u8..8, 22u8..=32).prop_map(|(n, len)| IpNet::new(IpAddr::from([10, 0, n, 0]), len)
                .unwrap()
                .trunc()),
            (0u16..8).prop_map(
                |n| IpNet::new(IpAddr::from([0x2001, 0xdb8, n, 0, 0, 0, 0, 0]), 48).unwrap()
            ),
        ];
        let hop = (
            0u8..3,
            proptest::option::of(1u32..3),
            1u16..3,
            any::<bool>(),
        )
            .prop_map(|(gw, ifindex, weight, onlink)| NextHop {
                gateway: Some(IpAddr::from([198, 18, gw, 2])),
                ifindex,
                weight,
                onlink,
            });
        let kind = prop_oneof![
            Just(None),
            proptest::collection::vec(hop, 1..4).prop_map(Some),
        ];
        (dst, prop_oneof![Just(MAIN_TABLE), Just(100u32)], kind).prop_map(|(dst, table, hops)| {
            match hops {
                None => Route::blackhole(dst, table),
                Some(hops) => Route::unicast(dst, table, hops),
            }
        })
    }

    proptest! {
        #[test]
        fn applying_the_diff_yields_desired(
            desired in proptest::collection::vec(arb_route(), 0..40),
            actual in proptest::collection::vec(arb_route(), 0..40),
        ) {
            let desired = by_key(desired);
            let actual = by_key(actual);
            let ops = FibDiff::compute(&desired, &actual);
            let result = apply(&actual, &ops);
            prop_assert_eq!(result.keys().collect::<Vec<_>>(), desired.keys().collect::<Vec<_>>());
            for (key, route) in &desired {
                prop_assert!(route.satisfied_by(&result[key]));
            }
            // Idempotent: once applied, nothing is left to do.
            prop_assert!(FibDiff::compute(&desired, &result).is_empty());
        }
    }
}
