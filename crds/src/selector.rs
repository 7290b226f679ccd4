//! Calico's label selector language: parse, match, print.
//!
//! Grammar (whitespace allowed between tokens; `!` binds tighter than `&&`, which binds tighter than `||`):
//! ```text
//! selector := <empty> | or
//! or       := and ("||" and)*
//! and      := unary ("&&" unary)*
//! unary    := "!" unary | "(" or ")" | "all()" | "global()" | "has(" key ")" | key op
//! op       := "==" value | "!=" value | "in" set | "not in" set
//!           | "contains" value | "starts with" value | "ends with" value
//! set      := "{" [value ("," value)*] "}"
//! value    := '...' | "..."          (no escapes, as in Calico)
//! key      := [A-Za-z0-9_./-]+
//! ```
//! An empty selector means `all()`. Negative operators (`!=`, `not in`) match a missing label, like
//! Calico's; `==`, `in`, `contains`, `starts with`, `ends with` need the label.
//!
//! `&&` and `||` chains are kept flat (n-ary) so a long selector does not make a deep tree; nesting by
//! parentheses and `!` is bounded by [`MAX_NESTING`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use nom::bytes::complete::{tag, take_while1};
use nom::character::complete::{char, multispace0, multispace1};
use nom::error::{ErrorKind, ParseError};
use nom::{IResult, Parser};

/// Deepest nesting of parentheses and `!` accepted, so hostile input cannot exhaust the stack.
pub const MAX_NESTING: usize = 64;

/// Label that marks a namespaced endpoint with its namespace; `global()` matches endpoints without it.
pub const NAMESPACE_LABEL: &str = "reef.dev/namespace";

/// A parsed selector. Build compound selectors with [`Selector::all_of`] and [`Selector::any_of`],
/// which keep the tree in the canonical (flattened) form that [`fmt::Display`] round-trips.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Selector {
    /// `all()`: matches everything (also the empty selector).
    All,
    /// `global()`: matches endpoints that are not in a namespace (no [`NAMESPACE_LABEL`]).
    Global,
    /// `has(key)`
    Has(String),
    /// `key == 'value'`
    Eq(String, String),
    /// `key != 'value'` (also true when the label is missing)
    Ne(String, String),
    /// `key in {'a', 'b'}`
    In(String, BTreeSet<String>),
    /// `key not in {'a', 'b'}` (also true when the label is missing)
    NotIn(String, BTreeSet<String>),
    /// `key contains 'x'`
    Contains(String, String),
    /// `key starts with 'x'`
    StartsWith(String, String),
    /// `key ends with 'x'`
    EndsWith(String, String),
    /// `!expr`
    Not(Box<Selector>),
    /// `a && b && ...` (two or more terms, none of them an `And`)
    And(Vec<Selector>),
    /// `a || b || ...` (two or more terms, none of them an `Or`)
    Or(Vec<Selector>),
}

/// Why a selector did not parse, with the byte position of the problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid selector {selector:?}: at position {position}: expected {expected}, found {found}"
)]
pub struct SelectorError {
    /// The selector text.
    pub selector: String,
    /// Byte offset of the problem in `selector`.
    pub position: usize,
    /// What the parser expected there.
    pub expected: String,
    /// What it found (a short excerpt, or "end of input").
    pub found: String,
}

