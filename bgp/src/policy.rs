//! Route policy: ordered import/export filters (Calico's `BGPFilter` semantics), protection of Reef's own
//! prefixes, maximum-prefix limits (RFC 4486) and the RFC 8212 eBGP default. Pure: no IO, no clocks, no
//! Kubernetes types (the agent converts `BGPFilter` resources into [`Filter`]s).
//!
//! Evaluation: a [`Policy`] is a chain of [`Filter`]s and a default [`Action`]. Within a filter the rules
//! are tried in order and the first rule that matches decides; a filter where no rule matches has no
//! opinion and the next filter is asked; when no filter has an opinion the default decides. Operations
//! run only on an Accept by a rule; a Reject never yields attributes.

use std::borrow::Cow;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use ipnet::IpNet;

use crate::wire::{
    AfiSafi, AsPath, CeaseSubcode, Community, ErrorCode, ErrorSubcode, LargeCommunity,
    Notification, PathAttributes, SegmentType,
};

/// What happens to a route.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Action {
    Accept,
    Reject,
}

/// How a route's prefix relates to a rule's cidr.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum MatchOperator {
    /// The prefix is exactly the cidr.
    Equal,
    /// The prefix is not exactly the cidr.
    NotEqual,
    /// The prefix is within the cidr or equal to it (and its length is in the range, if given).
    In,
    /// The negation of `In` (with the same length range).
    NotIn,
}

/// The prefix condition of a rule.
///
/// `length` is an inclusive `(min, max)` range of prefix lengths. As in Calico (whose BIRD config renders
/// `In` as `net ~ [cidr{min,max}]` and `NotIn` as its negation), the range only refines `In` and `NotIn`;
/// it is ignored with `Equal`/`NotEqual`, where the length is fixed by the cidr. The converter fills
/// Calico's defaults for a missing bound: min = the cidr's length, max = the family maximum.
///
/// A cidr of the other address family never matches, whatever the operator, so that a `NotIn` IPv4 rule
/// cannot catch IPv6 routes if the IPv4 and IPv6 rule lists end up in one filter.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct PrefixMatch {
    pub cidr: IpNet,
    pub op: MatchOperator,
    pub length: Option<(u8, u8)>,
}

impl PrefixMatch {
    pub fn matches(&self, prefix: IpNet) -> bool {
        if !same_family(prefix, self.cidr) {
            return false;
        }
        let within = || {
            self.cidr.contains(&prefix)
                && self
                    .length
                    .is_none_or(|(min, max)| (min..=max).contains(&prefix.prefix_len()))
        };
        match self.op {
            MatchOperator::Equal => prefix.trunc() == self.cidr.trunc(),
            MatchOperator::NotEqual => prefix.trunc() != self.cidr.trunc(),
            MatchOperator::In => within(),
            MatchOperator::NotIn => !within(),
        }
    }
}

/// A change made to a route accepted by a rule.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Operation {
    /// Adds a community unless the route already carries it.
    AddCommunity(Community),
    /// Adds a large community unless the route already carries it.
    AddLargeCommunity(LargeCommunity),
    /// Prepends `asn` `times` times to the AS path (creating the path if absent). Calico's
    /// `prependASPath.prefix: [a, b]` (a outermost) converts to `b` once, then `a` once.
    PrependAsPath {
        asn: u32,
        times: u8,
    },
    SetLocalPref(u32),
    SetMed(u32),
}

impl Operation {
    /// Applies the operation, cloning the attributes only if it changes them.
    fn apply(&self, attrs: &mut Cow<'_, PathAttributes>) {
        match *self {
            Operation::AddCommunity(community) => {
                if !attrs.communities.contains(&community) {
                    attrs.to_mut().communities.push(community);
                }
            }
            Operation::AddLargeCommunity(community) => {
                if !attrs.large_communities.contains(&community) {
                    attrs.to_mut().large_communities.push(community);
                }
            }
            Operation::PrependAsPath { asn, times } => {
                if times > 0 {
                    let path = attrs.to_mut().as_path.get_or_insert_with(AsPath::default);
                    for _ in 0..times {
                        path.prepend(asn);
                    }
                }
            }
            Operation::SetLocalPref(value) => {
                if attrs.local_pref != Some(value) {
                    attrs.to_mut().local_pref = Some(value);
                }
            }
            Operation::SetMed(value) => {
                if attrs.med != Some(value) {
                    attrs.to_mut().med = Some(value);
                }
            }
        }
    }
}

