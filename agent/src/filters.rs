//! Calico `BGPFilter` specs (the reef-crds types, as written in the YAML `filters:` list) converted
//! into the speaker's pure [`reef_bgp::policy`] filters.
//!
//! One spec gives one import [`Filter`] (its `importV4` rules, then its `importV6` rules) and one export
//! [`Filter`] (`exportV4`, then `exportV6`). A rule of the IPv4 list only ever matches IPv4 routes and
//! vice versa: a rule without `cidr` gets the family's whole space (`0.0.0.0/0` / `::/0`, operator In) as
//! its prefix condition, so that e.g. `importV4: [{action: Reject}]` does not reject IPv6 routes too.

use anyhow::{Context, anyhow, bail};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reef_bgp::policy::{Action, Filter, MatchOperator, Operation, PrefixMatch, Rule};
use reef_bgp::wire::{Community, LargeCommunity};
use reef_crds::bgp::{
    BGPFilterRule, BGPFilterSpec, FilterAction, FilterOperation, MatchOperator as CrdOperator,
};

/// A community as written in the config: `aa:nn` (standard, 16-bit parts) or `aa:nn:mm` (large,
/// 32-bit parts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnyCommunity {
    Standard(Community),
    Large(LargeCommunity),
}

/// Parses `aa:nn` or `aa:nn:mm`; the error says what is accepted.
pub fn parse_community(text: &str) -> anyhow::Result<AnyCommunity> {
    let bad = || {
        anyhow!(
            "{text:?} is not a community (expected aa:nn with 16-bit parts, e.g. 64512:100, or a large community aa:nn:mm with 32-bit parts, e.g. 64512:1:2)"
        )
    };
    let parts: Vec<&str> = text.split(':').collect();
    match parts.as_slice() {
        [asn, value] => Ok(AnyCommunity::Standard(Community::new(
            asn.parse().map_err(|_| bad())?,
            value.parse().map_err(|_| bad())?,
        ))),
        [global, data1, data2] => Ok(AnyCommunity::Large(LargeCommunity {
            global_admin: global.parse().map_err(|_| bad())?,
            local_data1: data1.parse().map_err(|_| bad())?,
            local_data2: data2.parse().map_err(|_| bad())?,
        })),
        _ => Err(bad()),
    }
}

/// The import and export filters of one spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Converted {
    pub import: Filter,
    pub export: Filter,
}

/// Converts a spec (assumed validated with reef-crds' `Validate`; conversion errors name the rule
/// anyway).
pub fn convert(spec: &BGPFilterSpec) -> anyhow::Result<Converted> {
    Ok(Converted {
        import: filter(&[("importV4", &spec.import_v4), ("importV6", &spec.import_v6)])?,
        export: filter(&[("exportV4", &spec.export_v4), ("exportV6", &spec.export_v6)])?,
    })
}

fn filter(lists: &[(&str, &Vec<BGPFilterRule>)]) -> anyhow::Result<Filter> {
    let mut rules = Vec::new();
    for (field, list) in lists {
        let v4 = field.ends_with("V4");
        for (n, rule) in list.iter().enumerate() {
            rules.push(convert_rule(rule, v4).with_context(|| format!("{field}[{n}]"))?);
        }
    }
    Ok(Filter { rules })
}

fn family_max(v4: bool) -> u8 {
    if v4 { 32 } else { 128 }
}

fn whole_family(v4: bool) -> IpNet {
    if v4 {
        IpNet::V4(Ipv4Net::default())
    } else {
        IpNet::V6(Ipv6Net::default())
    }
}

fn convert_rule(rule: &BGPFilterRule, v4: bool) -> anyhow::Result<Rule> {
    let prefix = if rule.cidr.is_empty() {
        if rule.match_operator.is_some() {
            bail!("matchOperator needs a cidr to compare with");
        }
        PrefixMatch {
            cidr: whole_family(v4),
            op: MatchOperator::In,
            length: None,
        }
    } else {
        let cidr: IpNet = rule
            .cidr
            .parse()
            .map_err(|_| anyhow!("cidr {:?} is not a CIDR", rule.cidr))?;
        if matches!(cidr, IpNet::V4(_)) != v4 {
            bail!(
                "cidr {} is of the other address family than this rule list",
                rule.cidr
            );
        }
        let op = match rule.match_operator {
            Some(CrdOperator::Equal) => MatchOperator::Equal,
            Some(CrdOperator::NotEqual) => MatchOperator::NotEqual,
            Some(CrdOperator::In) => MatchOperator::In,
            Some(CrdOperator::NotIn) => MatchOperator::NotIn,
            None => bail!("cidr needs a matchOperator (Equal, NotEqual, In, NotIn)"),
        };
        // Calico: the range refines In/NotIn only; a missing bound is the cidr's length / the family
        // maximum.
        let length = match (&rule.prefix_length, op) {
            (Some(range), MatchOperator::In | MatchOperator::NotIn) => Some((
                range.min.unwrap_or(cidr.prefix_len()),
                range.max.unwrap_or(family_max(v4)),
            )),
            (Some(_), _) => bail!("prefixLength only applies with matchOperator In or NotIn"),
            (None, _) => None,
        };
        PrefixMatch {
            cidr: cidr.trunc(),
            op,
            length,
        }
    };
    let mut converted = Rule::new(match rule.action {
        FilterAction::Accept => Action::Accept,
        FilterAction::Reject => Action::Reject,
    });
    converted.prefix = Some(prefix);
    for text in &rule.communities {
        match parse_community(text)? {
            AnyCommunity::Standard(c) => converted.communities.push(c),
            AnyCommunity::Large(c) => converted.large_communities.push(c),
        }
    }
    converted.as_path_prefix = rule.as_path_prefix.clone();
    for (n, operation) in rule.operations.iter().enumerate() {
        convert_operation(operation, &mut converted.operations)
            .with_context(|| format!("operations[{n}]"))?;
    }
    Ok(converted)
}

