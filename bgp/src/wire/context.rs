//! The codec context: what the two OPENs negotiated, which changes how UPDATEs are read and written.

use super::open::Open;
use super::types::{Afi, AfiSafi, AfiSafiSet, MAX_EXTENDED_MESSAGE_LEN, MAX_MESSAGE_LEN};

/// Per-session codec flags. `Default` is the context before the OPEN exchange (2-octet AS, 4096-octet
/// messages, no ADD-PATH), which is all that is needed to read and write OPEN, KEEPALIVE and
/// NOTIFICATION.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Debug)]
pub struct CodecContext {
    /// Both sides advertised the 4-octet AS capability (RFC 6793): AS_PATH and AGGREGATOR carry 4-octet
    /// AS numbers, AS4_PATH/AS4_AGGREGATOR are neither sent nor accepted.
    pub four_octet_as: bool,
    /// Both sides advertised Extended Message (RFC 8654): UPDATE, NOTIFICATION and ROUTE-REFRESH may be
    /// up to 65535 octets.
    pub extended_message: bool,
    /// Families whose received NLRI carry a Path Identifier (we advertised receive, the peer send).
    pub add_path_receive: AfiSafiSet,
    /// Families whose sent NLRI carry a Path Identifier (we advertised send, the peer receive).
    pub add_path_send: AfiSafiSet,
    /// NLRI families that may use an IPv6 next hop (RFC 8950; both sides advertised it).
    pub extended_next_hop: AfiSafiSet,
    /// Internal peer (same AS): LOCAL_PREF is accepted only then (RFC 4271 §5.1.5).
    pub ibgp: bool,
}

impl CodecContext {
    /// Derives the session context from our OPEN and the peer's. RFC 6793 §4, RFC 8654 §3, RFC 7911 §4,
    /// RFC 8950 §3: each feature is used only when both sides advertised it.
    pub fn negotiate(local: &Open, remote: &Open) -> CodecContext {
        let mut ctx = CodecContext {
            four_octet_as: local.four_octet_as().is_some() && remote.four_octet_as().is_some(),
            extended_message: local.has_capability(super::open::capability_code::EXTENDED_MESSAGE)
                && remote.has_capability(super::open::capability_code::EXTENDED_MESSAGE),
            ibgp: local.asn() == remote.asn(),
            ..CodecContext::default()
        };
        // RFC 7911 §4: path identifiers are received for a family when we advertised Receive (or Both)
        // and the peer Send (or Both), and sent in the opposite case.
        for ours in local.add_path() {
            for theirs in remote.add_path().filter(|f| f.afi_safi == ours.afi_safi) {
                if ours.mode.receives() && theirs.mode.sends() {
                    ctx.add_path_receive.insert(ours.afi_safi);
                }
                if ours.mode.sends() && theirs.mode.receives() {
                    ctx.add_path_send.insert(ours.afi_safi);
                }
            }
        }
        for ours in local
            .extended_next_hop()
            .filter(|f| f.next_hop_afi == Afi::IPV6)
        {
            if remote.extended_next_hop().any(|theirs| theirs == ours) {
                ctx.extended_next_hop.insert(ours.nlri);
            }
        }
        ctx
    }

    /// Maximum size of UPDATE, NOTIFICATION and ROUTE-REFRESH messages (OPEN and KEEPALIVE are always
    /// limited to 4096, RFC 8654 §4).
    pub fn max_message_len(&self) -> usize {
        if self.extended_message {
            MAX_EXTENDED_MESSAGE_LEN
        } else {
            MAX_MESSAGE_LEN
        }
    }

    pub(crate) fn add_path_rx(&self, afi_safi: AfiSafi) -> bool {
        self.add_path_receive.contains(afi_safi)
    }

    pub(crate) fn add_path_tx(&self, afi_safi: AfiSafi) -> bool {
        self.add_path_send.contains(afi_safi)
    }
}
