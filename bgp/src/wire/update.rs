//! UPDATE message (RFC 4271 §4.3) with MP_REACH/MP_UNREACH (RFC 4760), ADD-PATH (RFC 7911), RFC 7606
//! error handling and End-of-RIB (RFC 4724 §2).

use bytes::{BufMut, Bytes, BytesMut};

use super::attribute::{
    AttributeError, ErrorAction, MP_UNREACH_OVERHEAD, MpReach, MpUnreach, NextHop, PathAttributes,
    attr_type, decode_attributes, encode_mp_reach, encode_mp_unreach, mp_reach_overhead,
};
use super::context::CodecContext;
use super::error::{EncodeError, UpdateError};
use super::nlri::{Nlri, decode_prefixes};
use super::types::{Afi, AfiSafi, HEADER_LEN, Reader, Safi};

/// An UPDATE message.
///
/// IPv4 unicast routes use the `withdrawn` and `nlri` fields (with `attributes.next_hop`); other
/// families use `mp_reach`/`mp_unreach`.
///
/// # RFC 7606 outcome of decoding
/// - **OK**: `errors` is empty.
/// - **Attribute discard**: `errors` lists the dropped attributes with [`ErrorAction::AttributeDiscard`];
///   `attributes` lacks them and the routes are used normally.
/// - **Treat-as-withdraw**: `treat_as_withdraw` is true and `errors` holds at least one
///   [`ErrorAction::TreatAsWithdraw`] entry. Decoding has already turned every announced prefix into a
///   withdrawal (`nlri` moved to `withdrawn`, `mp_reach` NLRI moved to `mp_unreach`), and cleared
///   `attributes` and `raw_attributes`: the receiver just processes the withdrawals.
/// - **Session reset**: decoding returns `Err(MessageError::Update(..))`; send its
///   [`super::MessageError::notification`].
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct Update {
    /// Withdrawn Routes field (IPv4 unicast).
    pub withdrawn: Vec<Nlri>,
    pub attributes: PathAttributes,
    /// NLRI field (IPv4 unicast).
    pub nlri: Vec<Nlri>,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
    /// The received path attributes as they were on the wire, without MP_REACH_NLRI/MP_UNREACH_NLRI and
    /// without attributes that were discarded or ignored: a key for interning attribute sets (add
    /// `mp_reach.next_hop` for MP routes). A zero-copy slice of the message when nothing was removed.
    /// On encode it is ignored (the typed `attributes` are written); the split helpers fill it.
    pub raw_attributes: Bytes,
    /// RFC 7606 treat-as-withdraw was applied (see the type docs).
    pub treat_as_withdraw: bool,
    /// Malformed attributes that were discarded or caused treat-as-withdraw.
    pub errors: Vec<AttributeError>,
    /// The prefixes the UPDATE announced that treat-as-withdraw turned into withdrawals (also in
    /// `withdrawn`/`mp_unreach`), so that the receiver can show them as ignored with the reason.
    pub withdrawn_by_error: Vec<Nlri>,
}

