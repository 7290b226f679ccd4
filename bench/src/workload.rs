//! The routes the injector sends: `prefixes` distinct IPv4 /24s in `attr_sets` contiguous groups, each
//! group with its own path attributes (AS_PATH, MED, COMMUNITIES differ), all pre-encoded with the
//! codec of `reef_bgp::wire` into one buffer of UPDATEs packed to the 4096-octet limit.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use ipnet::Ipv4Net;
use reef_bgp::wire::{
    AsPath, CodecContext, Community, Message, NextHop, Nlri, Origin, PathAttributes, Update,
};

/// The first prefix: 100.64.0.0/24; the following ones count up by /24 and skip 127.0.0.0/8.
const FIRST_SLASH24: u32 = (100 << 16) | (64 << 8);
const LOOPBACK_SLASH24: u32 = 127 << 16;
/// Prefixes stay below 224.0.0.0 (multicast and reserved space that daemons reject).
const END_SLASH24: u32 = 224 << 16;
/// Prefixes beyond this many would reach 224.0.0.0.
pub const MAX_PREFIXES: u32 = END_SLASH24 - FIRST_SLASH24 - (1 << 16);
/// A buffer of UPDATEs is written between two KEEPALIVE checks in pieces of about this size.
const CHUNK_BYTES: usize = 1 << 20;

/// How many routes, with how many distinct attribute sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    pub prefixes: u32,
    pub attr_sets: u32,
}

impl Workload {
    pub fn new(prefixes: u32, attr_sets: u32) -> Result<Workload> {
        if prefixes == 0 || prefixes > MAX_PREFIXES {
            bail!("--prefixes must be 1..={MAX_PREFIXES}");
        }
        if attr_sets == 0 || attr_sets > prefixes {
            bail!("--attr-sets must be 1..=prefixes ({prefixes})");
        }
        Ok(Workload {
            prefixes,
            attr_sets,
        })
    }

    /// Prefix number `index`: a /24 counted up from 100.64.0.0, skipping 127.0.0.0/8.
    pub fn prefix(index: u32) -> Ipv4Net {
        let mut slash24 = FIRST_SLASH24 + index;
        if slash24 >= LOOPBACK_SLASH24 {
            slash24 += 1 << 16;
        }
        // Cannot fail: 24 is a valid IPv4 prefix length.
        Ipv4Net::new(Ipv4Addr::from(slash24 << 8), 24).unwrap()
    }

    /// The prefixes of attribute set `set`: `[set * prefixes / attr_sets, (set + 1) * prefixes / attr_sets)`.
    fn prefix_range(&self, set: u32) -> std::ops::Range<u32> {
        let bound = |set: u32| {
            (u64::from(set) * u64::from(self.prefixes) / u64::from(self.attr_sets)) as u32
        };
        bound(set)..bound(set + 1)
    }

    /// Attribute set number `set`: all sets differ in AS_PATH (the second AS is unique, the length varies
    /// 2..=4), MED and COMMUNITIES.
    pub fn attributes(set: u32, injector_as: u32) -> PathAttributes {
        Workload::attributes_prepended(set, injector_as, 0)
    }

    /// [`Workload::attributes`] with the injector's AS `prepend` more times in front of the AS_PATH: a
    /// second peer announcing the same prefixes with a longer path (kept, but not best).
    pub fn attributes_prepended(set: u32, injector_as: u32, prepend: u32) -> PathAttributes {
        let mut asns = vec![injector_as; 1 + prepend as usize];
        asns.push(4_200_000_000 + set);
        asns.extend((0..set % 3).map(|hop| 65100 + hop));
        let community_as = u16::try_from(injector_as).unwrap_or(65535);
        PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::from_sequence(asns)),
            med: Some(set),
            communities: vec![
                Community::new(community_as, (set & 0xffff) as u16),
                Community::new(community_as, (set >> 16) as u16),
            ],
            ..PathAttributes::default()
        }
    }
}

/// The pre-encoded UPDATE stream.
#[derive(Debug, Clone)]
pub struct EncodedUpdates {
    /// All UPDATEs back to back.
    pub bytes: Bytes,
    /// Offsets in `bytes` where a chunk of whole messages ends (the last one is `bytes.len()`): KEEPALIVEs
    /// may be written there.
    pub chunk_ends: Vec<usize>,
    pub updates: u64,
    pub prefixes: u64,
    pub attr_sets: u64,
    /// The IPv4 End-of-RIB marker, sent after the UPDATEs.
    pub end_of_rib: Bytes,
    /// The context the UPDATEs were encoded for; the session must negotiate exactly this.
    pub ctx: CodecContext,
    /// The NEXT_HOP of every route: the injector's address.
    pub next_hop: Ipv4Addr,
}

