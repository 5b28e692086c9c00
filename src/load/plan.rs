//! Routing, pure: which authorities one row goes to.

use crate::authority::{AuthorityId, AuthorityKind};
use smallvec::SmallVec;

/// Where one row goes, and which of its routing codes were not usable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// At most one municipality and one fund. Kept inline: a full load routes
    /// every row it reads, and a heap allocation per row showed in profiles.
    pub targets: SmallVec<[AuthorityId; 2]>,
    /// A municipality code was present but is not on the official list.
    pub unknown_kommune: bool,
    /// A fund code was present but is not on the official list.
    pub unknown_akasse: bool,
}

/// A row goes to its municipality and to its fund (when the area routes on
/// them and the code is known); never anywhere else.
pub fn route(kommune: Option<&str>, akasse: Option<&str>) -> Route {
    let mut r = Route::default();
    if let Some(code) = kommune {
        match AuthorityId::known(AuthorityKind::Kommune, code) {
            Some(a) => r.targets.push(a),
            None => r.unknown_kommune = true,
        }
    }
    if let Some(code) = akasse {
        match AuthorityId::known(AuthorityKind::Akasse, code) {
            Some(a) => r.targets.push(a),
            None => r.unknown_akasse = true,
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(r: &Route) -> Vec<String> {
        r.targets.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn routes_to_municipality_and_fund_only() {
        assert_eq!(ids(&route(Some("101"), None)), ["kommune/101"]);
        assert_eq!(
            ids(&route(Some("101"), Some("902"))),
            ["kommune/101", "akasse/902"]
        );
        assert_eq!(ids(&route(None, Some("902"))), ["akasse/902"]);
        assert!(route(None, None).targets.is_empty());
    }

    #[test]
    fn unknown_codes_are_withheld_and_flagged() {
        let r = route(Some("411"), Some("902"));
        assert_eq!(ids(&r), ["akasse/902"]);
        assert!(r.unknown_kommune && !r.unknown_akasse);
        let r = route(Some("0101"), Some("999"));
        assert!(r.targets.is_empty() && r.unknown_kommune && r.unknown_akasse);
        // A fund code is not a municipality code and vice versa.
        assert!(route(Some("902"), None).targets.is_empty());
        assert!(route(None, Some("101")).targets.is_empty());
    }
}