/// One rule: all its conditions must hold for it to match (absent/empty conditions hold always).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Rule {
    pub prefix: Option<PrefixMatch>,
    /// The route must carry all of these communities.
    pub communities: Vec<Community>,
    /// The route must carry all of these large communities (Calico's `aa:nn:mm` form).
    pub large_communities: Vec<LargeCommunity>,
    /// The AS path must start with these AS numbers (see [`as_path_starts_with`]).
    pub as_path_prefix: Vec<u32>,
    pub action: Action,
    /// Applied in order when the rule accepts the route.
    pub operations: Vec<Operation>,
}

impl Rule {
    /// A rule that matches every route.
    pub fn new(action: Action) -> Rule {
        Rule {
            prefix: None,
            communities: Vec::new(),
            large_communities: Vec::new(),
            as_path_prefix: Vec::new(),
            action,
            operations: Vec::new(),
        }
    }

    pub fn matches(&self, prefix: IpNet, attrs: &PathAttributes) -> bool {
        self.prefix.as_ref().is_none_or(|p| p.matches(prefix))
            && self
                .communities
                .iter()
                .all(|c| attrs.communities.contains(c))
            && self
                .large_communities
                .iter()
                .all(|c| attrs.large_communities.contains(c))
            && as_path_starts_with(attrs.as_path.as_ref(), &self.as_path_prefix)
    }
}

/// True if the leading AS_SEQUENCE segments of `path` start with `asns` (an absent path is empty). The
/// comparison stops at the first AS_SET or confederation segment: a set has no order, and confederation
/// segments are not part of the path an eBGP neighbour sees. An empty `asns` matches every path.
pub fn as_path_starts_with(path: Option<&AsPath>, asns: &[u32]) -> bool {
    let mut leading = path
        .into_iter()
        .flat_map(|p| p.segments.iter())
        .take_while(|seg| seg.kind == SegmentType::Sequence)
        .flat_map(|seg| seg.asns.iter().copied());
    asns.iter().all(|&asn| leading.next() == Some(asn))
}

/// An ordered list of rules; the first matching rule decides.
#[derive(Clone, Default, PartialEq, Eq, Hash, Debug)]
pub struct Filter {
    pub rules: Vec<Rule>,
}

impl Filter {
    /// The first rule matching the route with its index; `None` = the filter has no opinion.
    pub fn first_match(&self, prefix: IpNet, attrs: &PathAttributes) -> Option<(usize, &Rule)> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, rule)| rule.matches(prefix, attrs))
    }
}

/// What decided a verdict.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum DecidedBy {
    /// Rule `rule` of filter `filter` (indices into [`Policy::filters`] and [`Filter::rules`]).
    Rule { filter: usize, rule: usize },
    /// No rule matched: the policy's default.
    Default,
    /// The default would have accepted, but the prefix overlaps a protected net
    /// ([`Policy::evaluate_protected`]).
    Protected,
}

/// The outcome of a policy for one route.
#[derive(Clone, PartialEq, Eq, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "consumed right after evaluation; boxing would allocate on the common unchanged path"
)]
pub enum Verdict<'a> {
    /// Take the route with these attributes: borrowed when no operation changed anything.
    Accept {
        attrs: Cow<'a, PathAttributes>,
        by: DecidedBy,
    },
    Reject {
        by: DecidedBy,
    },
}

impl Verdict<'_> {
    pub fn is_accept(&self) -> bool {
        matches!(self, Verdict::Accept { .. })
    }
}

/// A filter chain with a default for routes no filter has an opinion about.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Policy {
    pub filters: Vec<Filter>,
    pub default: Action,
}