impl Update {
    /// Decodes an UPDATE body (after the header). `Err` is a session reset.
    pub(crate) fn decode(body: &Bytes, ctx: &CodecContext) -> Result<Update, UpdateError> {
        let mut r = Reader::new(body);
        // RFC 4271 §6.3: "If the Withdrawn Routes Length or Total Attribute Length is too large (i.e., if
        // Withdrawn Routes Length + Total Attribute Length + 23 exceeds the message Length), then the
        // Error Subcode MUST be set to Malformed Attribute List."
        let withdrawn_len = r.u16().ok_or(UpdateError::MalformedAttributeList)?;
        let withdrawn_field = r
            .take(usize::from(withdrawn_len))
            .ok_or(UpdateError::MalformedAttributeList)?;
        let attr_len = r.u16().ok_or(UpdateError::MalformedAttributeList)?;
        let attr_field = r
            .take(usize::from(attr_len))
            .ok_or(UpdateError::MalformedAttributeList)?;
        let nlri_field = r.rest();

        // RFC 4271 §6.3: "The NLRI field in the UPDATE message is checked for syntactic validity. If the
        // field is syntactically incorrect, then the Error Subcode MUST be set to Invalid Network Field."
        // RFC 7606 §3 (i): "The Withdrawn Routes field MUST be checked for syntactic correctness in the
        // same manner as the NLRI field." and §5.3: an unparseable NLRI field makes treat-as-withdraw
        // impossible, so the session is reset.
        let v4_add_path = ctx.add_path_rx(AfiSafi::IPV4_UNICAST);
        let mut withdrawn = Vec::new();
        decode_prefixes(withdrawn_field, Afi::IPV4, v4_add_path, &mut withdrawn)
            .ok_or(UpdateError::InvalidNetworkField)?;
        let mut nlri = Vec::new();
        decode_prefixes(nlri_field, Afi::IPV4, v4_add_path, &mut nlri)
            .ok_or(UpdateError::InvalidNetworkField)?;

        let attrs = decode_attributes(&body.slice_ref(attr_field), ctx, !nlri.is_empty())?;
        let mut update = Update {
            withdrawn,
            attributes: attrs.attrs,
            nlri,
            mp_reach: attrs.mp_reach,
            mp_unreach: attrs.mp_unreach,
            raw_attributes: attrs.raw,
            treat_as_withdraw: attrs.treat_as_withdraw,
            errors: attrs.errors,
            withdrawn_by_error: Vec::new(),
        };
        update.check_mandatory();
        if update.treat_as_withdraw {
            update.apply_treat_as_withdraw();
        }
        Ok(update)
    }

    /// RFC 7606 §3 (d): "If any of the well-known mandatory attributes are not present in an UPDATE
    /// message, then "treat-as-withdraw" MUST be used. (Note that [RFC4760] reclassifies NEXT_HOP as
    /// what is effectively discretionary.)" They are mandatory only when the UPDATE announces routes;
    /// NEXT_HOP only when the NLRI field does.
    fn check_mandatory(&mut self) {
        let announces =
            !self.nlri.is_empty() || self.mp_reach.as_ref().is_some_and(|mp| !mp.nlri.is_empty());
        if !announces || self.treat_as_withdraw {
            return;
        }
        let attrs = &self.attributes;
        let required = [
            (attr_type::ORIGIN, attrs.origin.is_some()),
            (attr_type::AS_PATH, attrs.as_path.is_some()),
            (
                attr_type::NEXT_HOP,
                self.nlri.is_empty() || attrs.next_hop.is_some(),
            ),
        ];
        for (type_code, present) in required {
            if !present {
                self.errors.push(AttributeError {
                    type_code,
                    action: ErrorAction::TreatAsWithdraw,
                    error: UpdateError::MissingWellKnownAttribute { type_code },
                });
                self.treat_as_withdraw = true;
            }
        }
    }

    /// Turns every announcement into a withdrawal. RFC 7606 §2: "treat-as-withdraw": "In this approach,
    /// the UPDATE message containing the path attribute in question MUST be treated as though all
    /// contained routes had been withdrawn just as if they had been listed in the WITHDRAWN ROUTES field
    /// (or in the MP_UNREACH_NLRI attribute if appropriate) of the UPDATE message".
    fn apply_treat_as_withdraw(&mut self) {
        self.withdrawn_by_error = self
            .nlri
            .iter()
            .chain(self.mp_reach.iter().flat_map(|mp| mp.nlri.iter()))
            .copied()
            .collect();
        self.withdrawn.append(&mut self.nlri);
        if let Some(reach) = self.mp_reach.take() {
            if reach.afi_safi == AfiSafi::IPV4_UNICAST {
                // Same family as the Withdrawn Routes field.
                self.withdrawn.extend(reach.nlri);
            } else {
                match &mut self.mp_unreach {
                    Some(unreach) if unreach.afi_safi == reach.afi_safi => {
                        unreach.withdrawn.extend(reach.nlri)
                    }
                    other => {
                        if let Some(unreach) =
                            other.take().filter(|u| u.afi_safi == AfiSafi::IPV4_UNICAST)
                        {
                            self.withdrawn.extend(unreach.withdrawn);
                        }
                        *other = Some(MpUnreach {
                            afi_safi: reach.afi_safi,
                            withdrawn: reach.nlri,
                        });
                    }
                }
            }
        }
        self.attributes = PathAttributes::default();
        self.raw_attributes = Bytes::new();
    }