/// The codec context the injector's session negotiates with every daemon: 4-octet AS, no ADD-PATH, no
/// extended messages (both sides advertise the same capabilities, see [`crate::injector`]), eBGP.
pub fn session_context() -> CodecContext {
    CodecContext {
        four_octet_as: true,
        ..CodecContext::default()
    }
}

/// Encodes the whole workload.
pub fn encode(workload: &Workload, injector_as: u32, next_hop: Ipv4Addr) -> Result<EncodedUpdates> {
    encode_prepended(workload, injector_as, next_hop, 0)
}

/// Encodes the whole workload with [`Workload::attributes_prepended`].
pub fn encode_prepended(
    workload: &Workload,
    injector_as: u32,
    next_hop: Ipv4Addr,
    prepend: u32,
) -> Result<EncodedUpdates> {
    let ctx = session_context();
    // A /24 NLRI takes 4 octets: about 4 octets per prefix plus the per-UPDATE overhead.
    let mut out =
        BytesMut::with_capacity(workload.prefixes as usize * 4 + workload.attr_sets as usize * 96);
    let mut chunk_ends = Vec::new();
    let mut updates = 0u64;
    let mut nlri = Vec::new();
    for set in 0..workload.attr_sets {
        nlri.clear();
        nlri.extend(
            workload
                .prefix_range(set)
                .map(|index| Nlri::from(Workload::prefix(index))),
        );
        let attributes = Workload::attributes_prepended(set, injector_as, prepend);
        for update in Update::announce(&attributes, NextHop::V4(next_hop), &nlri, &ctx)
            .with_context(|| format!("split attribute set {set}"))?
        {
            Message::Update(update)
                .encode(&ctx, &mut out)
                .with_context(|| format!("encode attribute set {set}"))?;
            updates += 1;
            if out.len() - chunk_ends.last().copied().unwrap_or(0) >= CHUNK_BYTES {
                chunk_ends.push(out.len());
            }
        }
    }
    if chunk_ends.last() != Some(&out.len()) {
        chunk_ends.push(out.len());
    }
    let end_of_rib = Message::Update(Update::end_of_rib_marker(
        reef_bgp::wire::AfiSafi::IPV4_UNICAST,
    ))
    .to_bytes(&ctx)
    .context("encode End-of-RIB")?;
    Ok(EncodedUpdates {
        bytes: out.freeze(),
        chunk_ends,
        updates,
        prefixes: u64::from(workload.prefixes),
        attr_sets: u64::from(workload.attr_sets),
        end_of_rib,
        ctx,
        next_hop,
    })
}

/// One UPDATE announcing `prefix` with attribute set 0 via `next_hop`, encoded for [`session_context`].
pub fn encode_announce(prefix: Ipv4Net, injector_as: u32, next_hop: Ipv4Addr) -> Result<Bytes> {
    let ctx = session_context();
    let attributes = Workload::attributes(0, injector_as);
    let mut out = BytesMut::new();
    for update in Update::announce(
        &attributes,
        NextHop::V4(next_hop),
        &[Nlri::from(prefix)],
        &ctx,
    )
    .context("announce")?
    {
        Message::Update(update)
            .encode(&ctx, &mut out)
            .context("encode announce")?;
    }
    Ok(out.freeze())
}