impl Policy {
    /// Evaluates the chain. Allocates only when an operation changes the attributes.
    pub fn evaluate<'a>(&self, prefix: IpNet, attrs: &'a PathAttributes) -> Verdict<'a> {
        let decision = self.filters.iter().enumerate().find_map(|(f, filter)| {
            filter
                .first_match(prefix, attrs)
                .map(|(r, rule)| (DecidedBy::Rule { filter: f, rule: r }, rule))
        });
        match decision {
            Some((by, rule)) => match rule.action {
                Action::Reject => Verdict::Reject { by },
                Action::Accept => {
                    let mut out = Cow::Borrowed(attrs);
                    for op in &rule.operations {
                        op.apply(&mut out);
                    }
                    Verdict::Accept { attrs: out, by }
                }
            },
            None => match self.default {
                Action::Accept => Verdict::Accept {
                    attrs: Cow::Borrowed(attrs),
                    by: DecidedBy::Default,
                },
                Action::Reject => Verdict::Reject {
                    by: DecidedBy::Default,
                },
            },
        }
    }

    /// Import evaluation with protection of Reef's own pools and blocks: a route that would cover or
    /// override a `protected` net ([`overlaps_protected`]) is taken only if a rule explicitly accepts it,
    /// never by the default.
    pub fn evaluate_protected<'a>(
        &self,
        prefix: IpNet,
        attrs: &'a PathAttributes,
        protected: &[IpNet],
    ) -> Verdict<'a> {
        match self.evaluate(prefix, attrs) {
            Verdict::Accept {
                by: DecidedBy::Default,
                ..
            } if overlaps_protected(prefix, protected) => Verdict::Reject {
                by: DecidedBy::Protected,
            },
            verdict => verdict,
        }
    }
}

/// True if `prefix` equals, lies inside, or covers one of the `protected` nets (same family only).
pub fn overlaps_protected(prefix: IpNet, protected: &[IpNet]) -> bool {
    protected
        .iter()
        .any(|net| same_family(prefix, *net) && (net.contains(&prefix) || prefix.contains(net)))
}

/// The default action of an eBGP session. RFC 8212 §3: "Routes MUST NOT be selected nor advertised
/// over eBGP sessions unless the session is configured with an import/export policy": with `rfc8212` on
/// and no policy configured, eBGP routes are rejected in both directions. iBGP sessions always default to
/// Accept.
pub fn ebgp_default(policy_configured: bool, rfc8212: bool) -> Action {
    if rfc8212 && !policy_configured {
        Action::Reject
    } else {
        Action::Accept
    }
}

fn same_family(a: IpNet, b: IpNet) -> bool {
    matches!(
        (a, b),
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
    )
}

/// A per-peer, per-family limit on received prefixes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MaxPrefix {
    /// More prefixes than this end the session.
    pub limit: u32,
    /// Warn once the count reaches this percentage of `limit` (1..=100; 0 disables the warning).
    pub warn_threshold_pct: u8,
    /// Restart the session after this delay; `None` = stay down until an operator resets it.
    pub restart_after: Option<Duration>,
}

impl MaxPrefix {
    /// The NOTIFICATION for an exceeded limit. RFC 4486 §4: "the speaker MUST send to the neighbor a
    /// NOTIFICATION message with the Error Code Cease and the Error Subcode "Maximum Number of Prefixes
    /// Reached". The message MAY optionally include the Address Family information [BGP-MP] and the
    /// upper bound in the "Data" field": AFI (2 octets), SAFI (1), prefix upper bound (4).
    pub fn cease_notification(&self, afi_safi: AfiSafi) -> Notification {
        let mut data = BytesMut::with_capacity(7);
        data.put_u16(afi_safi.afi.0);
        data.put_u8(afi_safi.safi.0);
        data.put_u32(self.limit);
        Notification::new(
            ErrorCode::Cease,
            ErrorSubcode::Cease(CeaseSubcode::MaximumPrefixesReached),
            data.freeze(),
        )
    }

    /// True if `count` is at or above the warning threshold.
    fn warns_at(&self, count: u32) -> bool {
        let pct = u64::from(self.warn_threshold_pct.min(100));
        pct != 0 && u64::from(count) * 100 >= u64::from(self.limit) * pct
    }
}

/// What the driver should do after a prefix count change.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum MaxPrefixAction {
    None,
    /// The count reached the warning threshold (reported once until it falls below again).
    Warn,
    /// The count exceeds the limit: send [`MaxPrefix::cease_notification`] and close the session.
    /// Reported once, until [`MaxPrefixState::reset`].
    Exceeded,
}

/// The counter state of one [`MaxPrefix`] limit.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MaxPrefixState {
    pub config: MaxPrefix,
    warned: bool,
    exceeded: bool,
}

impl MaxPrefixState {
    pub fn new(config: MaxPrefix) -> MaxPrefixState {
        MaxPrefixState {
            config,
            warned: false,
            exceeded: false,
        }
    }

    /// Feeds the current number of accepted prefixes.
    pub fn on_count(&mut self, count: u32) -> MaxPrefixAction {
        if self.exceeded {
            return MaxPrefixAction::None;
        }
        if count > self.config.limit {
            self.exceeded = true;
            return MaxPrefixAction::Exceeded;
        }
        let warns = self.config.warns_at(count);
        let first_warning = warns && !self.warned;
        self.warned = warns;
        if first_warning {
            MaxPrefixAction::Warn
        } else {
            MaxPrefixAction::None
        }
    }

