//! The audit trail of personal-data access (see `shared/domain` §8): what an
//! event holds, how the chain of hashes is computed and checked, and the
//! keyed person index. Pure here; the SQL is in `state::audit`, the task that
//! writes events in `writer`, the reading of published files in `index`.
//!
//! Every row's hash is SHA-256 over the previous row's hash, the row's id and
//! every field, so an edited, inserted or removed row breaks the chain at that
//! row. Retention removes the oldest rows and records where the chain now
//! starts (the anchor) in a chained `audit_pruned` event.

pub mod index;
pub mod writer;

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub use writer::Trail;

/// The hash before the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Login,
    LoginRefused,
    Listing,
    FileOpen,
    Download,
    LoadPublished,
    ConfigReload,
    ConfigRefused,
    AuditRead,
    AuditPruned,
    /// A path looked up (stat, realpath); recorded when the policy refused it.
    Lookup,
    /// An operator opened, updated or resolved an incident, or planned maintenance.
    StatusChange,
    /// A supplier gained or lost an authority's data area because an
    /// agreement started or ended (a reload records its own changes).
    AccessChange,
}

impl Action {
    pub const ALL: [Action; 13] = [
        Action::Login,
        Action::LoginRefused,
        Action::Listing,
        Action::FileOpen,
        Action::Download,
        Action::LoadPublished,
        Action::ConfigReload,
        Action::ConfigRefused,
        Action::AuditRead,
        Action::AuditPruned,
        Action::Lookup,
        Action::StatusChange,
        Action::AccessChange,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Login => "login",
            Action::LoginRefused => "login_refused",
            Action::Listing => "listing",
            Action::FileOpen => "file_open",
            Action::Download => "download",
            Action::LoadPublished => "load_published",
            Action::ConfigReload => "config_reload",
            Action::ConfigRefused => "config_refused",
            Action::AuditRead => "audit_read",
            Action::AuditPruned => "audit_pruned",
            Action::Lookup => "lookup",
            Action::StatusChange => "status_change",
            Action::AccessChange => "access_change",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// One audit event, as stored. Text fields are what the row holds, so the
/// hash is computed over exactly what is read back.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    /// UTC, RFC 3339 with microseconds: sorts as text.
    pub at: String,
    pub action: String,
    pub outcome: String,
    pub supplier: Option<String>,
    pub authority: Option<String>,
    pub area: Option<String>,
    pub load_id: Option<String>,
    /// The file or folder in the supplier's view, e.g. `/kommune/101/joblog/v1/full/<load>/joblog.parquet`.
    pub file: Option<String>,
    pub address: Option<String>,
    pub key_fingerprint: Option<String>,
    pub bytes: Option<i64>,
    pub detail: Option<String>,
}

/// Longest claimed user name or detail stored: a client chooses them.
const MAX_TEXT: usize = 512;

fn clip(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_string();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl Event {
    pub fn new(action: Action, outcome: &str) -> Event {
        Event {
            at: timestamp(Utc::now()),
            action: action.as_str().into(),
            outcome: clip(outcome),
            ..Event::default()
        }
    }

    pub fn supplier(mut self, s: &str) -> Self {
        self.supplier = Some(clip(s));
        self
    }

    pub fn address(mut self, a: std::net::IpAddr) -> Self {
        self.address = Some(a.to_string());
        self
    }

    pub fn fingerprint(mut self, f: &str) -> Self {
        self.key_fingerprint = Some(f.into());
        self
    }

    pub fn detail(mut self, d: &str) -> Self {
        self.detail = Some(clip(d));
        self
    }

    pub fn bytes(mut self, n: u64) -> Self {
        self.bytes = Some(n.min(i64::MAX as u64) as i64);
        self
    }

    /// Authority, area and load (when the path reaches one) of a location.
    pub fn location(mut self, loc: &crate::tree::Location) -> Self {
        use crate::tree::Location;
        self.file = Some(loc.virtual_path());
        match loc {
            Location::Authority(a) => self.authority = Some(a.to_string()),
            Location::Area {
                authority,
                area,
                rest,
            } => {
                self.authority = Some(authority.to_string());
                self.area = Some(area.clone());
                // rest: v<version>/<kind>/<load-id>/<file>
                self.load_id = rest.get(2).cloned();
            }
            _ => {}
        }
        self
    }
}

/// A stored row: its position in the chain and its hashes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    pub id: i64,
    #[serde(flatten)]
    pub event: Event,
    pub prev_hash: String,
    pub hash: String,
}

impl Record {
    /// One line of `audit query` and `audit person` text output.
    pub fn line(&self) -> String {
        let e = &self.event;
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        format!(
            "{:>6} {} {:<14} {:<10} {:<12} {:<28} {} bytes={} from={} key={} outcome={} {}",
            self.id,
            e.at,
            e.action,
            opt(&e.supplier),
            opt(&e.authority),
            opt(&e.area),
            opt(&e.file),
            e.bytes.map_or("-".into(), |b| b.to_string()),
            opt(&e.address),
            opt(&e.key_fingerprint),
            e.outcome,
            opt(&e.detail)
        )
    }
}

/// SHA-256 over the previous hash, the id and every field, each length-prefixed
/// so no two different rows encode alike.
pub fn chain_hash(prev_hash: &str, id: i64, e: &Event) -> String {
    let mut h = Sha256::new();
    let mut field = |v: Option<&str>| match v {
        None => h.update([0u8]),
        Some(s) => {
            h.update([1u8]);
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        }
    };
    let bytes = e.bytes.map(|b| b.to_string());
    field(Some(prev_hash));
    field(Some(&id.to_string()));
    field(Some(&e.at));
    field(Some(&e.action));
    field(Some(&e.outcome));
    field(e.supplier.as_deref());
    field(e.authority.as_deref());
    field(e.area.as_deref());
    field(e.load_id.as_deref());
    field(e.file.as_deref());
    field(e.address.as_deref());
    field(e.key_fingerprint.as_deref());
    field(bytes.as_deref());
    field(e.detail.as_deref());
    hex::encode(h.finalize())
}

/// Where the chain starts once retention has removed its oldest rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub last_removed_id: i64,
    pub last_removed_hash: String,
}