impl Selector {
    /// Parses a selector; the empty (or all-whitespace) string is `all()`.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let (rest, _) = ws(text).map_err(|e| to_error(text, e))?;
        if rest.is_empty() {
            return Ok(Selector::All);
        }
        let (rest, selector) = parse_or(rest, 0).map_err(|e| to_error(text, e))?;
        let (rest, _) = ws(rest).map_err(|e| to_error(text, e))?;
        if !rest.is_empty() {
            return Err(to_error(
                text,
                nom::Err::Error(PErr {
                    at: rest,
                    expected: "'&&', '||' or end of selector",
                }),
            ));
        }
        Ok(selector)
    }

    /// `a && b`, flattening nested conjunctions; a single term is returned as is.
    /// An empty list is `all()`.
    pub fn all_of(terms: impl IntoIterator<Item = Selector>) -> Selector {
        Self::flatten(terms, |s| matches!(s, Selector::And(_)), Selector::And)
    }

    /// `a || b`, flattening nested disjunctions; a single term is returned as is.
    /// An empty list is `!all()` (matches nothing).
    pub fn any_of(terms: impl IntoIterator<Item = Selector>) -> Selector {
        let terms: Vec<Selector> = terms.into_iter().collect();
        if terms.is_empty() {
            return Selector::Not(Box::new(Selector::All));
        }
        Self::flatten(terms, |s| matches!(s, Selector::Or(_)), Selector::Or)
    }

    fn flatten(
        terms: impl IntoIterator<Item = Selector>,
        same: impl Fn(&Selector) -> bool,
        make: impl Fn(Vec<Selector>) -> Selector,
    ) -> Selector {
        let mut flat = Vec::new();
        for term in terms {
            if same(&term) {
                if let Selector::And(inner) | Selector::Or(inner) = term {
                    flat.extend(inner);
                }
            } else {
                flat.push(term);
            }
        }
        match flat.len() {
            0 => Selector::All,
            1 => flat.pop().unwrap_or(Selector::All),
            _ => make(flat),
        }
    }

    /// Whether the labels match.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(&|key: &str| labels.get(key).map(String::as_str))
    }

    /// Whether the labels given by `get` match; lets callers overlay label sets (e.g. an endpoint's
    /// labels plus its namespace label) without building a map.
    pub fn matches_with<'l>(&self, get: &dyn Fn(&str) -> Option<&'l str>) -> bool {
        match self {
            Selector::All => true,
            Selector::Global => get(NAMESPACE_LABEL).is_none(),
            Selector::Has(k) => get(k).is_some(),
            Selector::Eq(k, v) => get(k) == Some(v.as_str()),
            Selector::Ne(k, v) => get(k) != Some(v.as_str()),
            Selector::In(k, set) => get(k).is_some_and(|v| set.contains(v)),
            Selector::NotIn(k, set) => !get(k).is_some_and(|v| set.contains(v)),
            Selector::Contains(k, s) => get(k).is_some_and(|v| v.contains(s.as_str())),
            Selector::StartsWith(k, s) => get(k).is_some_and(|v| v.starts_with(s.as_str())),
            Selector::EndsWith(k, s) => get(k).is_some_and(|v| v.ends_with(s.as_str())),
            Selector::Not(e) => !e.matches_with(get),
            Selector::And(terms) => terms.iter().all(|t| t.matches_with(get)),
            Selector::Or(terms) => terms.iter().any(|t| t.matches_with(get)),
        }
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

/// Writes a value quoted with `'`, or with `"` when it contains `'`. (A value containing both cannot
/// be written in Calico's syntax; the parser never produces one.)
fn write_value(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    if value.contains('\'') {
        write!(f, "\"{value}\"")
    } else {
        write!(f, "'{value}'")
    }
}

fn write_set(f: &mut fmt::Formatter<'_>, set: &BTreeSet<String>) -> fmt::Result {
    f.write_str("{")?;
    for (n, value) in set.iter().enumerate() {
        if n > 0 {
            f.write_str(", ")?;
        }
        write_value(f, value)?;
    }
    f.write_str("}")
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => f.write_str("all()"),
            Selector::Global => f.write_str("global()"),
            Selector::Has(k) => write!(f, "has({k})"),
            Selector::Eq(k, v) => {
                write!(f, "{k} == ")?;
                write_value(f, v)
            }
            Selector::Ne(k, v) => {
                write!(f, "{k} != ")?;
                write_value(f, v)
            }
            Selector::In(k, set) => {
                write!(f, "{k} in ")?;
                write_set(f, set)
            }
            Selector::NotIn(k, set) => {
                write!(f, "{k} not in ")?;
                write_set(f, set)
            }
            Selector::Contains(k, v) => {
                write!(f, "{k} contains ")?;
                write_value(f, v)
            }
            Selector::StartsWith(k, v) => {
                write!(f, "{k} starts with ")?;
                write_value(f, v)
            }
            Selector::EndsWith(k, v) => {
                write!(f, "{k} ends with ")?;
                write_value(f, v)
            }
            Selector::Not(e) => match **e {
                Selector::And(_) | Selector::Or(_) => write!(f, "!({e})"),
                _ => write!(f, "!{e}"),
            },
            Selector::And(terms) => {
                for (n, term) in terms.iter().enumerate() {
                    if n > 0 {
                        f.write_str(" && ")?;
                    }
                    match term {
                        Selector::Or(_) => write!(f, "({term})")?,
                        _ => write!(f, "{term}")?,
                    }
                }
                Ok(())
            }
            Selector::Or(terms) => {
                for (n, term) in terms.iter().enumerate() {
                    if n > 0 {
                        f.write_str(" || ")?;
                    }
                    write!(f, "{term}")?;
                }
                Ok(())
            }
        }
    }
}