    /// Forgets warnings and the exceeded latch (a new session starts counting from zero).
    pub fn reset(&mut self) {
        self.warned = false;
        self.exceeded = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{AsSegment, Safi};
    use proptest::prelude::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap() // test literals are valid CIDRs
    }

    fn attrs_with_path(asns: &[u32]) -> PathAttributes {
        PathAttributes {
            as_path: Some(AsPath::from_sequence(asns.to_vec())),
            ..PathAttributes::default()
        }
    }

    fn prefix_rule(cidr: &str, op: MatchOperator, length: Option<(u8, u8)>) -> Rule {
        Rule {
            prefix: Some(PrefixMatch {
                cidr: net(cidr),
                op,
                length,
            }),
            ..Rule::new(Action::Accept)
        }
    }

    fn single_filter(rules: Vec<Rule>, default: Action) -> Policy {
        Policy {
            filters: vec![Filter { rules }],
            default,
        }
    }

    #[test]
    fn operators() {
        let cases = [
            (MatchOperator::Equal, "10.0.0.0/16", true),
            (MatchOperator::Equal, "10.0.1.0/24", false),
            (MatchOperator::Equal, "10.0.0.0/17", false),
            (MatchOperator::NotEqual, "10.0.0.0/16", false),
            (MatchOperator::NotEqual, "10.0.1.0/24", true),
            (MatchOperator::In, "10.0.0.0/16", true),
            (MatchOperator::In, "10.0.1.0/24", true),
            (MatchOperator::In, "10.0.0.0/8", false),
            (MatchOperator::In, "10.1.0.0/24", false),
            (MatchOperator::NotIn, "10.0.1.0/24", false),
            (MatchOperator::NotIn, "10.0.0.0/8", true),
            (MatchOperator::NotIn, "192.0.2.0/24", true),
        ];
        for (op, prefix, expected) in cases {
            let rule = prefix_rule("10.0.0.0/16", op, None);
            assert_eq!(
                rule.matches(net(prefix), &PathAttributes::default()),
                expected,
                "{op:?} {prefix}"
            );
        }
        // Host bits in the configured cidr do not matter for Equal.
        let rule = prefix_rule("10.0.0.1/16", MatchOperator::Equal, None);
        assert!(rule.matches(net("10.0.0.0/16"), &PathAttributes::default()));
    }

    #[test]
    fn other_family_never_matches() {
        for op in [
            MatchOperator::Equal,
            MatchOperator::NotEqual,
            MatchOperator::In,
            MatchOperator::NotIn,
        ] {
            let rule = prefix_rule("10.0.0.0/8", op, None);
            assert!(!rule.matches(net("2001:db8::/32"), &PathAttributes::default()));
        }
    }

    #[test]
    fn length_ranges() {
        let attrs = PathAttributes::default();
        let rule = prefix_rule("10.0.0.0/16", MatchOperator::In, Some((24, 28)));
        assert!(!rule.matches(net("10.0.0.0/16"), &attrs));
        assert!(!rule.matches(net("10.0.0.0/23"), &attrs));
        assert!(rule.matches(net("10.0.1.0/24"), &attrs));
        assert!(rule.matches(net("10.0.1.16/28"), &attrs));
        assert!(!rule.matches(net("10.0.1.16/29"), &attrs));
        assert!(!rule.matches(net("10.1.1.0/24"), &attrs));
        // NotIn is the exact negation of In with the range.
        let rule = prefix_rule("10.0.0.0/16", MatchOperator::NotIn, Some((24, 28)));
        assert!(rule.matches(net("10.0.0.0/16"), &attrs));
        assert!(!rule.matches(net("10.0.1.0/24"), &attrs));
        assert!(rule.matches(net("10.0.1.16/29"), &attrs));
        // Ignored with Equal.
        let rule = prefix_rule("10.0.0.0/16", MatchOperator::Equal, Some((24, 28)));
        assert!(rule.matches(net("10.0.0.0/16"), &attrs));
        // IPv6.
        let rule = prefix_rule("2001:db8::/32", MatchOperator::In, Some((48, 64)));
        assert!(rule.matches(net("2001:db8:1::/48"), &attrs));
        assert!(!rule.matches(net("2001:db8::/32"), &attrs));
        assert!(!rule.matches(net("2001:db8::1/128"), &attrs));
    }