    /// Appends the UPDATE body. MP_REACH_NLRI and MP_UNREACH_NLRI come first (RFC 7606 §5.1: "The
    /// MP_REACH_NLRI or MP_UNREACH_NLRI attribute (if present) SHALL be encoded as the very first path
    /// attribute in an UPDATE message.").
    pub(crate) fn encode_body(
        &self,
        ctx: &CodecContext,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let v4_add_path = ctx.add_path_tx(AfiSafi::IPV4_UNICAST);
        let too_large = |size: usize| EncodeError::MessageTooLarge {
            size: HEADER_LEN + size,
            max: ctx.max_message_len(),
        };

        let at = out.len();
        out.put_u16(0);
        for nlri in &self.withdrawn {
            if nlri.afi() != Afi::IPV4 {
                return Err(EncodeError::NotIpv4);
            }
            nlri.encode(v4_add_path, out);
        }
        let len = out.len() - at - 2;
        let len16 = u16::try_from(len).map_err(|_| too_large(len))?;
        out[at..at + 2].copy_from_slice(&len16.to_be_bytes());

        let at = out.len();
        out.put_u16(0);
        if let Some(reach) = &self.mp_reach {
            encode_mp_reach(reach, ctx, out)?;
        }
        if let Some(unreach) = &self.mp_unreach {
            encode_mp_unreach(unreach, ctx, out)?;
        }
        self.attributes.encode(ctx, out)?;
        let len = out.len() - at - 2;
        let len16 = u16::try_from(len).map_err(|_| too_large(len))?;
        out[at..at + 2].copy_from_slice(&len16.to_be_bytes());

        for nlri in &self.nlri {
            if nlri.afi() != Afi::IPV4 {
                return Err(EncodeError::NotIpv4);
            }
            nlri.encode(v4_add_path, out);
        }
        Ok(())
    }

    /// The family this UPDATE marks End-of-RIB for, if it is such a marker. RFC 4724 §2: "For the IPv4
    /// unicast address family, the End-of-RIB marker is an UPDATE message with the minimum length
    /// [BGP-4]. For any other address family, it is an UPDATE message that contains only the
    /// MP_UNREACH_NLRI attribute [BGP-MP] with no withdrawn routes for that <AFI, SAFI>."
    pub fn end_of_rib(&self) -> Option<AfiSafi> {
        if !self.withdrawn.is_empty()
            || !self.nlri.is_empty()
            || self.mp_reach.is_some()
            || self.treat_as_withdraw
            || !self.errors.is_empty()
            || !self.attributes.is_empty()
        {
            return None;
        }
        match &self.mp_unreach {
            None => Some(AfiSafi::IPV4_UNICAST),
            Some(unreach) if unreach.withdrawn.is_empty() => Some(unreach.afi_safi),
            Some(_) => None,
        }
    }

    /// The End-of-RIB marker for `afi_safi` (RFC 4724 §2).
    pub fn end_of_rib_marker(afi_safi: AfiSafi) -> Update {
        let mp_unreach = (afi_safi != AfiSafi::IPV4_UNICAST).then(|| MpUnreach {
            afi_safi,
            withdrawn: Vec::new(),
        });
        Update {
            mp_unreach,
            ..Update::default()
        }
    }