/// One UPDATE withdrawing `prefix`, encoded for [`session_context`].
pub fn encode_withdraw(prefix: Ipv4Net) -> Result<Bytes> {
    let ctx = session_context();
    let mut out = BytesMut::new();
    for update in Update::withdraw(&[Nlri::from(prefix)], &ctx).context("withdraw")? {
        Message::Update(update)
            .encode(&ctx, &mut out)
            .context("encode withdraw")?;
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reef_bgp::wire::{MAX_MESSAGE_LEN, message_length};
    use std::collections::HashSet;

    #[test]
    fn prefixes_are_distinct_slash24s_outside_loopback() {
        assert_eq!(Workload::prefix(0).to_string(), "100.64.0.0/24");
        assert_eq!(Workload::prefix(1).to_string(), "100.64.1.0/24");
        let last_before_loopback = LOOPBACK_SLASH24 - FIRST_SLASH24 - 1;
        assert_eq!(
            Workload::prefix(last_before_loopback).to_string(),
            "126.255.255.0/24"
        );
        assert_eq!(
            Workload::prefix(last_before_loopback + 1).to_string(),
            "128.0.0.0/24"
        );
        assert_eq!(
            Workload::prefix(MAX_PREFIXES - 1).to_string(),
            "223.255.255.0/24"
        );
        assert!(Workload::new(MAX_PREFIXES + 1, 1).is_err());
        assert!(Workload::new(10, 11).is_err());
    }

    #[test]
    fn attribute_sets_differ() {
        let sets: HashSet<_> = (0..1000)
            .map(|set| Workload::attributes(set, 65001))
            .collect();
        assert_eq!(sets.len(), 1000);
    }

    #[test]
    fn prepending_lengthens_the_path_only() {
        let plain = Workload::attributes(5, 65002);
        let prepended = Workload::attributes_prepended(5, 65002, 1);
        assert_eq!(
            prepended.as_path.as_ref().unwrap().path_len(),
            plain.as_path.as_ref().unwrap().path_len() + 1
        );
        assert_eq!(prepended.med, plain.med);
    }

    #[test]
    fn single_announce_and_withdraw_decode() {
        let prefix = Workload::prefix(3);
        let next_hop = Ipv4Addr::new(198, 18, 0, 1);
        let ctx = session_context();
        let announce =
            reef_bgp::wire::decode(&encode_announce(prefix, 65001, next_hop).unwrap(), &ctx)
                .unwrap();
        let Message::Update(announce) = announce else {
            panic!("not an UPDATE")
        };
        assert_eq!(announce.nlri, vec![Nlri::from(prefix)]);
        assert_eq!(announce.attributes.next_hop, Some(next_hop));
        let withdraw = reef_bgp::wire::decode(&encode_withdraw(prefix).unwrap(), &ctx).unwrap();
        let Message::Update(withdraw) = withdraw else {
            panic!("not an UPDATE")
        };
        assert_eq!(withdraw.withdrawn, vec![Nlri::from(prefix)]);
        assert!(withdraw.nlri.is_empty());
    }

    /// Decodes the stream back with the codec: every prefix once, each UPDATE within 4096 octets, each
    /// attribute set used, and the UPDATEs packed full.
    #[test]
    fn encoded_stream_decodes_to_the_workload() {
        let workload = Workload::new(10_000, 7).unwrap();
        let next_hop = Ipv4Addr::new(198, 18, 0, 1);
        let encoded = encode(&workload, 65001, next_hop).unwrap();
        let mut rest = encoded.bytes.clone();
        let mut prefixes = HashSet::new();
        let mut meds = HashSet::new();
        let mut updates = 0;
        while !rest.is_empty() {
            let len = message_length(&rest, &encoded.ctx).unwrap().unwrap();
            assert!(len <= MAX_MESSAGE_LEN);
            let message = reef_bgp::wire::decode_bytes(rest.split_to(len), &encoded.ctx).unwrap();
            let Message::Update(update) = message else {
                panic!("not an UPDATE: {message:?}")
            };
            assert_eq!(update.attributes.next_hop, Some(next_hop));
            meds.insert(update.attributes.med.unwrap());
            for nlri in update.nlri {
                assert!(prefixes.insert(nlri.prefix), "duplicate {}", nlri.prefix);
            }
            updates += 1;
        }
        assert_eq!(prefixes.len(), 10_000);
        assert_eq!(meds.len(), 7);
        assert_eq!(updates, encoded.updates);
        // 10,000 /24s of 4 octets in 7 groups: about 40 kB, at most one partly filled UPDATE per group.
        assert!(
            updates <= 10_000 * 4 / (MAX_MESSAGE_LEN as u64 - 100) + 7,
            "{updates} UPDATEs"
        );
        assert_eq!(encoded.chunk_ends.last(), Some(&encoded.bytes.len()));
        let eor = reef_bgp::wire::decode(&encoded.end_of_rib, &encoded.ctx).unwrap();
        let Message::Update(eor) = eor else {
            panic!("End-of-RIB is not an UPDATE")
        };
        assert_eq!(
            eor.end_of_rib(),
            Some(reef_bgp::wire::AfiSafi::IPV4_UNICAST)
        );
    }
}