    #[test]
    fn communities_must_all_be_present() {
        let a = Community::new(64512, 1);
        let b = Community::new(64512, 2);
        let large = LargeCommunity {
            global_admin: 4_200_000_000,
            local_data1: 1,
            local_data2: 2,
        };
        let rule = Rule {
            communities: vec![a, b],
            ..Rule::new(Action::Accept)
        };
        let prefix = net("192.0.2.0/24");
        let mut attrs = PathAttributes {
            communities: vec![b],
            ..PathAttributes::default()
        };
        assert!(!rule.matches(prefix, &attrs));
        attrs.communities.push(Community::NO_EXPORT);
        attrs.communities.push(a);
        assert!(rule.matches(prefix, &attrs));

        let rule = Rule {
            large_communities: vec![large],
            ..Rule::new(Action::Accept)
        };
        assert!(!rule.matches(prefix, &attrs));
        attrs.large_communities.push(large);
        assert!(rule.matches(prefix, &attrs));
    }

    #[test]
    fn as_path_prefix() {
        let prefix = net("192.0.2.0/24");
        let rule = Rule {
            as_path_prefix: vec![65001, 65002],
            ..Rule::new(Action::Accept)
        };
        assert!(rule.matches(prefix, &attrs_with_path(&[65001, 65002])));
        assert!(rule.matches(prefix, &attrs_with_path(&[65001, 65002, 65003])));
        assert!(!rule.matches(prefix, &attrs_with_path(&[65001])));
        assert!(!rule.matches(prefix, &attrs_with_path(&[65002, 65001])));
        assert!(!rule.matches(prefix, &PathAttributes::default()));
        // Continues across consecutive sequences, stops at a set.
        let split = PathAttributes {
            as_path: Some(AsPath {
                segments: vec![
                    AsSegment {
                        kind: SegmentType::Sequence,
                        asns: vec![65001],
                    },
                    AsSegment {
                        kind: SegmentType::Sequence,
                        asns: vec![65002],
                    },
                ],
            }),
            ..PathAttributes::default()
        };
        assert!(rule.matches(prefix, &split));
        let with_set = PathAttributes {
            as_path: Some(AsPath {
                segments: vec![
                    AsSegment {
                        kind: SegmentType::Sequence,
                        asns: vec![65001],
                    },
                    AsSegment {
                        kind: SegmentType::Set,
                        asns: vec![65002],
                    },
                ],
            }),
            ..PathAttributes::default()
        };
        assert!(!rule.matches(prefix, &with_set));
        // Empty prefix matches anything, including no path.
        assert!(Rule::new(Action::Accept).matches(prefix, &PathAttributes::default()));
    }

    #[test]
    fn first_match_wins() {
        let mut reject_in = prefix_rule("10.0.0.0/8", MatchOperator::In, None);
        reject_in.action = Action::Reject;
        let accept_all = Rule {
            operations: vec![Operation::SetLocalPref(300)],
            ..Rule::new(Action::Accept)
        };
        let policy = single_filter(vec![reject_in, accept_all], Action::Reject);
        let attrs = PathAttributes::default();
        assert_eq!(
            policy.evaluate(net("10.1.0.0/16"), &attrs),
            Verdict::Reject {
                by: DecidedBy::Rule { filter: 0, rule: 0 }
            }
        );
        match policy.evaluate(net("192.0.2.0/24"), &attrs) {
            Verdict::Accept { attrs, by } => {
                assert_eq!(by, DecidedBy::Rule { filter: 0, rule: 1 });
                assert_eq!(attrs.local_pref, Some(300));
            }
            other => panic!("expected accept, got {other:?}"),
        }
    }