    /// Splits an announcement of `prefixes` (one address family) sharing `attributes` into as few UPDATEs
    /// as fit the negotiated message size. IPv4 prefixes with an IPv4 next hop go in the NLRI field with
    /// NEXT_HOP; IPv6 prefixes, and IPv4 prefixes with an IPv6 next hop (RFC 8950, if negotiated), go in
    /// MP_REACH_NLRI. `attributes.next_hop` is overwritten. Each UPDATE's `raw_attributes` is filled.
    pub fn announce(
        attributes: &PathAttributes,
        next_hop: NextHop,
        prefixes: &[Nlri],
        ctx: &CodecContext,
    ) -> Result<Vec<Update>, EncodeError> {
        let Some(afi) = single_family(prefixes)? else {
            return Ok(Vec::new());
        };
        let afi_safi = AfiSafi::new(afi, Safi::UNICAST);
        let mut attributes = attributes.clone();
        let in_mp_reach = match (afi, next_hop) {
            (Afi::IPV4, NextHop::V4(addr)) => {
                attributes.next_hop = Some(addr);
                false
            }
            (Afi::IPV4, NextHop::V6 { .. }) if ctx.extended_next_hop.contains(afi_safi) => true,
            (Afi::IPV6, NextHop::V6 { .. }) => true,
            _ => return Err(EncodeError::NextHopFamily(afi_safi)),
        };
        if in_mp_reach {
            // RFC 4760 §3: an UPDATE whose only NLRI are in MP_REACH_NLRI "SHOULD NOT carry the NEXT_HOP
            // attribute".
            attributes.next_hop = None;
        }
        let mut raw = BytesMut::new();
        attributes.encode(ctx, &mut raw)?;
        let raw = raw.freeze();
        let fixed = HEADER_LEN
            + 4
            + raw.len()
            + if in_mp_reach {
                mp_reach_overhead(&next_hop)
            } else {
                0
            };
        let add_path = ctx.add_path_tx(afi_safi);
        Ok(split(prefixes, fixed, add_path, ctx.max_message_len())?
            .into_iter()
            .map(|batch| {
                let (nlri, mp_reach) = if in_mp_reach {
                    (
                        Vec::new(),
                        Some(MpReach {
                            afi_safi,
                            next_hop,
                            nlri: batch,
                        }),
                    )
                } else {
                    (batch, None)
                };
                Update {
                    nlri,
                    mp_reach,
                    attributes: attributes.clone(),
                    raw_attributes: raw.clone(),
                    ..Update::default()
                }
            })
            .collect())
    }

    /// Splits a withdrawal of `prefixes` (one address family) into as few UPDATEs as fit: IPv4 in the
    /// Withdrawn Routes field, IPv6 in MP_UNREACH_NLRI.
    pub fn withdraw(prefixes: &[Nlri], ctx: &CodecContext) -> Result<Vec<Update>, EncodeError> {
        let Some(afi) = single_family(prefixes)? else {
            return Ok(Vec::new());
        };
        let afi_safi = AfiSafi::new(afi, Safi::UNICAST);
        let in_mp = afi != Afi::IPV4;
        let fixed = HEADER_LEN + 4 + if in_mp { MP_UNREACH_OVERHEAD } else { 0 };
        Ok(split(
            prefixes,
            fixed,
            ctx.add_path_tx(afi_safi),
            ctx.max_message_len(),
        )?
        .into_iter()
        .map(|batch| {
            if in_mp {
                Update {
                    mp_unreach: Some(MpUnreach {
                        afi_safi,
                        withdrawn: batch,
                    }),
                    ..Update::default()
                }
            } else {
                Update {
                    withdrawn: batch,
                    ..Update::default()
                }
            }
        })
        .collect())
    }
}

/// The one address family of `prefixes` (`None` if empty).
fn single_family(prefixes: &[Nlri]) -> Result<Option<Afi>, EncodeError> {
    let Some(first) = prefixes.first() else {
        return Ok(None);
    };
    let afi = first.afi();
    if prefixes.iter().any(|p| p.afi() != afi) {
        return Err(EncodeError::MixedFamilies);
    }
    Ok(Some(afi))
}

/// Greedy packing of prefixes into messages of at most `max` octets, each with `fixed` octets of overhead.
fn split(
    prefixes: &[Nlri],
    fixed: usize,
    add_path: bool,
    max: usize,
) -> Result<Vec<Vec<Nlri>>, EncodeError> {
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    let mut size = fixed;
    for prefix in prefixes {
        let len = prefix.encoded_len(add_path);
        if size + len > max {
            if batch.is_empty() {
                return Err(EncodeError::MessageTooLarge {
                    size: size + len,
                    max,
                });
            }
            batches.push(std::mem::take(&mut batch));
            size = fixed;
            if size + len > max {
                return Err(EncodeError::MessageTooLarge {
                    size: size + len,
                    max,
                });
            }
        }
        batch.push(*prefix);
        size += len;
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    Ok(batches)
}