fn convert_operation(op: &FilterOperation, out: &mut Vec<Operation>) -> anyhow::Result<()> {
    match (&op.add_community, &op.prepend_as_path, op.set_local_pref) {
        (Some(add), None, None) => out.push(match parse_community(&add.value)? {
            AnyCommunity::Standard(c) => Operation::AddCommunity(c),
            AnyCommunity::Large(c) => Operation::AddLargeCommunity(c),
        }),
        // `prefix: [a, b]` makes the path start "a b ...": prepend b, then a (each once).
        (None, Some(prepend), None) => out.extend(
            prepend
                .prefix
                .iter()
                .rev()
                .map(|&asn| Operation::PrependAsPath { asn, times: 1 }),
        ),
        (None, None, Some(value)) => out.push(Operation::SetLocalPref(value)),
        _ => bail!("set exactly one of addCommunity, prependASPath, setLocalPref"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use reef_bgp::policy::{DecidedBy, Policy, Verdict};
    use reef_bgp::wire::{AsPath, PathAttributes};

    use super::*;

    fn spec(yaml: &str) -> BGPFilterSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn policy(filter: Filter) -> Policy {
        Policy {
            filters: vec![filter],
            default: Action::Accept,
        }
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    /// The verdict: None = rejected, Some(attributes) = accepted with them.
    fn run(policy: &Policy, prefix: &str, attrs: &PathAttributes) -> Option<PathAttributes> {
        match policy.evaluate(net(prefix), attrs) {
            Verdict::Accept { attrs, .. } => Some(Cow::into_owned(attrs)),
            Verdict::Reject { .. } => None,
        }
    }

    #[test]
    fn parses_standard_and_large_communities() {
        assert_eq!(
            parse_community("64512:100").unwrap(),
            AnyCommunity::Standard(Community::new(64512, 100))
        );
        assert_eq!(
            parse_community("4200000000:1:2").unwrap(),
            AnyCommunity::Large(LargeCommunity {
                global_admin: 4_200_000_000,
                local_data1: 1,
                local_data2: 2
            })
        );
        for bad in ["", "1", "70000:1", "1:2:3:4", "a:b", "1:-1"] {
            let error = parse_community(bad).unwrap_err().to_string();
            assert!(error.contains("aa:nn"), "{bad}: {error}");
        }
    }

    #[test]
    fn in_with_prefix_length_and_rejects() {
        let converted = convert(&spec(
            r#"
importV4:
  - {cidr: 10.99.0.0/16, matchOperator: In, action: Reject}
  - {cidr: 10.0.0.0/8, matchOperator: In, prefixLength: {max: 24}, action: Accept}
  - {cidr: 10.0.0.0/8, matchOperator: In, action: Reject}
"#,
        ))
        .unwrap();
        let import = policy(converted.import);
        let attrs = PathAttributes::default();
        assert!(run(&import, "10.99.1.0/24", &attrs).is_none());
        assert!(run(&import, "10.1.0.0/24", &attrs).is_some());
        // /25 is past max 24: the third rule rejects it.
        assert!(run(&import, "10.1.0.0/25", &attrs).is_none());
        // Outside every rule: the default (Accept).
        assert!(run(&import, "192.0.2.0/24", &attrs).is_some());
        assert!(converted.export.rules.is_empty());
    }

    #[test]
    fn min_length_defaults_to_the_cidr_and_not_in_negates_the_range() {
        let converted = convert(&spec(
            "exportV4: [{cidr: 10.65.0.0/16, matchOperator: NotIn, prefixLength: {min: 26}, action: Reject}]\n",
        ))
        .unwrap();
        assert_eq!(
            converted.export.rules[0].prefix,
            Some(PrefixMatch {
                cidr: net("10.65.0.0/16"),
                op: MatchOperator::NotIn,
                length: Some((26, 32)),
            })
        );
        let export = policy(converted.export);
        let attrs = PathAttributes::default();
        assert!(run(&export, "10.65.1.0/26", &attrs).is_some());
        assert!(run(&export, "10.65.0.0/16", &attrs).is_none());
        assert!(run(&export, "10.66.0.0/26", &attrs).is_none());
        // An IPv4 rule never touches IPv6 routes.
        assert!(run(&export, "2001:db8::/64", &attrs).is_some());
    }

    #[test]
    fn rules_without_cidr_stay_in_their_family() {
        let converted = convert(&spec(
            "importV4: [{action: Reject}]\nimportV6: [{cidr: \"2001:db8::/32\", matchOperator: Equal, action: Reject}]\n",
        ))
        .unwrap();
        let import = policy(converted.import);
        let attrs = PathAttributes::default();
        assert!(run(&import, "198.51.100.0/24", &attrs).is_none());
        assert!(run(&import, "2001:db8::/32", &attrs).is_none());
        assert!(run(&import, "2001:db8::/48", &attrs).is_some());
        assert!(run(&import, "2001:db9::/32", &attrs).is_some());
    }

    #[test]
    fn communities_and_as_path_prefix_must_all_match() {
        let converted = convert(&spec(
            r#"
importV4:
  - {communities: ["65001:1", "65001:2:3"], asPathPrefix: [65001, 65002], action: Reject}
"#,
        ))
        .unwrap();
        let import = policy(converted.import);
        let mut attrs = PathAttributes {
            communities: vec![Community::new(65001, 1)],
            large_communities: vec![LargeCommunity {
                global_admin: 65001,
                local_data1: 2,
                local_data2: 3,
            }],
            as_path: Some(AsPath::default()),
            ..Default::default()
        };
        for asn in [65003, 65002, 65001] {
            attrs.as_path.as_mut().unwrap().prepend(asn);
        }
        assert!(run(&import, "192.0.2.0/24", &attrs).is_none());
        let mut other_path = attrs.clone();
        other_path.as_path.as_mut().unwrap().prepend(65009);
        assert!(run(&import, "192.0.2.0/24", &other_path).is_some());
        let mut missing_large = attrs.clone();
        missing_large.large_communities.clear();
        assert!(run(&import, "192.0.2.0/24", &missing_large).is_some());
    }

    #[test]
    fn operations_apply_in_order_on_accept() {
        let converted = convert(&spec(
            r#"
exportV4:
  - cidr: 10.65.0.0/16
    matchOperator: In
    action: Accept
    operations:
      - addCommunity: {value: "64512:100"}
      - addCommunity: {value: "64512:1:2"}
      - prependASPath: {prefix: [64512, 64513]}
      - setLocalPref: 200
"#,
        ))
        .unwrap();
        assert_eq!(
            converted.export.rules[0].operations[2..4],
            [
                Operation::PrependAsPath {
                    asn: 64513,
                    times: 1
                },
                Operation::PrependAsPath {
                    asn: 64512,
                    times: 1
                },
            ]
        );
        let export = policy(converted.export);
        let mut path = AsPath::default();
        path.prepend(65001);
        let attrs = PathAttributes {
            as_path: Some(path),
            ..Default::default()
        };
        let out = run(&export, "10.65.1.0/26", &attrs).unwrap();
        assert_eq!(out.communities, [Community::new(64512, 100)]);
        assert_eq!(
            out.large_communities,
            [LargeCommunity {
                global_admin: 64512,
                local_data1: 1,
                local_data2: 2
            }]
        );
        assert_eq!(out.local_pref, Some(200));
        let asns: Vec<u32> = out.as_path.unwrap().segments[0].asns.clone();
        assert_eq!(asns, [64512, 64513, 65001]);
        // Outside the cidr: the default, unchanged.
        assert_eq!(run(&export, "10.66.0.0/26", &attrs).unwrap(), attrs);
        match export.evaluate(net("10.65.0.0/26"), &attrs) {
            Verdict::Accept { by, .. } => {
                assert_eq!(by, DecidedBy::Rule { filter: 0, rule: 0 })
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn conversion_errors_name_the_rule() {
        let error = convert(&spec(
            "exportV6: [{cidr: \"2001:db8::/32\", matchOperator: Equal, action: Accept, operations: [{addCommunity: {value: \"1:2:3:4\"}}]}]\n",
        ))
        .unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("exportV6[0]"), "{text}");
        assert!(text.contains("operations[0]"), "{text}");
        let error = convert(&spec(
            "importV4: [{cidr: \"2001:db8::/32\", matchOperator: In, action: Accept}]\n",
        ))
        .unwrap_err();
        assert!(format!("{error:#}").contains("other address family"));
    }
}
