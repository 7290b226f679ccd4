//! Property tests of the sans-IO allocator core against a simple model of who holds which address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;
use reef_crds::AllocationAttribute;
use reef_ipam::block::{Block, ReleaseOutcome, ReleaseRequest, attribute};
use reef_ipam::pool::PoolLayout;

#[derive(Debug, Clone)]
enum Op {
    Assign {
        num: usize,
        handle: u8,
    },
    AssignIp {
        ordinal: u32,
        handle: u8,
    },
    /// Release a held address with the sequence number its holder got.
    ReleaseHeld {
        pick: usize,
    },
    /// Release an address with the sequence number of an earlier, already released allocation.
    ReleaseStale {
        pick: usize,
    },
    ReleaseByHandle {
        handle: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1usize..6, 0u8..4).prop_map(|(num, handle)| Op::Assign { num, handle }),
        (0u32..16, 0u8..4).prop_map(|(ordinal, handle)| Op::AssignIp { ordinal, handle }),
        any::<usize>().prop_map(|pick| Op::ReleaseHeld { pick }),
        any::<usize>().prop_map(|pick| Op::ReleaseStale { pick }),
        (0u8..4).prop_map(|handle| Op::ReleaseByHandle { handle }),
    ]
}

fn layout() -> impl Strategy<Value = (PoolLayout, String, usize)> {
    let v4 = (0u32..=255).prop_map(|third| {
        PoolLayout::new(format!("10.9.{third}.0/24").parse().unwrap(), 28).unwrap()
    });
    let v6 = Just(PoolLayout::new("fd00:9::/120".parse().unwrap(), 124).unwrap());
    (prop_oneof![v4, v6], "[a-z]{1,8}", 0usize..16).prop_map(|(pool, node, nth)| (pool, node, nth))
}

fn attr(handle: u8) -> AllocationAttribute {
    attribute(&format!("net.h{handle}"), BTreeMap::new())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn block_operations_keep_the_invariants((pool, node, nth) in layout(), ops in prop::collection::vec(op(), 1..60)) {
        let cidr: IpNet = pool.blocks_for_node(&node).nth(nth).unwrap();
        prop_assert!(pool.owns_block(cidr));
        let mut block = Block::new(cidr, Some(format!("host:{node}"))).unwrap();
        // Model: address -> (handle, sequence number of the live allocation).
        let mut held: BTreeMap<IpAddr, (u8, u64)> = BTreeMap::new();
        let mut released: Vec<(IpAddr, u64)> = Vec::new();

        for op in ops {
            match op {
                Op::Assign { num, handle } => {
                    let (next, got) = block.assign(num, &attr(handle));
                    prop_assert_eq!(got.len(), num.min(block.free_count()));
                    for a in &got {
                        prop_assert!(cidr.contains(&a.ip) && pool.cidr.contains(&a.ip));
                        prop_assert!(held.insert(a.ip, (handle, a.sequence_number)).is_none(), "{} handed out twice", a.ip);
                    }
                    block = next;
                }
                Op::AssignIp { ordinal, handle } => {
                    let ip = block.ip_of(ordinal % block.capacity() as u32);
                    match block.assign_ip(ip, &attr(handle)) {
                        Ok((next, a)) => {
                            prop_assert!(held.insert(ip, (handle, a.sequence_number)).is_none(), "{} handed out twice", ip);
                            block = next;
                        }
                        Err(_) => prop_assert!(held.contains_key(&ip)),
                    }
                }
                Op::ReleaseHeld { pick } => {
                    if held.is_empty() { continue; }
                    let (&ip, &(_, seq)) = held.iter().nth(pick % held.len()).unwrap();
                    let (next, out) = block.release(&[ReleaseRequest { ip, sequence_number: Some(seq) }]).unwrap();
                    let freed = matches!(out[0], ReleaseOutcome::Released { .. });
                    prop_assert!(freed, "release of a held address failed: {:?}", out);
                    held.remove(&ip);
                    released.push((ip, seq));
                    block = next;
                }
                Op::ReleaseStale { pick } => {
                    if released.is_empty() { continue; }
                    let (ip, seq) = released[pick % released.len()];
                    let (next, out) = block.release(&[ReleaseRequest { ip, sequence_number: Some(seq) }]).unwrap();
                    let freed = matches!(out[0], ReleaseOutcome::Released { .. });
                    prop_assert!(!freed, "stale release freed {}", ip);
                    prop_assert_eq!(&next, &block, "a stale release is a no-op");
                }
                Op::ReleaseByHandle { handle } => {
                    let (next, ips) = block.release_by_handle(&format!("net.h{handle}"));
                    let expected: BTreeSet<IpAddr> = held.iter().filter(|(_, (h, _))| *h == handle).map(|(ip, _)| *ip).collect();
                    prop_assert_eq!(ips.iter().copied().collect::<BTreeSet<_>>(), expected);
                    for ip in ips {
                        let (_, seq) = held.remove(&ip).unwrap();
                        released.push((ip, seq));
                    }
                    block = next;
                }
            }
            prop_assert!(block.validate().is_ok(), "{:?}", block.validate());
            let actual: BTreeMap<IpAddr, String> = block.allocated().map(|(ip, a)| (ip, a.handle_id.clone().unwrap())).collect();
            let model: BTreeMap<IpAddr, String> = held.iter().map(|(ip, (h, _))| (*ip, format!("net.h{h}"))).collect();
            prop_assert_eq!(actual, model);
            prop_assert_eq!(block.used_count(), held.len());
        }

        // Every released address becomes allocatable again: free everything, then the whole block is assignable.
        for h in 0..4 {
            block = block.release_by_handle(&format!("net.h{h}")).0;
        }
        prop_assert!(block.is_empty());
        let (_, all) = block.assign(block.capacity(), &attr(9));
        let all: BTreeSet<IpAddr> = all.iter().map(|a| a.ip).collect();
        prop_assert_eq!(all.len(), block.capacity());
        prop_assert!(all.iter().all(|ip| cidr.contains(ip)));
    }

    #[test]
    fn node_walk_covers_the_pool_once(third in 0u32..=255, prefix in 20u8..=26, node in "[a-z0-9-]{1,12}") {
        let pool = PoolLayout::new(format!("10.{third}.0.0/{prefix}").parse().unwrap(), 28).unwrap();
        let blocks: Vec<IpNet> = pool.blocks_for_node(&node).collect();
        let distinct: BTreeSet<IpNet> = blocks.iter().copied().collect();
        prop_assert_eq!(blocks.len() as u128, pool.block_count());
        prop_assert_eq!(distinct.len(), blocks.len());
        prop_assert!(blocks.iter().all(|b| pool.owns_block(*b)));
    }
}
