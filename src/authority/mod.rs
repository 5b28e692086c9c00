//! The authorities data is routed to: the 98 municipalities (kommuner) and the
//! unemployment-insurance funds (a-kasser). The code lists are copied from
//! `shared/domain/` and compiled in, so an authority code is checked the same
//! way by `config check`, the load and the SFTP view.

use std::fmt;
use std::str::FromStr;

const KOMMUNER: &str = include_str!("kommuner.csv");
const AKASSER: &str = include_str!("akasser.csv");
static KNOWN: std::sync::OnceLock<[[bool; 1000]; 2]> = std::sync::OnceLock::new();

/// Which kind of authority; also the first folder of the published tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuthorityKind {
    Kommune = 0,
    Akasse = 1,
}

impl AuthorityKind {
    pub const ALL: [AuthorityKind; 2] = [AuthorityKind::Kommune, AuthorityKind::Akasse];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthorityKind::Kommune => "kommune",
            AuthorityKind::Akasse => "akasse",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "kommune" => Some(AuthorityKind::Kommune),
            "akasse" => Some(AuthorityKind::Akasse),
            _ => None,
        }
    }
}

impl fmt::Display for AuthorityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One authority, written `kommune/101` or `akasse/901` (its folder in the tree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AuthorityId {
    pub kind: AuthorityKind,
    /// Always three digits; stored as a number so the id is `Copy`.
    pub code: u16,
}

impl AuthorityId {
    pub fn new(kind: AuthorityKind, code: u16) -> Self {
        AuthorityId { kind, code }
    }

    /// Looks up a code as found in a source row or a path, e.g. `"101"`.
    /// Only codes on the official lists are accepted.
    /// Called per source row, so it looks the code up in a table built once.
    pub fn known(kind: AuthorityKind, code: &str) -> Option<Self> {
        let b = code.as_bytes();
        if b.len() != 3 || !b.iter().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let n = (b[0] - b'0') as u16 * 100 + (b[1] - b'0') as u16 * 10 + (b[2] - b'0') as u16;
        let table = KNOWN.get_or_init(|| {
            let mut t = [[false; 1000]; 2];
            for (i, list) in [KOMMUNER, AKASSER].into_iter().enumerate() {
                for line in list.lines().skip(1) {
                    if let Some(code) = line
                        .split_once(',')
                        .and_then(|(c, _)| c.parse::<usize>().ok())
                    {
                        t[i][code] = true;
                    }
                }
            }
            t
        });
        table[kind as usize][n as usize].then(|| AuthorityId::new(kind, n))
    }

    /// A dense number for the id (below 2000), for tables indexed by authority.
    pub fn index(self) -> usize {
        self.kind as usize * 1000 + self.code as usize
    }

    /// The id of an [`index`](Self::index).
    pub fn from_index(i: usize) -> Option<Self> {
        let kind = *AuthorityKind::ALL.get(i / 1000)?;
        Some(AuthorityId::new(kind, (i % 1000) as u16))
    }

    pub fn code_str(&self) -> String {
        format!("{:03}", self.code)
    }

    /// The official name, or `None` for a code not on the list.
    pub fn name(&self) -> Option<&'static str> {
        let list = match self.kind {
            AuthorityKind::Kommune => KOMMUNER,
            AuthorityKind::Akasse => AKASSER,
        };
        let code = self.code_str();
        list.lines()
            .skip(1)
            .filter_map(|l| l.split_once(','))
            .find(|(c, _)| *c == code)
            .map(|(_, n)| n)
    }

    /// Every authority on the official lists.
    pub fn all() -> Vec<AuthorityId> {
        let mut out = Vec::new();
        for (kind, list) in [
            (AuthorityKind::Kommune, KOMMUNER),
            (AuthorityKind::Akasse, AKASSER),
        ] {
            for line in list.lines().skip(1) {
                if let Some((code, _)) = line.split_once(',')
                    && let Some(id) = AuthorityId::known(kind, code)
                {
                    out.push(id);
                }
            }
        }
        out
    }
}

impl fmt::Display for AuthorityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:03}", self.kind, self.code)
    }
}

/// As its path form, `kommune/101`, in reports and notices.
impl serde::Serialize for AuthorityId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseAuthorityError {
    #[error("`{0}` is not an authority; write `kommune/<3-digit code>` or `akasse/<3-digit code>`")]
    Syntax(String),
    #[error("`{0}` is not on the official list of {1}s")]
    Unknown(String, AuthorityKind),
}

impl FromStr for AuthorityId {
    type Err = ParseAuthorityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, code) = s
            .split_once('/')
            .ok_or_else(|| ParseAuthorityError::Syntax(s.to_string()))?;
        let kind =
            AuthorityKind::parse(kind).ok_or_else(|| ParseAuthorityError::Syntax(s.to_string()))?;
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseAuthorityError::Syntax(s.to_string()));
        }
        AuthorityId::known(kind, code)
            .ok_or_else(|| ParseAuthorityError::Unknown(s.to_string(), kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_hold_98_municipalities_and_21_funds() {
        let all = AuthorityId::all();
        let k = all
            .iter()
            .filter(|a| a.kind == AuthorityKind::Kommune)
            .count();
        let a = all
            .iter()
            .filter(|a| a.kind == AuthorityKind::Akasse)
            .count();
        assert_eq!((k, a), (98, 21));
    }

    #[test]
    fn every_authority_has_its_own_index_and_back() {
        let all = AuthorityId::all();
        let indices: std::collections::BTreeSet<usize> = all.iter().map(|a| a.index()).collect();
        assert_eq!(indices.len(), all.len());
        for a in all {
            assert!(a.index() < 2000);
            assert_eq!(AuthorityId::from_index(a.index()), Some(a));
        }
        assert_eq!(AuthorityId::from_index(2000), None);
    }

    #[test]
    fn parses_and_rejects() {
        let k101: AuthorityId = "kommune/101".parse().unwrap();
        assert_eq!(k101.name(), Some("København"));
        assert_eq!(k101.to_string(), "kommune/101");
        assert_eq!(
            "kommune/411".parse::<AuthorityId>(),
            Err(ParseAuthorityError::Unknown(
                "kommune/411".into(),
                AuthorityKind::Kommune
            ))
        );
        for bad in [
            "101",
            "kommune/0101",
            "kommune/1x1",
            "region/101",
            "akasse/",
        ] {
            assert!(
                matches!(
                    bad.parse::<AuthorityId>(),
                    Err(ParseAuthorityError::Syntax(_))
                ),
                "{bad}"
            );
        }
        assert!("akasse/901".parse::<AuthorityId>().is_ok());
        assert!("akasse/922".parse::<AuthorityId>().is_err());
    }
}
