//! AS_PATH and AS4_PATH (RFC 4271 §4.3, RFC 5065 confederation segments, RFC 6793).

use bytes::{BufMut, BytesMut};

use super::types::{AS_TRANS, Reader};

/// Path segment type. RFC 4271 §4.3, RFC 5065 §3.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum SegmentType {
    Set = 1,
    Sequence = 2,
    ConfedSequence = 3,
    ConfedSet = 4,
}

impl SegmentType {
    fn from_u8(value: u8) -> Option<SegmentType> {
        match value {
            1 => Some(SegmentType::Set),
            2 => Some(SegmentType::Sequence),
            3 => Some(SegmentType::ConfedSequence),
            4 => Some(SegmentType::ConfedSet),
            _ => None,
        }
    }

    pub fn is_confed(self) -> bool {
        matches!(self, SegmentType::ConfedSequence | SegmentType::ConfedSet)
    }
}

/// One path segment. Never empty when decoded (a zero segment length is malformed, RFC 7606 §7.2).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct AsSegment {
    pub kind: SegmentType,
    pub asns: Vec<u32>,
}

/// An AS path: AS numbers are always held as 4 octets; the context picks the wire width.
#[derive(Clone, Default, PartialEq, Eq, Hash, Debug)]
pub struct AsPath {
    pub segments: Vec<AsSegment>,
}

/// At most 255 AS numbers per segment (1-octet segment length).
const MAX_SEGMENT_ASNS: usize = 255;

impl AsPath {
    /// A path of one AS_SEQUENCE (empty path if `asns` is empty).
    pub fn from_sequence(asns: Vec<u32>) -> AsPath {
        if asns.is_empty() {
            return AsPath::default();
        }
        AsPath {
            segments: vec![AsSegment {
                kind: SegmentType::Sequence,
                asns,
            }],
        }
    }

    /// Path length for the decision process: an AS_SET counts 1, confederation segments 0.
    /// RFC 4271 §9.1.2.2 a), RFC 5065 §5.3.
    pub fn path_len(&self) -> usize {
        self.segments
            .iter()
            .map(|seg| match seg.kind {
                SegmentType::Sequence => seg.asns.len(),
                SegmentType::Set => 1,
                SegmentType::ConfedSequence | SegmentType::ConfedSet => 0,
            })
            .sum()
    }

    /// The leftmost AS of the first AS_SEQUENCE (the neighbour AS of an eBGP route).
    pub fn first_asn(&self) -> Option<u32> {
        match self.segments.first() {
            Some(AsSegment {
                kind: SegmentType::Sequence,
                asns,
            }) => asns.first().copied(),
            _ => None,
        }
    }

    /// True if `asn` appears anywhere in the path (loop detection).
    pub fn contains(&self, asn: u32) -> bool {
        self.segments.iter().any(|seg| seg.asns.contains(&asn))
    }

    /// Prepends `asn` to the leading AS_SEQUENCE (or a new one). RFC 4271 §5.1.2.
    pub fn prepend(&mut self, asn: u32) {
        match self.segments.first_mut() {
            Some(seg) if seg.kind == SegmentType::Sequence && seg.asns.len() < MAX_SEGMENT_ASNS => {
                seg.asns.insert(0, asn)
            }
            _ => self.segments.insert(
                0,
                AsSegment {
                    kind: SegmentType::Sequence,
                    asns: vec![asn],
                },
            ),
        }
    }

    /// True if some AS number does not fit 2 octets.
    pub fn has_four_octet_asn(&self) -> bool {
        self.segments
            .iter()
            .any(|seg| seg.asns.iter().any(|&asn| asn > u32::from(u16::MAX)))
    }

