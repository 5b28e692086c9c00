//! Delta planning, pure: what each journal entry means for each authority.
//!
//! A row is *published to* an authority while it exists, is not a draft and
//! routes there. Each journal entry moves a row from one published set to
//! another; the difference is what the authorities receive:
//! - left the set (deleted, became a draft, moved away): `D`;
//! - entered the set (inserted, draft made final, moved in): `I`;
//! - stayed: `U`.
//!
//! Replaying an authority's full load and then its deltas in order therefore
//! gives exactly the rows published to it at the last watermark.

use std::collections::BTreeSet;

use crate::authority::AuthorityId;

/// An operation as carried in a delta's `_op` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "I",
            Op::Update => "U",
            Op::Delete => "D",
        }
    }

    /// A journal's operation code.
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "I" => Some(Op::Insert),
            "U" => Some(Op::Update),
            "D" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// Where a row is published: the authorities it routes to, if it exists and
/// is not a draft.
pub fn published_to(op: Op, draft: bool, routes: &[AuthorityId]) -> BTreeSet<AuthorityId> {
    if op == Op::Delete || draft {
        BTreeSet::new()
    } else {
        routes.iter().copied().collect()
    }
}

/// What one journal entry sends, given where the row was published before it.
pub fn emit(
    before: &BTreeSet<AuthorityId>,
    after: &BTreeSet<AuthorityId>,
) -> Vec<(AuthorityId, Op)> {
    let mut out: Vec<(AuthorityId, Op)> = Vec::new();
    out.extend(before.difference(after).map(|a| (*a, Op::Delete)));
    out.extend(after.difference(before).map(|a| (*a, Op::Insert)));
    out.extend(before.intersection(after).map(|a| (*a, Op::Update)));
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> AuthorityId {
        s.parse().unwrap()
    }

    fn set(xs: &[&str]) -> BTreeSet<AuthorityId> {
        xs.iter().map(|x| a(x)).collect()
    }

    #[test]
    fn every_transition_is_an_insert_update_or_delete_per_authority() {
        let k101 = "kommune/101";
        let k147 = "kommune/147";
        let f902 = "akasse/902";
        use Op::*;
        // (published before, published after, what is sent)
        type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [(&'a str, Op)]);
        let cases: &[Case] = &[
            // new row
            (&[], &[k101], &[(k101, Insert)]),
            // ordinary update
            (
                &[k101, f902],
                &[k101, f902],
                &[(k101, Update), (f902, Update)],
            ),
            // delete, or became a draft
            (&[k101, f902], &[], &[(k101, Delete), (f902, Delete)]),
            // moved municipality, same fund
            (
                &[k101, f902],
                &[k147, f902],
                &[(k101, Delete), (k147, Insert), (f902, Update)],
            ),
            // left the fund
            (&[k101, f902], &[k101], &[(k101, Update), (f902, Delete)]),
            // change of a row never published (draft stays draft)
            (&[], &[], &[]),
        ];
        for (before, after, want) in cases {
            let want: Vec<(AuthorityId, Op)> = want.iter().map(|(s, op)| (a(s), *op)).collect();
            let mut want = want;
            want.sort();
            assert_eq!(
                emit(&set(before), &set(after)),
                want,
                "{before:?} -> {after:?}"
            );
        }
    }

    #[test]
    fn drafts_and_deletes_are_published_nowhere() {
        let routes = [a("kommune/101"), a("akasse/902")];
        assert_eq!(
            published_to(Op::Insert, false, &routes),
            set(&["kommune/101", "akasse/902"])
        );
        assert!(published_to(Op::Update, true, &routes).is_empty());
        assert!(published_to(Op::Delete, false, &routes).is_empty());
        assert_eq!(Op::parse("U"), Some(Op::Update));
        assert_eq!(Op::parse("X"), None);
    }
}