/// Parser error: where, and what was expected there (empty until a labelled parser names it).
#[derive(Debug)]
struct PErr<'a> {
    at: &'a str,
    expected: &'static str,
}

impl<'a> ParseError<&'a str> for PErr<'a> {
    fn from_error_kind(at: &'a str, _: ErrorKind) -> Self {
        PErr { at, expected: "" }
    }
    fn append(_: &'a str, _: ErrorKind, other: Self) -> Self {
        other
    }
    /// Keeps the error that got furthest, which is the most specific.
    fn or(self, other: Self) -> Self {
        if other.at.len() < self.at.len()
            || (other.at.len() == self.at.len() && self.expected.is_empty())
        {
            other
        } else {
            self
        }
    }
}

type Res<'a, T> = IResult<&'a str, T, PErr<'a>>;

fn to_error(text: &str, err: nom::Err<PErr<'_>>) -> SelectorError {
    let (at, expected) = match err {
        nom::Err::Error(e) | nom::Err::Failure(e) => (e.at, e.expected),
        // Only streaming parsers report Incomplete; all of ours are complete.
        nom::Err::Incomplete(_) => ("", ""),
    };
    let found = if at.is_empty() {
        "end of input".to_string()
    } else {
        let excerpt: String = at.chars().take(12).collect();
        let ellipsis = if excerpt.len() < at.len() { "..." } else { "" };
        format!("{excerpt:?}{ellipsis}")
    };
    SelectorError {
        selector: text.to_string(),
        position: text.len().saturating_sub(at.len()),
        expected: if expected.is_empty() {
            "a selector expression".to_string()
        } else {
            expected.to_string()
        },
        found,
    }
}

/// Runs `p`; a failure without progress is labelled with `what`.
fn expect<'a, O>(
    what: &'static str,
    mut p: impl Parser<&'a str, Output = O, Error = PErr<'a>>,
) -> impl FnMut(&'a str) -> Res<'a, O> {
    move |i: &'a str| {
        p.parse(i).map_err(|e| {
            e.map(|mut e| {
                if e.expected.is_empty() || e.at.len() == i.len() {
                    e.expected = what;
                }
                e
            })
        })
    }
}

/// Turns a recoverable error into a failure: used once a construct is committed to.
fn commit<T>(r: Res<'_, T>) -> Res<'_, T> {
    r.map_err(|e| match e {
        nom::Err::Error(e) => nom::Err::Failure(e),
        other => other,
    })
}

fn ws(i: &str) -> Res<'_, &str> {
    multispace0(i)
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

fn key(i: &str) -> Res<'_, &str> {
    expect(
        "a label key (letters, digits, '_', '.', '/', '-')",
        take_while1(is_key_char),
    )
    .parse(i)
}

fn value(i: &str) -> Res<'_, String> {
    let quote = match i.chars().next() {
        Some(q @ ('\'' | '"')) => q,
        _ => {
            return Err(nom::Err::Error(PErr {
                at: i,
                expected: "a quoted value ('...' or \"...\")",
            }));
        }
    };
    // The quote is one byte (ASCII), so slicing after it stays on a char boundary.
    let body = &i[1..];
    match body.find(quote) {
        Some(end) => Ok((&body[end + 1..], body[..end].to_string())),
        None => Err(nom::Err::Failure(PErr {
            at: i,
            expected: "a value whose closing quote matches this opening one",
        })),
    }
}