    #[test]
    fn operations_applied() {
        let existing = Community::new(64512, 7);
        let added = Community::new(64512, 8);
        let large = LargeCommunity {
            global_admin: 64512,
            local_data1: 0,
            local_data2: 1,
        };
        let rule = Rule {
            operations: vec![
                Operation::PrependAsPath {
                    asn: 64500,
                    times: 3,
                },
                Operation::AddCommunity(existing),
                Operation::AddCommunity(added),
                Operation::AddCommunity(added),
                Operation::AddLargeCommunity(large),
                Operation::AddLargeCommunity(large),
                Operation::SetLocalPref(200),
                Operation::SetMed(50),
            ],
            ..Rule::new(Action::Accept)
        };
        let policy = single_filter(vec![rule], Action::Reject);
        let attrs = PathAttributes {
            communities: vec![existing],
            local_pref: Some(100),
            ..attrs_with_path(&[65001])
        };
        let Verdict::Accept { attrs: out, .. } = policy.evaluate(net("192.0.2.0/24"), &attrs)
        else {
            panic!("expected accept");
        };
        assert!(matches!(out, Cow::Owned(_)));
        assert_eq!(
            out.as_path,
            Some(AsPath::from_sequence(vec![64500, 64500, 64500, 65001]))
        );
        assert_eq!(out.communities, vec![existing, added]);
        assert_eq!(out.large_communities, vec![large]);
        assert_eq!(out.local_pref, Some(200));
        assert_eq!(out.med, Some(50));
        // The input is untouched.
        assert_eq!(attrs.local_pref, Some(100));

        // Prepend onto an absent path creates one.
        let prepend = Rule {
            operations: vec![Operation::PrependAsPath { asn: 1, times: 2 }],
            ..Rule::new(Action::Accept)
        };
        let policy = single_filter(vec![prepend], Action::Reject);
        let empty = PathAttributes::default();
        let Verdict::Accept { attrs: out, .. } = policy.evaluate(net("192.0.2.0/24"), &empty)
        else {
            panic!("expected accept");
        };
        assert_eq!(out.as_path, Some(AsPath::from_sequence(vec![1, 1])));
    }

    #[test]
    fn no_op_operations_do_not_clone() {
        let community = Community::new(64512, 1);
        let rule = Rule {
            operations: vec![
                Operation::AddCommunity(community),
                Operation::SetLocalPref(100),
                Operation::SetMed(5),
                Operation::PrependAsPath { asn: 1, times: 0 },
            ],
            ..Rule::new(Action::Accept)
        };
        let policy = single_filter(vec![rule], Action::Reject);
        let attrs = PathAttributes {
            communities: vec![community],
            local_pref: Some(100),
            med: Some(5),
            ..PathAttributes::default()
        };
        let verdict = policy.evaluate(net("192.0.2.0/24"), &attrs);
        assert!(
            matches!(verdict, Verdict::Accept { attrs: Cow::Borrowed(p), .. } if std::ptr::eq(p, &attrs))
        );
    }

    #[test]
    fn default_action_chain() {
        let attrs = PathAttributes::default();
        let only_10 = Filter {
            rules: vec![prefix_rule("10.0.0.0/8", MatchOperator::In, None)],
        };
        let mut reject_192 = prefix_rule("192.0.2.0/24", MatchOperator::Equal, None);
        reject_192.action = Action::Reject;
        let second = Filter {
            rules: vec![reject_192],
        };
        let chain = Policy {
            filters: vec![only_10, second],
            default: Action::Accept,
        };
        // The first filter has no opinion, the second decides.
        assert_eq!(
            chain.evaluate(net("192.0.2.0/24"), &attrs),
            Verdict::Reject {
                by: DecidedBy::Rule { filter: 1, rule: 0 }
            }
        );
        // The first filter decides, the second is not asked.
        assert!(matches!(
            chain.evaluate(net("10.1.0.0/16"), &attrs),
            Verdict::Accept {
                by: DecidedBy::Rule { filter: 0, rule: 0 },
                ..
            }
        ));
        // Nobody has an opinion: the default.
        assert!(matches!(
            chain.evaluate(net("198.51.100.0/24"), &attrs),
            Verdict::Accept {
                attrs: Cow::Borrowed(_),
                by: DecidedBy::Default
            }
        ));
        let empty = Policy {
            filters: Vec::new(),
            default: Action::Reject,
        };
        assert_eq!(
            empty.evaluate(net("198.51.100.0/24"), &attrs),
            Verdict::Reject {
                by: DecidedBy::Default
            }
        );
    }

    #[test]
    fn ebgp_defaults() {
        assert_eq!(ebgp_default(false, true), Action::Reject);
        assert_eq!(ebgp_default(true, true), Action::Accept);
        assert_eq!(ebgp_default(false, false), Action::Accept);
        assert_eq!(ebgp_default(true, false), Action::Accept);
    }