impl Anchor {
    /// The `detail` of the `audit_pruned` event that vouches for this anchor.
    pub fn detail(&self) -> String {
        format!(
            "removed rows up to {} (hash {})",
            self.last_removed_id, self.last_removed_hash
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit row {id}{}: {reason}", at.as_ref().map(|(at, action)| format!(" ({at}, {action})")).unwrap_or_default())]
pub struct Broken {
    pub id: i64,
    /// Time and action of the row, when it was read.
    pub at: Option<(String, String)>,
    pub reason: String,
}

/// Checks the chain one page of rows at a time (rows in id order), so memory
/// does not grow with the table.
#[derive(Debug)]
pub struct Verifier {
    expect_id: i64,
    prev_hash: String,
    anchor: Option<Anchor>,
    /// The newest `audit_pruned` detail seen so far.
    last_prune: Option<(i64, String)>,
    pub rows: u64,
    pub first_id: Option<i64>,
}

impl Verifier {
    pub fn new(anchor: Option<Anchor>) -> Verifier {
        let (expect_id, prev_hash) = match &anchor {
            Some(a) => (a.last_removed_id + 1, a.last_removed_hash.clone()),
            None => (1, GENESIS.to_string()),
        };
        Verifier {
            expect_id,
            prev_hash,
            anchor,
            last_prune: None,
            rows: 0,
            first_id: None,
        }
    }

    pub fn check(&mut self, r: &Record) -> Result<(), Broken> {
        let broken = |reason: String| Broken {
            id: r.id,
            at: Some((r.event.at.clone(), r.event.action.clone())),
            reason,
        };
        if r.id != self.expect_id {
            return Err(if r.id > self.expect_id {
                Broken {
                    id: self.expect_id,
                    at: None,
                    reason: format!(
                        "missing (the next row present is {}): rows were removed",
                        r.id
                    ),
                }
            } else {
                broken(format!("out of order (expected row {})", self.expect_id))
            });
        }
        if r.prev_hash != self.prev_hash {
            return Err(broken(
                "its link to the previous row does not match: a row before it was changed, inserted or removed".into(),
            ));
        }
        if chain_hash(&r.prev_hash, r.id, &r.event) != r.hash {
            return Err(broken(
                "its hash does not match its contents: the row was changed".into(),
            ));
        }
        if r.event.action == Action::AuditPruned.as_str() {
            self.last_prune = Some((r.id, r.event.detail.clone().unwrap_or_default()));
        }
        self.first_id.get_or_insert(r.id);
        self.prev_hash = r.hash.clone();
        self.expect_id += 1;
        self.rows += 1;
        Ok(())
    }

    /// After the last row: the anchor must be the one the newest prune event vouches for.
    pub fn finish(self) -> Result<Summary, Broken> {
        if let Some(anchor) = &self.anchor {
            match &self.last_prune {
                Some((_, detail)) if *detail == anchor.detail() => {}
                Some((id, _)) => {
                    return Err(Broken {
                        id: *id,
                        at: None,
                        reason: format!(
                            "the chain's start (after row {}) is not where the newest retention run left it: rows were removed",
                            anchor.last_removed_id
                        ),
                    });
                }
                None => {
                    return Err(Broken {
                        id: anchor.last_removed_id + 1,
                        at: None,
                        reason: "the chain starts after removed rows, but no retention run in it removed them".into(),
                    });
                }
            }
        }
        Ok(Summary {
            rows: self.rows,
            first_id: self.first_id,
            last_id: self.expect_id - 1,
            head_hash: self.prev_hash,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub rows: u64,
    pub first_id: Option<i64>,
    pub last_id: i64,
    pub head_hash: String,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "audit chain intact: {} rows ({}..{}), head hash {}",
            self.rows,
            self.first_id.map_or("-".into(), |i| i.to_string()),
            self.last_id,
            self.head_hash
        )
    }
}

/// Links events onto a chain whose last row is (`last_id`, `last_hash`).
pub fn link(last_id: i64, last_hash: &str, events: &[Event]) -> Vec<Record> {
    let mut prev = last_hash.to_string();
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let id = last_id + 1 + i as i64;
            let hash = chain_hash(&prev, id, e);
            Record {
                id,
                event: e.clone(),
                prev_hash: std::mem::replace(&mut prev, hash.clone()),
                hash,
            }
        })
        .collect()
}

/// The person index's key: a CPR number as HMAC-SHA256 under the platform's
/// secret, cut to 16 bytes. Searchable by whoever holds the key; a copy of
/// the state database alone does not reveal who is in it.
#[derive(Clone)]
pub struct PersonKey(Hmac<Sha256>);

impl std::fmt::Debug for PersonKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PersonKey(..)")
    }
}

pub type PersonId = [u8; 16];

impl PersonKey {
    pub fn new(secret: &[u8]) -> PersonKey {
        PersonKey(Hmac::new_from_slice(secret).expect("HMAC takes any key length"))
    }

    /// The index entry of a CPR number (`DDMMYYSSSS`, a dash allowed).
    pub fn person(&self, cpr: &str) -> PersonId {
        let mut mac = self.0.clone();
        for b in cpr.bytes().filter(|b| *b != b'-') {
            mac.update(&[b]);
        }
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }
}

/// A CPR number as an operator types it, checked for shape only.
pub fn parse_cpr(s: &str) -> Option<String> {
    let digits: String = s.trim().chars().filter(|c| *c != '-').collect();
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// Reads the person-index secret, creating 32 random bytes (mode 0600) on first use.
pub fn load_or_create_key(path: &std::path::Path) -> std::io::Result<PersonKey> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() >= 32 => return Ok(PersonKey::new(&bytes)),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: an audit key has at least 32 bytes", path.display()),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    use rand::Rng;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(mut f) => {
            f.write_all(&secret)?;
            f.sync_all()?;
            tracing::info!(path = %path.display(), "generated the audit person-index key");
            Ok(PersonKey::new(&secret))
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_key(path),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