fn set(i: &str) -> Res<'_, BTreeSet<String>> {
    let (mut i, _) = expect("'{' starting a set of values", char('{')).parse(i)?;
    let mut values = BTreeSet::new();
    (i, _) = ws(i)?;
    if let Ok((rest, _)) = char::<_, PErr>('}').parse(i) {
        return Ok((rest, values));
    }
    loop {
        let (rest, v) = value(i)?;
        values.insert(v);
        let (rest, _) = ws(rest)?;
        let (rest, sep) =
            expect("',' or '}'", nom::branch::alt((char(','), char('}')))).parse(rest)?;
        if sep == '}' {
            return Ok((rest, values));
        }
        (i, _) = ws(rest)?;
    }
}

/// `name ( )` for the argument-less functions `all()` and `global()`; commits after `name (`.
fn nullary<'a>(name: &'static str, i: &'a str) -> Option<Res<'a, ()>> {
    let (rest, _) = (tag::<_, _, PErr>(name), ws, char('(')).parse(i).ok()?;
    Some(commit((ws, expect("')'", char(')'))).parse(rest)).map(|(rest, _)| (rest, ())))
}

fn parse_or(i: &str, depth: usize) -> Res<'_, Selector> {
    let (mut i, first) = parse_and(i, depth)?;
    let mut terms = vec![first];
    loop {
        let Ok((rest, _)) = (ws, tag::<_, _, PErr>("||")).parse(i) else {
            break;
        };
        let (rest, _) = ws(rest)?;
        let (rest, term) = commit(parse_and(rest, depth))?;
        terms.push(term);
        i = rest;
    }
    Ok((i, Selector::any_of(terms)))
}

fn parse_and(i: &str, depth: usize) -> Res<'_, Selector> {
    let (mut i, first) = parse_unary(i, depth)?;
    let mut terms = vec![first];
    loop {
        let Ok((rest, _)) = (ws, tag::<_, _, PErr>("&&")).parse(i) else {
            break;
        };
        let (rest, _) = ws(rest)?;
        let (rest, term) = commit(parse_unary(rest, depth))?;
        terms.push(term);
        i = rest;
    }
    Ok((i, Selector::all_of(terms)))
}

fn too_deep(i: &str) -> nom::Err<PErr<'_>> {
    nom::Err::Failure(PErr {
        at: i,
        expected: "at most 64 nested parentheses or '!'",
    })
}

fn parse_unary(i: &str, depth: usize) -> Res<'_, Selector> {
    if let Ok((rest, _)) = char::<_, PErr>('!').parse(i) {
        if depth >= MAX_NESTING {
            return Err(too_deep(i));
        }
        let (rest, _) = ws(rest)?;
        let (rest, inner) = commit(parse_unary(rest, depth + 1))?;
        return Ok((rest, Selector::Not(Box::new(inner))));
    }
    if let Ok((rest, _)) = char::<_, PErr>('(').parse(i) {
        if depth >= MAX_NESTING {
            return Err(too_deep(i));
        }
        let (rest, _) = ws(rest)?;
        let (rest, inner) = commit(parse_or(rest, depth + 1))?;
        let (rest, _) = commit((ws, expect("')', '&&' or '||'", char(')'))).parse(rest))?;
        return Ok((rest, inner));
    }
    if let Some(r) = nullary("all", i) {
        return r.map(|(rest, _)| (rest, Selector::All));
    }
    if let Some(r) = nullary("global", i) {
        return r.map(|(rest, _)| (rest, Selector::Global));
    }
    if let Ok((rest, _)) = (tag::<_, _, PErr>("has"), ws, char('(')).parse(i) {
        let (rest, (_, k, _, _)) = commit((ws, key, ws, expect("')'", char(')'))).parse(rest))?;
        return Ok((rest, Selector::Has(k.to_string())));
    }
    let (rest, k) = expect(
        "a selector expression (e.g. app == 'web', has(tier), all())",
        key,
    )
    .parse(i)?;
    let (rest, _) = ws(rest)?;
    commit(operation(rest, k.to_string()))
}