    /// Decodes an AS_PATH or AS4_PATH value; `None` when malformed. RFC 7606 §7.2: "An AS_PATH is
    /// considered malformed if an unrecognized segment type is encountered or if it contains a malformed
    /// segment. A segment is considered malformed if any of the following are true: There is an overrun
    /// where the Path Segment Length field of the last segment encountered would cause the Attribute
    /// Length to be exceeded. There is an underrun where after the last successfully parsed segment
    /// there is only a single octet remaining ... It has a Path Segment Length field of zero."
    pub(crate) fn decode(value: &[u8], four_octet: bool) -> Option<AsPath> {
        let mut r = Reader::new(value);
        let width = if four_octet { 4 } else { 2 };
        let mut segments = Vec::new();
        while !r.is_empty() {
            let kind = SegmentType::from_u8(r.u8()?)?;
            let count = usize::from(r.u8()?);
            if count == 0 {
                return None;
            }
            let raw = r.take(count * width)?;
            let asns = if four_octet {
                raw.chunks_exact(4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            } else {
                raw.chunks_exact(2)
                    .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                    .collect()
            };
            segments.push(AsSegment { kind, asns });
        }
        Some(AsPath { segments })
    }

    /// Octets of the encoded value.
    pub(crate) fn encoded_len(&self, four_octet: bool) -> usize {
        let width = if four_octet { 4 } else { 2 };
        self.segments
            .iter()
            .filter(|seg| !seg.asns.is_empty())
            .map(|seg| seg.asns.len().div_ceil(MAX_SEGMENT_ASNS) * 2 + seg.asns.len() * width)
            .sum()
    }

    /// Appends the value. Segments longer than 255 are split; with 2-octet encoding AS numbers above
    /// 65535 become AS_TRANS (RFC 6793 §4.2.2).
    pub(crate) fn encode(&self, four_octet: bool, out: &mut BytesMut) {
        for seg in &self.segments {
            for chunk in seg.asns.chunks(MAX_SEGMENT_ASNS) {
                out.put_u8(seg.kind as u8);
                // chunks() of 255 at most.
                out.put_u8(chunk.len() as u8);
                for &asn in chunk {
                    if four_octet {
                        out.put_u32(asn);
                    } else {
                        out.put_u16(u16::try_from(asn).unwrap_or(AS_TRANS as u16));
                    }
                }
            }
        }
    }

    /// The path without confederation segments (what AS4_PATH may carry, RFC 6793 §4.2.2).
    pub(crate) fn without_confed(&self) -> AsPath {
        AsPath {
            segments: self
                .segments
                .iter()
                .filter(|seg| !seg.kind.is_confed())
                .cloned()
                .collect(),
        }
    }

    /// Rebuilds the true path from an AS_PATH received from an OLD (2-octet) speaker and its AS4_PATH.
    /// RFC 6793 §4.2.3: "If the number of AS numbers in the AS_PATH attribute is less than the number of
    /// AS numbers in the AS4_PATH attribute, then the AS4_PATH attribute SHALL be ignored, and the
    /// AS_PATH attribute SHALL be taken as the AS path information. If the number of AS numbers in the
    /// AS_PATH attribute is larger than or equal to the number of AS numbers in the AS4_PATH attribute,
    /// then the AS path information SHALL be constructed by taking as many AS numbers and path segments
    /// as necessary from the leading part of the AS_PATH attribute, and then prepending them to the
    /// AS4_PATH attribute so that the AS path information has a number of AS numbers identical to that of
    /// the AS_PATH attribute." AS numbers are counted as in path length (a set counts 1, confederation
    /// segments 0), and leading confederation segments are kept.
    pub fn merge_as4(&self, as4_path: &AsPath) -> AsPath {
        let (len, len4) = (self.path_len(), as4_path.path_len());
        if len < len4 {
            return self.clone();
        }
        let mut leading = len - len4;
        let mut segments: Vec<AsSegment> =
            Vec::with_capacity(self.segments.len() + as4_path.segments.len());
        for seg in &self.segments {
            match seg.kind {
                SegmentType::ConfedSequence | SegmentType::ConfedSet => segments.push(seg.clone()),
                _ if leading == 0 => break,
                SegmentType::Set => {
                    segments.push(seg.clone());
                    leading -= 1;
                }
                SegmentType::Sequence => {
                    let take = leading.min(seg.asns.len());
                    segments.push(AsSegment {
                        kind: SegmentType::Sequence,
                        asns: seg.asns[..take].to_vec(),
                    });
                    leading -= take;
                }
            }
        }
        for seg in &as4_path.segments {
            match segments.last_mut() {
                // Joining two sequences keeps the canonical form (the split was only on the wire).
                Some(last)
                    if last.kind == SegmentType::Sequence && seg.kind == SegmentType::Sequence =>
                {
                    last.asns.extend_from_slice(&seg.asns)
                }
                _ => segments.push(seg.clone()),
            }
        }
        AsPath { segments }
    }
}