    #[test]
    fn protected_overlap() {
        let protected = [net("10.244.0.0/16"), net("2001:db8:42::/48")];
        for (prefix, expected) in [
            ("10.244.0.0/16", true),  // equal
            ("10.244.3.0/26", true),  // inside (a block)
            ("10.0.0.0/8", true),     // covering
            ("0.0.0.0/0", true),      // default route covers everything
            ("10.245.0.0/16", false), // neighbour
            ("192.0.2.0/24", false),  // unrelated
            ("2001:db8:42:1::/64", true),
            ("2001:db8::/32", true),
            ("2001:db8:43::/48", false),
            ("::/0", true),
        ] {
            assert_eq!(
                overlaps_protected(net(prefix), &protected),
                expected,
                "{prefix}"
            );
        }
        assert!(!overlaps_protected(net("0.0.0.0/0"), &[]));
    }

    #[test]
    fn protected_needs_explicit_accept() {
        let protected = [net("10.244.0.0/16")];
        let attrs = PathAttributes::default();
        let open = single_filter(Vec::new(), Action::Accept);
        assert_eq!(
            open.evaluate_protected(net("10.244.1.0/24"), &attrs, &protected),
            Verdict::Reject {
                by: DecidedBy::Protected
            }
        );
        assert!(
            open.evaluate_protected(net("192.0.2.0/24"), &attrs, &protected)
                .is_accept()
        );
        let allow = single_filter(
            vec![prefix_rule("10.244.0.0/16", MatchOperator::In, None)],
            Action::Accept,
        );
        assert!(
            allow
                .evaluate_protected(net("10.244.1.0/24"), &attrs, &protected)
                .is_accept()
        );
    }

    #[test]
    fn max_prefix_transitions() {
        let mut state = MaxPrefixState::new(MaxPrefix {
            limit: 100,
            warn_threshold_pct: 75,
            restart_after: None,
        });
        assert_eq!(state.on_count(0), MaxPrefixAction::None);
        assert_eq!(state.on_count(74), MaxPrefixAction::None);
        assert_eq!(state.on_count(75), MaxPrefixAction::Warn);
        assert_eq!(state.on_count(90), MaxPrefixAction::None);
        assert_eq!(state.on_count(100), MaxPrefixAction::None);
        // Falling below the threshold re-arms the warning.
        assert_eq!(state.on_count(10), MaxPrefixAction::None);
        assert_eq!(state.on_count(80), MaxPrefixAction::Warn);
        assert_eq!(state.on_count(101), MaxPrefixAction::Exceeded);
        assert_eq!(state.on_count(102), MaxPrefixAction::None);
        state.reset();
        // A jump past the limit reports Exceeded, not Warn.
        assert_eq!(state.on_count(500), MaxPrefixAction::Exceeded);

        let mut quiet = MaxPrefixState::new(MaxPrefix {
            limit: 10,
            warn_threshold_pct: 0,
            restart_after: Some(Duration::from_secs(60)),
        });
        assert_eq!(quiet.on_count(10), MaxPrefixAction::None);
        assert_eq!(quiet.on_count(11), MaxPrefixAction::Exceeded);

        let mut huge = MaxPrefixState::new(MaxPrefix {
            limit: u32::MAX,
            warn_threshold_pct: 100,
            restart_after: None,
        });
        assert_eq!(huge.on_count(u32::MAX - 1), MaxPrefixAction::None);
        assert_eq!(huge.on_count(u32::MAX), MaxPrefixAction::Warn);
    }

    #[test]
    fn max_prefix_cease_data() {
        let limit = MaxPrefix {
            limit: 0x0102_0304,
            warn_threshold_pct: 75,
            restart_after: None,
        };
        let notification = limit.cease_notification(AfiSafi::IPV6_UNICAST);
        assert_eq!(notification.code, ErrorCode::Cease);
        assert_eq!(
            notification.subcode,
            ErrorSubcode::Cease(CeaseSubcode::MaximumPrefixesReached)
        );
        assert_eq!(&notification.data[..], &[0, 2, 1, 1, 2, 3, 4]);
        assert_eq!(AfiSafi::IPV6_UNICAST.safi, Safi::UNICAST);
    }

    fn arb_community() -> impl Strategy<Value = Community> {
        (0u32..4).prop_map(|v| Community::new(64512, v as u16))
    }

    fn arb_attrs() -> impl Strategy<Value = PathAttributes> {
        (
            prop::collection::vec(arb_community(), 0..3),
            prop::option::of(prop::collection::vec(65000u32..65003, 0..4)),
            prop::option::of(0u32..3),
            prop::option::of(0u32..3),
        )
            .prop_map(|(communities, path, local_pref, med)| PathAttributes {
                communities,
                as_path: path.map(AsPath::from_sequence),
                local_pref,
                med,
                ..PathAttributes::default()
            })
    }