fn operation(i: &str, k: String) -> Res<'_, Selector> {
    const OPERATORS: &str = "an operator (==, !=, in, not in, contains, starts with, ends with)";
    let word = |w: &'static str| (tag::<_, _, PErr>(w), ws);
    let words = |a: &'static str, b: &'static str| (tag::<_, _, PErr>(a), multispace1, tag(b), ws);
    if let Ok((rest, _)) = word("==").parse(i) {
        let (rest, v) = value(rest)?;
        return Ok((rest, Selector::Eq(k, v)));
    }
    if let Ok((rest, _)) = word("!=").parse(i) {
        let (rest, v) = value(rest)?;
        return Ok((rest, Selector::Ne(k, v)));
    }
    if let Ok((rest, _)) = word("in").parse(i) {
        let (rest, s) = set(rest)?;
        return Ok((rest, Selector::In(k, s)));
    }
    if let Ok((rest, _)) = words("not", "in").parse(i) {
        let (rest, s) = set(rest)?;
        return Ok((rest, Selector::NotIn(k, s)));
    }
    if let Ok((rest, _)) = word("contains").parse(i) {
        let (rest, v) = value(rest)?;
        return Ok((rest, Selector::Contains(k, v)));
    }
    if let Ok((rest, _)) = words("starts", "with").parse(i) {
        let (rest, v) = value(rest)?;
        return Ok((rest, Selector::StartsWith(k, v)));
    }
    if let Ok((rest, _)) = words("ends", "with").parse(i) {
        let (rest, v) = value(rest)?;
        return Ok((rest, Selector::EndsWith(k, v)));
    }
    Err(nom::Err::Error(PErr {
        at: i,
        expected: OPERATORS,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn eq(k: &str, v: &str) -> Selector {
        Selector::Eq(k.into(), v.into())
    }

    fn has(k: &str) -> Selector {
        Selector::Has(k.into())
    }

    #[test]
    fn empty_is_all() {
        assert_eq!(Selector::parse("").unwrap(), Selector::All);
        assert_eq!(Selector::parse("  \t ").unwrap(), Selector::All);
        assert_eq!(Selector::parse("all()").unwrap(), Selector::All);
        assert_eq!(Selector::parse(" all ( ) ").unwrap(), Selector::All);
    }

    #[test]
    fn operators() {
        let cases: Vec<(&str, Selector)> = vec![
            ("app == 'web'", eq("app", "web")),
            ("app==\"web\"", eq("app", "web")),
            ("app != 'web'", Selector::Ne("app".into(), "web".into())),
            ("has(tier)", has("tier")),
            ("has ( tier )", has("tier")),
            ("global()", Selector::Global),
            (
                "env in {'prod', \"staging\"}",
                Selector::In(
                    "env".into(),
                    ["prod".to_string(), "staging".to_string()].into(),
                ),
            ),
            ("env in {}", Selector::In("env".into(), BTreeSet::new())),
            (
                "env not   in {'dev'}",
                Selector::NotIn("env".into(), ["dev".to_string()].into()),
            ),
            (
                "name contains 'db'",
                Selector::Contains("name".into(), "db".into()),
            ),
            (
                "name starts with 'db-'",
                Selector::StartsWith("name".into(), "db-".into()),
            ),
            (
                "name ends with '-0'",
                Selector::EndsWith("name".into(), "-0".into()),
            ),
            ("k8s.io/app-name == 'x'", eq("k8s.io/app-name", "x")),
            // Keywords are fine as keys when not followed by "(".
            ("has == 'x'", eq("has", "x")),
            ("all == 'x'", eq("all", "x")),
            (
                "not not in {'a'}",
                Selector::NotIn("not".into(), ["a".to_string()].into()),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Selector::parse(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn precedence_not_and_or() {
        // ! > && > ||
        let got = Selector::parse("!a == 'x' && b == 'y' || has(c)").unwrap();
        let want = Selector::Or(vec![
            Selector::And(vec![Selector::Not(Box::new(eq("a", "x"))), eq("b", "y")]),
            has("c"),
        ]);
        assert_eq!(got, want);
        let got = Selector::parse("has(a) || has(b) && has(c)").unwrap();
        assert_eq!(
            got,
            Selector::Or(vec![has("a"), Selector::And(vec![has("b"), has("c")])])
        );
        let got = Selector::parse("(has(a) || has(b)) && !(has(c) && has(d))").unwrap();
        assert_eq!(
            got,
            Selector::And(vec![
                Selector::Or(vec![has("a"), has("b")]),
                Selector::Not(Box::new(Selector::And(vec![has("c"), has("d")]))),
            ])
        );
        // Chains and redundant parentheses flatten.
        assert_eq!(
            Selector::parse("(has(a) && has(b)) && has(c)").unwrap(),
            Selector::parse("has(a) && has(b) && has(c)").unwrap()
        );
    }

    #[test]
    fn matching() {
        let l = labels(&[
            ("app", "web"),
            ("tier", "frontend"),
            ("name", "db-replica-0"),
        ]);
        let yes = [
            "",
            "all()",
            "app == 'web'",
            "has(tier)",
            "app in {'web', 'api'}",
            "app not in {'db'}",
            "missing != 'x'",
            "missing not in {'x'}",
            "!has(missing)",
            "name contains 'replica'",
            "name starts with 'db-'",
            "name ends with '-0'",
            "app == 'x' || tier == 'frontend'",
            "app == 'web' && has(tier)",
            "global()",
        ];
        for s in yes {
            assert!(Selector::parse(s).unwrap().matches(&l), "{s} should match");
        }
        let no = [
            "app == 'api'",
            "app != 'web'",
            "has(missing)",
            "missing == ''",
            "missing in {'x'}",
            "missing contains ''",
            "app in {}",
            "!all()",
            "app == 'web' && has(missing)",
            "!(app == 'web' || has(missing))",
        ];
        for s in no {
            assert!(
                !Selector::parse(s).unwrap().matches(&l),
                "{s} should not match"
            );
        }
        let namespaced = labels(&[(NAMESPACE_LABEL, "default")]);
        assert!(!Selector::Global.matches(&namespaced));
    }

    #[test]
    fn errors_have_positions() {
        let cases = [
            ("app = 'web'", 4, "an operator"),
            ("app == web", 7, "a quoted value"),
            ("app == 'web", 7, "a value whose closing quote"),
            ("has(app", 7, "')'"),
            ("has()", 4, "a label key"),
            ("(has(a)", 7, "')'"),
            ("has(a) &&", 9, "a selector expression"),
            ("has(a) ||   ", 12, "a selector expression"),
            ("has(a) has(b)", 7, "'&&', '||' or end"),
            ("env in {'a' 'b'}", 12, "',' or '}'"),
            ("env in 'a'", 7, "'{'"),
            ("all(x)", 4, "')'"),
            ("&& has(a)", 0, "a selector expression"),
        ];
        for (text, position, expected) in cases {
            let err = Selector::parse(text).unwrap_err();
            assert_eq!(err.position, position, "{text}: {err}");
            assert!(err.expected.starts_with(expected), "{text}: {err}");
        }
        let msg = Selector::parse("app = 'web'").unwrap_err().to_string();
        assert_eq!(
            msg,
            "invalid selector \"app = 'web'\": at position 4: expected an operator (==, !=, in, not in, contains, \
             starts with, ends with), found \"= 'web'\""
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!(
            "{}has(a){}",
            "(".repeat(MAX_NESTING),
            ")".repeat(MAX_NESTING)
        );
        assert_eq!(Selector::parse(&deep).unwrap(), has("a"));
        let too_deep = format!(
            "{}has(a){}",
            "(".repeat(MAX_NESTING + 1),
            ")".repeat(MAX_NESTING + 1)
        );
        let err = Selector::parse(&too_deep).unwrap_err();
        assert_eq!(err.position, MAX_NESTING);
        let nots = format!("{}has(a)", "!".repeat(10_000));
        assert!(Selector::parse(&nots).is_err());
        // Long flat chains are fine: they do not nest.
        let chain = vec!["has(a)"; 10_000].join(" && ");
        assert!(matches!(Selector::parse(&chain).unwrap(), Selector::And(t) if t.len() == 10_000));
    }

    #[test]
    fn display_is_canonical() {
        let cases = [
            ("", "all()"),
            (
                "a=='x'&&(b!=\"y\"||!has(c))",
                "a == 'x' && (b != 'y' || !has(c))",
            ),
            ("!(a == 'x' && has(b))", "!(a == 'x' && has(b))"),
            ("k in {'b','a','b'}", "k in {'a', 'b'}"),
            ("k == \"it's\"", "k == \"it's\""),
            ("((has(a)))", "has(a)"),
        ];
        for (text, canonical) in cases {
            assert_eq!(Selector::parse(text).unwrap().to_string(), canonical);
        }
    }

    fn arb_key() -> impl Strategy<Value = String> {
        // Includes keyword-like keys, which the parser must still read back as keys.
        prop_oneof![
            "[a-zA-Z0-9_][a-zA-Z0-9_./-]{0,10}",
            Just("has".to_string()),
            Just("all".to_string()),
            Just("not".to_string()),
            Just("in".to_string()),
        ]
    }

    fn arb_value() -> impl Strategy<Value = String> {
        // Any text without both quote kinds (not expressible in Calico's syntax).
        "[a-zA-Z0-9 _.'/-]{0,8}|[a-zA-Z0-9 _.\"/-]{0,8}"
    }

    fn arb_selector() -> impl Strategy<Value = Selector> {
        let leaf = prop_oneof![
            Just(Selector::All),
            Just(Selector::Global),
            arb_key().prop_map(Selector::Has),
            (arb_key(), arb_value()).prop_map(|(k, v)| Selector::Eq(k, v)),
            (arb_key(), arb_value()).prop_map(|(k, v)| Selector::Ne(k, v)),
            (
                arb_key(),
                proptest::collection::btree_set(arb_value(), 0..4)
            )
                .prop_map(|(k, s)| Selector::In(k, s)),
            (
                arb_key(),
                proptest::collection::btree_set(arb_value(), 0..4)
            )
                .prop_map(|(k, s)| Selector::NotIn(k, s)),
            (arb_key(), arb_value()).prop_map(|(k, v)| Selector::Contains(k, v)),
            (arb_key(), arb_value()).prop_map(|(k, v)| Selector::StartsWith(k, v)),
            (arb_key(), arb_value()).prop_map(|(k, v)| Selector::EndsWith(k, v)),
        ];
        leaf.prop_recursive(6, 48, 4, |inner| {
            prop_oneof![
                inner.clone().prop_map(|s| Selector::Not(Box::new(s))),
                proptest::collection::vec(inner.clone(), 2..5).prop_map(Selector::all_of),
                proptest::collection::vec(inner, 2..5).prop_map(Selector::any_of),
            ]
        })
    }

    fn arb_labels() -> impl Strategy<Value = BTreeMap<String, String>> {
        proptest::collection::btree_map(
            prop_oneof![arb_key(), Just(NAMESPACE_LABEL.to_string())],
            arb_value(),
            0..6,
        )
    }

    proptest! {
        #[test]
        fn print_parse_round_trip(selector in arb_selector()) {
            let text = selector.to_string();
            let parsed = Selector::parse(&text);
            prop_assert_eq!(parsed.as_ref(), Ok(&selector), "text: {}", text);
        }

        #[test]
        fn round_trip_preserves_matching(selector in arb_selector(), labels in arb_labels()) {
            let parsed = Selector::parse(&selector.to_string()).unwrap();
            prop_assert_eq!(parsed.matches(&labels), selector.matches(&labels));
        }

        #[test]
        fn parse_never_panics(text in "[ a-z()!&|=',{}\"]{0,40}") {
            let _ = Selector::parse(&text);
        }

        #[test]
        fn parse_never_panics_on_any_text(text in "\\PC{0,40}") {
            if let Err(e) = Selector::parse(&text) {
                prop_assert!(e.position <= text.len());
                prop_assert!(text.is_char_boundary(e.position));
            }
        }

        #[test]
        fn not_negates(selector in arb_selector(), labels in arb_labels()) {
            prop_assert_eq!(Selector::Not(Box::new(selector.clone())).matches(&labels), !selector.matches(&labels));
        }
    }
}