    fn arb_operation() -> impl Strategy<Value = Operation> {
        prop_oneof![
            arb_community().prop_map(Operation::AddCommunity),
            (65000u32..65003, 0u8..3)
                .prop_map(|(asn, times)| Operation::PrependAsPath { asn, times }),
            (0u32..3).prop_map(Operation::SetLocalPref),
            (0u32..3).prop_map(Operation::SetMed),
        ]
    }

    fn arb_rule() -> impl Strategy<Value = Rule> {
        let op = prop_oneof![
            Just(MatchOperator::Equal),
            Just(MatchOperator::NotEqual),
            Just(MatchOperator::In),
            Just(MatchOperator::NotIn),
        ];
        (
            prop::option::of((0u8..4, 8u8..=24, op, prop::option::of((8u8..=32, 8u8..=32)))),
            prop::collection::vec(arb_community(), 0..2),
            prop::collection::vec(65000u32..65003, 0..2),
            prop::bool::ANY,
            prop::collection::vec(arb_operation(), 0..3),
        )
            .prop_map(
                |(prefix, communities, as_path_prefix, accept, operations)| Rule {
                    prefix: prefix.map(|(octet, len, op, length)| PrefixMatch {
                        cidr: IpNet::new([10, octet, 0, 0].into(), len)
                            .unwrap() // len <= 24 is a valid IPv4 prefix length
                            .trunc(),
                        op,
                        length,
                    }),
                    communities,
                    large_communities: Vec::new(),
                    as_path_prefix,
                    action: if accept {
                        Action::Accept
                    } else {
                        Action::Reject
                    },
                    operations,
                },
            )
    }

    fn arb_prefix() -> impl Strategy<Value = IpNet> {
        (0u8..4, 0u8..4, 8u8..=32).prop_map(|(a, b, len)| {
            IpNet::new([10, a, b, 0].into(), len)
                .unwrap() // len <= 32 is a valid IPv4 prefix length
                .trunc()
        })
    }

    proptest! {
        #[test]
        fn verdict_follows_first_matching_rule(
            filters in prop::collection::vec(prop::collection::vec(arb_rule(), 0..4), 0..3),
            default_accept in prop::bool::ANY,
            prefix in arb_prefix(),
            attrs in arb_attrs(),
        ) {
            let policy = Policy {
                filters: filters.into_iter().map(|rules| Filter { rules }).collect(),
                default: if default_accept { Action::Accept } else { Action::Reject },
            };
            let deciding = policy.filters.iter().enumerate().find_map(|(f, filter)| {
                filter.rules.iter().position(|r| r.matches(prefix, &attrs)).map(|r| (f, r))
            });
            match policy.evaluate(prefix, &attrs) {
                // A Reject never carries attributes, so operations of rejecting rules never run.
                Verdict::Reject { by } => match deciding {
                    Some((filter, rule)) => {
                        prop_assert_eq!(by, DecidedBy::Rule { filter, rule });
                        prop_assert_eq!(policy.filters[filter].rules[rule].action, Action::Reject);
                    }
                    None => {
                        prop_assert_eq!(by, DecidedBy::Default);
                        prop_assert_eq!(policy.default, Action::Reject);
                    }
                },
                Verdict::Accept { attrs: out, by } => {
                    let operations: &[Operation] = match deciding {
                        Some((filter, rule)) => {
                            prop_assert_eq!(by, DecidedBy::Rule { filter, rule });
                            let rule = &policy.filters[filter].rules[rule];
                            prop_assert_eq!(rule.action, Action::Accept);
                            &rule.operations
                        }
                        None => {
                            prop_assert_eq!(by, DecidedBy::Default);
                            prop_assert_eq!(policy.default, Action::Accept);
                            &[]
                        }
                    };
                    // Borrowed means the caller's attributes; no operations = unchanged.
                    if let Cow::Borrowed(p) = &out {
                        prop_assert!(std::ptr::eq(*p, &attrs));
                    }
                    if operations.is_empty() {
                        prop_assert!(matches!(out, Cow::Borrowed(_)));
                    }
                    // Added communities are present exactly once.
                    for op in operations {
                        if let Operation::AddCommunity(c) = op {
                            prop_assert_eq!(out.communities.iter().filter(|x| *x == c).count(),
                                attrs.communities.iter().filter(|x| *x == c).count().max(1));
                        }
                    }
                }
            }
        }
    }
}
