//! Config: raw serde structs -> validation that collects *all* errors -> [`Config`].
//!
//! Every error names the file, the line and the offending value. Checks that
//! need the source database (column names) live in [`check_columns`], which
//! takes the source's schema as plain data so this module stays free of I/O
//! beyond reading the config and key files.

mod document;
mod raw;
pub mod reference;
pub mod report;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Europe::Copenhagen;
use ipnet::IpNet;
use russh::keys::PublicKey;
use russh::keys::ssh_key::authorized_keys::Entry;
use toml::Spanned;

use crate::access::{
    Agreements, ConnectionAgreement, CooperationAgreement, DataProcessingAgreement, Validity,
};
use crate::authority::AuthorityId;
use raw::*;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; `None` when the problem has no single place.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found; a config is accepted only when there are none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The config file itself; relative paths in it resolve against its folder.
    pub file: PathBuf,
    pub sftp: SftpSettings,
    pub storage_root: PathBuf,
    pub source_url: String,
    pub state_url: Option<String>,
    /// `[http] listen`: the health, readiness and metrics listener, if any.
    pub http_listen: Option<SocketAddr>,
    /// `[[notify]]`: recipients and what they want to hear of.
    pub notify: Vec<crate::notify::Recipient>,
    /// `[smtp]`: the mail server for e-mail recipients.
    pub smtp: Option<crate::notify::Smtp>,
    pub audit: AuditSettings,
    pub suppliers: BTreeMap<String, Supplier>,
    pub agreements: Agreements,
    pub areas: Vec<Area>,
    /// `[announcements] file`: what suppliers are told, newest last as written.
    pub announcements: Vec<crate::announce::Announcement>,
    /// Key files (and the announcements file) the config reads; a reload
    /// watches them too.
    pub key_files: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// How long audit events, and the person index of removed loads, are kept.
    pub retention: Duration,
    /// The secret key of the person index.
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SftpSettings {
    pub listen: SocketAddr,
    pub host_key: PathBuf,
    pub login_grace: Duration,
    pub idle_timeout: Duration,
    pub max_unauthenticated: usize,
    pub max_sessions_per_supplier: usize,
    pub ban_after_failures: u32,
    pub ban: Duration,
    pub max_unauthenticated_per_address: usize,
    pub handshake: Duration,
    /// Addresses never banned: `ban_exempt` and every supplier's `allow_from`.
    pub ban_exempt: Vec<IpNet>,
    /// Load balancers whose connections begin with a PROXY protocol v2 header.
    pub proxy_from: Vec<IpNet>,
    pub stop_timeout: Duration,
    /// The legacy profile's ECDSA P-256 host key; `None` when the profile is off.
    pub legacy_host_key: Option<PathBuf>,
    /// The SSH channel window offered to clients, in bytes.
    pub channel_window: u32,
    /// Reads of files kept under way per SFTP session.
    pub reads_in_flight: usize,
}

#[derive(Debug, Clone)]
pub struct Supplier {
    pub id: String,
    pub name: String,
    pub keys: Vec<SupplierKey>,
    /// Addresses it may log in from; empty means any.
    pub allow_from: Vec<IpNet>,
    pub max_sessions: usize,
}

/// A supplier's public key and when it may be used.
#[derive(Debug, Clone)]
pub struct SupplierKey {
    pub key: PublicKey,
    pub validity: Validity,
}

impl Area {
    /// Whether the area's rows are routed to authorities of `kind` at all.
    pub fn routes_to(&self, kind: crate::authority::AuthorityKind) -> bool {
        match kind {
            crate::authority::AuthorityKind::Kommune => self.route_kommune.is_some(),
            crate::authority::AuthorityKind::Akasse => self.route_akasse.is_some(),
        }
    }

    /// The area's stage at `at`.
    pub fn stage_at(&self, at: DateTime<Utc>) -> crate::lifecycle::Stage {
        crate::lifecycle::stage_at(self.lifecycle.as_ref(), at)
    }

    /// The area its test loads are made as: the same extract, named
    /// `<area>.test` in the tree, the state database and the locks.
    pub fn test_twin(&self) -> Area {
        Area {
            id: crate::lifecycle::test_id(&self.id),
            ..self.clone()
        }
    }

    /// Whether this is the test twin of an area.
    pub fn is_test(&self) -> bool {
        crate::lifecycle::base_of_test(&self.id).is_some()
    }

    /// Whether a column of the table is published: neither excluded nor
    /// the draft flag.
    pub fn publishes(&self, column: &str) -> bool {
        !self.exclude_columns.iter().any(|c| c == column)
            && self.draft_column.as_deref() != Some(column)
    }
}

impl Supplier {
    /// The supplier's key equal to `key` that is valid at `now`, if any.
    pub fn key_valid_at(&self, key: &PublicKey, now: DateTime<Utc>) -> Option<&SupplierKey> {
        self.keys
            .iter()
            .find(|k| k.key.key_data() == key.key_data() && k.validity.in_force(now))
    }

    /// Whether the supplier may connect from `addr`.
    pub fn allows_address(&self, addr: std::net::IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let addr = match addr {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.allow_from.is_empty() || self.allow_from.iter().any(|net| net.contains(&addr))
    }
}

#[derive(Debug, Clone)]
pub struct Area {
    pub id: String,
    pub version: u32,
    pub table: String,
    pub journal: String,
    pub key: Vec<String>,
    pub sequence_column: String,
    pub operation_column: String,
    pub changed_at_column: String,
    pub route_kommune: Option<String>,
    pub route_akasse: Option<String>,
    pub draft_column: Option<String>,
    /// The CPR column, indexed per load and authority for the audit.
    pub person_column: String,
    pub exclude_columns: Vec<String>,
    pub schedule_delta: Option<cron::Schedule>,
    pub schedule_full: Option<cron::Schedule>,
    pub retention_full_loads: u32,
    /// Also write the legacy SUP text format: (datapakke, table name).
    pub legacy: Option<(String, String)>,
    /// Where the area is declared, for errors found later (column checks).
    pub line: usize,
    /// A short description for suppliers (the data dictionary's first line).
    pub description: Option<String>,
    /// The data dictionary: column -> a short description.
    pub fields: BTreeMap<String, String>,
    /// Where each description is written, for the column check's errors.
    pub field_lines: BTreeMap<String, usize>,
    /// `[area.lifecycle]`; `None`: in production for good.
    pub lifecycle: Option<crate::lifecycle::Lifecycle>,
}

impl Config {
    pub fn area(&self, id: &str) -> Option<&Area> {
        self.areas.iter().find(|a| a.id == id)
    }

    /// The published tree, at `[storage] root`.
    pub fn store(&self) -> crate::tree::Store {
        crate::tree::Store::new(&self.storage_root)
    }
}

/// Days a retired area's loads stay in the tree when `removed_from` is not given.
const RETIRED_KEPT_DAYS: i64 = 30;

/// A config file is read only up to this size (a 100 MB file took 6.8 GB).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// A key file is read only up to this size (`/dev/zero` grew past 3 GB).
pub const MAX_KEY_FILE_BYTES: u64 = 1 << 20;

/// Reads a text file of at most `limit` bytes; a larger one (or an endless
/// device) is refused without reading past the limit.
pub fn read_bounded(path: &Path, limit: u64) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > limit {
        return Err(format!("larger than {} KiB; refused", limit >> 10));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())
}

/// Reads and validates a config file, collecting every error.
pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
    match load_all(file) {
        (Some(config), errors) if errors.is_empty() => Ok(config),
        (_, errors) => Err(ConfigErrors(errors)),
    }
}

/// Validates config text as if read from `file`.
pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    match parse_all(file, text) {
        (Some(config), errors) if errors.is_empty() => Ok(config),
        (_, errors) => Err(ConfigErrors(errors)),
    }
}

/// Reads a config file and returns every error with what could be read of
/// it: the config is there, errors or not, whenever its `[source]` is usable,
/// so that `config check` can still check the column names of its areas.
pub fn load_all(file: &Path) -> (Option<Config>, Vec<ConfigError>) {
    match read_bounded(file, MAX_CONFIG_BYTES) {
        Ok(text) => parse_all(file, &text),
        Err(e) => (
            None,
            vec![ConfigError {
                file: file.to_path_buf(),
                line: None,
                message: format!("cannot read config file: {e}"),
            }],
        ),
    }
}

/// [`load_all`] of text as if read from `file`.
pub fn parse_all(file: &Path, text: &str) -> (Option<Config>, Vec<ConfigError>) {
    let located = |p: document::Problem| ConfigError {
        file: file.to_path_buf(),
        line: p.span.map(|s| line_of(text, s.start)),
        message: p.message,
    };
    let (doc, problems) = match document::read(text) {
        Ok(read) => read,
        Err(problems) => return (None, problems.into_iter().map(located).collect()),
    };
    let mut v = Validator {
        file: file.to_path_buf(),
        dir: file.parent().map(Path::to_path_buf).unwrap_or_default(),
        text,
        errors: problems.into_iter().map(located).collect(),
        default_sessions: defaults::MAX_SESSIONS_PER_SUPPLIER as usize,
        key_files: Vec::new(),
        unreadable_suppliers: doc.unreadable_suppliers,
        unreadable_areas: doc.unreadable_areas,
        test_stage_areas: BTreeSet::new(),
    };
    let config = v.config(doc.raw);
    v.errors.sort_by_key(|e| e.line.unwrap_or(0));
    (config, v.errors)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

struct Validator<'a> {
    file: PathBuf,
    dir: PathBuf,
    text: &'a str,
    errors: Vec<ConfigError>,
    default_sessions: usize,
    key_files: Vec<PathBuf>,
    /// Suppliers and areas whose section could not be read (already reported).
    unreadable_suppliers: BTreeSet<String>,
    unreadable_areas: BTreeSet<String>,
    /// Areas with a test stage, which cooperation agreements may list in `test_areas`.
    test_stage_areas: BTreeSet<String>,
}

impl Validator<'_> {
    fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line: Some(line_of(self.text, span.start)),
            message: message.into(),
        });
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// The config as far as it could be read; `None` when its source is
    /// missing or unusable (then not even its columns can be checked).
    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        // A missing or unreadable section is reported already; what stands
        // in for it here is never accepted, only read past.
        let sftp = raw.sftp.unwrap_or_else(RawSftp::absent);
        let errors_before = self.errors.len();
        let source_url = raw
            .source
            .as_ref()
            .map(|source| self.db_url("[source] url", &source.url));
        let source_usable = source_url.is_some() && self.errors.len() == errors_before;
        let state_url = raw
            .state
            .as_ref()
            .map(|s| self.db_url("[state] url", &s.url));

        let areas = self.areas(&raw.areas);
        let area_ids: BTreeSet<String> = areas.iter().map(|a| a.id.clone()).collect();
        self.test_stage_areas = areas
            .iter()
            .filter(|a| a.lifecycle.as_ref().is_some_and(|l| l.test_from.is_some()))
            .map(|a| a.id.clone())
            .collect();
        self.default_sessions = self.count(
            "[sftp] max_sessions_per_supplier",
            &sftp.max_sessions_per_supplier,
            defaults::MAX_SESSIONS_PER_SUPPLIER,
        ) as usize;
        let suppliers = self.suppliers(&raw.suppliers);
        let agreements = self.agreements(&raw.agreements, &suppliers, &area_ids);
        let notify = self.recipients(&raw.notify, &area_ids, &suppliers);
        let smtp = self.smtp(raw.smtp.as_ref(), &notify);
        let announcements = self.announcements(raw.announcements.as_ref(), &area_ids);
        let config = Config {
            file: self.file.clone(),
            sftp: self.sftp_settings(&sftp, &suppliers),
            storage_root: raw
                .storage
                .as_ref()
                .map_or_else(PathBuf::new, |s| self.path(s.root.get_ref())),
            source_url: source_url.unwrap_or_default(),
            state_url,
            http_listen: self.http_listen(raw.http.as_ref()),
            audit: self.audit_settings(raw.audit.as_ref()),
            suppliers,
            agreements,
            areas,
            notify,
            smtp,
            announcements,
            key_files: std::mem::take(&mut self.key_files),
        };
        source_usable.then_some(config)
    }

    /// The announcements file: read, watched, and checked with its own
    /// file name and lines in the errors.
    fn announcements(
        &mut self,
        raw: Option<&RawAnnouncements>,
        area_ids: &BTreeSet<String>,
    ) -> Vec<crate::announce::Announcement> {
        let Some(raw) = raw else {
            return Vec::new();
        };
        let path = self.path(raw.file.get_ref());
        self.key_files.push(path.clone());
        let text = match read_bounded(&path, MAX_CONFIG_BYTES) {
            Ok(text) => text,
            Err(e) => {
                self.err(
                    raw.file.span(),
                    format!("[announcements] file {}: {e}", path.display()),
                );
                return Vec::new();
            }
        };
        let mut v = Validator {
            file: path,
            dir: self.dir.clone(),
            text: &text,
            errors: Vec::new(),
            default_sessions: self.default_sessions,
            key_files: Vec::new(),
            unreadable_suppliers: BTreeSet::new(),
            unreadable_areas: self.unreadable_areas.clone(),
            test_stage_areas: BTreeSet::new(),
        };
        let list = match toml::from_str::<RawAnnouncementFile>(&text) {
            Ok(file) => v.announcement_list(&file.announcement, area_ids),
            Err(e) => {
                v.err(e.span().unwrap_or(0..0), e.message().trim().to_string());
                Vec::new()
            }
        };
        self.errors.append(&mut v.errors);
        list
    }

    fn announcement_list(
        &mut self,
        raw: &[Spanned<RawAnnouncement>],
        area_ids: &BTreeSet<String>,
    ) -> Vec<crate::announce::Announcement> {
        use crate::announce::{Announcement, Kind};
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for r in raw.iter().map(Spanned::get_ref) {
            let id = self.named_id(&mut seen, "announcement", &r.id);
            for (what, text) in [("title", &r.title), ("body", &r.body)] {
                if text.get_ref().trim().is_empty() {
                    self.err(text.span(), format!("announcement {id}: {what} is empty"));
                }
            }
            if r.title.get_ref().contains('\n') {
                self.err(
                    r.title.span(),
                    format!("announcement {id}: title must be one line"),
                );
            }
            let kind = Kind::parse(r.kind.get_ref());
            if kind.is_none() {
                self.err(
                    r.kind.span(),
                    format!(
                        "announcement {id}: unknown kind \"{}\" (known: {})",
                        r.kind.get_ref(),
                        Kind::ALL.map(|k| k.as_str()).join(", ")
                    ),
                );
            }
            for a in &r.areas {
                if !area_ids.contains(a.get_ref()) && !self.unreadable_areas.contains(a.get_ref()) {
                    self.err(
                        a.span(),
                        format!("announcement {id}: unknown area \"{}\"", a.get_ref()),
                    );
                }
            }
            let effective = self.instant(
                &format!("announcement {id}"),
                "effective",
                &r.effective,
                false,
            );
            if let (Some(kind), Some(effective)) = (kind, effective) {
                out.push(Announcement {
                    title: r.title.get_ref().trim().to_string(),
                    kind,
                    areas: r.areas.iter().map(|a| a.get_ref().clone()).collect(),
                    effective,
                    body: r.body.get_ref().clone(),
                    id,
                });
            }
        }
        out
    }

    /// An entry's id: unique among its kind, and lower-case letters, digits and `-`.
    fn named_id(&mut self, seen: &mut HashSet<String>, what: &str, id: &Spanned<String>) -> String {
        self.unique(seen, what, id);
        let text = id.get_ref().clone();
        if !is_name(&text) {
            self.err(
                id.span(),
                format!("{what} id \"{text}\" must be lower-case letters, digits and -"),
            );
        }
        text
    }

    /// `[[notify]]` recipients: a reachable kind of URL, a secret long
    /// enough to sign with, known events and areas.
    fn recipients(
        &mut self,
        raw: &[Spanned<RawNotify>],
        area_ids: &BTreeSet<String>,
        suppliers: &BTreeMap<String, Supplier>,
    ) -> Vec<crate::notify::Recipient> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for r in raw.iter().map(Spanned::get_ref) {
            let id = self.named_id(&mut seen, "notify", &r.id);
            let channel = self.channel(&id, r);
            let mut events = BTreeSet::new();
            for e in &r.events {
                match crate::notify::EventKind::parse(e.get_ref()) {
                    Some(k) => {
                        events.insert(k);
                    }
                    None => self.err(
                        e.span(),
                        format!(
                            "notify {id}: unknown event \"{}\" (known: {})",
                            e.get_ref(),
                            crate::notify::EventKind::ALL.map(|k| k.as_str()).join(", ")
                        ),
                    ),
                }
            }
            let mut areas = BTreeSet::new();
            for a in &r.areas {
                if !area_ids.contains(a.get_ref()) && !self.unreadable_areas.contains(a.get_ref()) {
                    self.err(
                        a.span(),
                        format!("notify {id}: unknown area \"{}\"", a.get_ref()),
                    );
                }
                areas.insert(a.get_ref().clone());
            }
            if let Some(s) = &r.supplier
                && !suppliers.contains_key(s.get_ref())
            {
                self.err(
                    s.span(),
                    format!("notify {id}: unknown supplier \"{}\"", s.get_ref()),
                );
            }
            let Some(channel) = channel else { continue };
            let agreement_days = self
                .count(
                    &format!("notify {id}: agreement_days"),
                    &r.agreement_days,
                    defaults::AGREEMENT_DAYS,
                )
                .min(u32::MAX as u64) as u32;
            let behind_loads = self
                .count(
                    &format!("notify {id}: behind_loads"),
                    &r.behind_loads,
                    defaults::BEHIND_LOADS,
                )
                .min(u32::MAX as u64) as u32;
            out.push(crate::notify::Recipient {
                id,
                channel,
                events,
                areas: (!r.areas.is_empty()).then_some(areas),
                agreement_days,
                behind_loads,
                supplier: r.supplier.as_ref().map(|s| s.get_ref().clone()),
            });
        }
        out
    }

    /// How a `[[notify]]` recipient is reached: a webhook with its secret,
    /// or an e-mail address (sent through `[smtp]`).
    fn channel(&mut self, id: &str, r: &RawNotify) -> Option<crate::notify::Channel> {
        use crate::notify::Channel;
        match (&r.webhook, &r.email) {
            (Some(url), None) => {
                let u = url.get_ref();
                let scheme_ok = reqwest::Url::parse(u)
                    .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
                if !scheme_ok {
                    self.err(
                        url.span(),
                        format!("notify {id}: webhook \"{u}\" is not an http:// or https:// URL"),
                    );
                }
                let Some(file) = &r.secret_file else {
                    self.err(
                        url.span(),
                        format!("notify {id}: a webhook needs a secret_file to sign with"),
                    );
                    return None;
                };
                let secret = self.secret(&format!("notify {id}"), file, 16)?;
                Some(Channel::Webhook {
                    url: u.clone(),
                    secret,
                })
            }
            (None, Some(to)) => {
                if to.get_ref().parse::<lettre::Address>().is_err() {
                    self.err(
                        to.span(),
                        format!(
                            "notify {id}: email \"{}\" is not a mail address",
                            to.get_ref()
                        ),
                    );
                }
                Some(Channel::Email {
                    to: to.get_ref().clone(),
                })
            }
            (Some(url), Some(_)) => {
                self.err(
                    url.span(),
                    format!("notify {id}: give either webhook or email, not both"),
                );
                None
            }
            (None, None) => {
                self.err(
                    r.id.span(),
                    format!("notify {id}: give a webhook or an email to send to"),
                );
                None
            }
        }
    }

    /// The trimmed contents of a secret file, at least `min` bytes; the file
    /// is watched for reloads like a key file.
    fn secret(&mut self, what: &str, file: &Spanned<String>, min: usize) -> Option<Vec<u8>> {
        let path = self.path(file.get_ref());
        self.key_files.push(path.clone());
        match read_bounded(&path, MAX_KEY_FILE_BYTES) {
            Ok(text) if text.trim().len() >= min => Some(text.trim().as_bytes().to_vec()),
            Ok(_) => {
                self.err(
                    file.span(),
                    format!("{what}: {} holds fewer than {min} bytes", path.display()),
                );
                None
            }
            Err(e) => {
                self.err(
                    file.span(),
                    format!("{what}: cannot read {}: {e}", path.display()),
                );
                None
            }
        }
    }

    /// `[smtp]`, required when a recipient is reached by e-mail.
    fn smtp(
        &mut self,
        raw: Option<&RawSmtp>,
        recipients: &[crate::notify::Recipient],
    ) -> Option<crate::notify::Smtp> {
        let Some(r) = raw else {
            if recipients
                .iter()
                .any(|r| matches!(r.channel, crate::notify::Channel::Email { .. }))
            {
                self.errors.push(ConfigError {
                    file: self.file.clone(),
                    line: None,
                    message: "[[notify]] sends e-mail but there is no [smtp] section".into(),
                });
            }
            return None;
        };
        let port = self.count("[smtp] port", &r.port, defaults::SMTP_PORT);
        let port = u16::try_from(port).unwrap_or_else(|_| {
            self.err(
                r.port.as_ref().map(|p| p.span()).unwrap_or(r.host.span()),
                format!("[smtp] port = {port} is not a port"),
            );
            0
        });
        if r.from.get_ref().parse::<lettre::Address>().is_err() {
            self.err(
                r.from.span(),
                format!(
                    "[smtp] from = \"{}\" is not a mail address",
                    r.from.get_ref()
                ),
            );
        }
        let ca_pem = r.ca_file.as_ref().and_then(|f| {
            let path = self.path(f.get_ref());
            match read_bounded(&path, MAX_KEY_FILE_BYTES) {
                Ok(pem) if pem.contains("BEGIN CERTIFICATE") => Some(pem.into_bytes()),
                Ok(_) => {
                    self.err(
                        f.span(),
                        format!("[smtp] ca_file {} holds no PEM certificate", path.display()),
                    );
                    None
                }
                Err(e) => {
                    self.err(
                        f.span(),
                        format!("[smtp] cannot read ca_file {}: {e}", path.display()),
                    );
                    None
                }
            }
        });
        let login = match (&r.username, &r.password_file) {
            (Some(user), Some(file)) => self.secret("[smtp] password_file", file, 1).map(|p| {
                (
                    user.get_ref().clone(),
                    String::from_utf8_lossy(&p).into_owned(),
                )
            }),
            (None, None) => None,
            (Some(user), None) => {
                self.err(
                    user.span(),
                    "[smtp] username needs a password_file".to_string(),
                );
                None
            }
            (None, Some(file)) => {
                self.err(
                    file.span(),
                    "[smtp] password_file needs a username".to_string(),
                );
                None
            }
        };
        Some(crate::notify::Smtp {
            host: r.host.get_ref().clone(),
            port,
            from: r.from.get_ref().clone(),
            ca_pem,
            login,
        })
    }

    /// `[http] listen`, if set.
    fn http_listen(&mut self, http: Option<&RawHttp>) -> Option<SocketAddr> {
        let listen = http?.listen.as_ref()?;
        match listen.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    listen.span(),
                    format!(
                        "[http] listen = \"{}\" is not an address and port such as 127.0.0.1:9100",
                        listen.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// The `[sftp]` settings; supplier networks are never banned either.
    /// Address blocks (`192.0.2.0/24`, or one address), each bad one named.
    fn networks(&mut self, what: &str, raw: &[Spanned<String>]) -> Vec<IpNet> {
        let mut out = Vec::new();
        for cidr in raw {
            match parse_cidr(cidr.get_ref()) {
                Some(net) => out.push(net),
                None => self.err(
                    cidr.span(),
                    format!(
                        "{what} \"{}\" is not an address block such as 192.0.2.0/24 or 2001:db8::/32",
                        cidr.get_ref()
                    ),
                ),
            }
        }
        out
    }

    fn sftp_settings(
        &mut self,
        sftp: &RawSftp,
        suppliers: &BTreeMap<String, Supplier>,
    ) -> SftpSettings {
        let listen = match sftp.listen.get_ref().parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.err(
                    sftp.listen.span(),
                    format!(
                        "[sftp] listen = \"{}\" is not an address and port such as 127.0.0.1:2222",
                        sftp.listen.get_ref()
                    ),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        };
        let mut ban_exempt = self.networks("[sftp] ban_exempt", &sftp.ban_exempt);
        let proxy_from = self.networks("[sftp] proxy_protocol_from", &sftp.proxy_protocol_from);
        ban_exempt.extend(
            suppliers
                .values()
                .flat_map(|s| s.allow_from.iter().copied()),
        );

        SftpSettings {
            listen,
            host_key: self.path(sftp.host_key.get_ref()),
            login_grace: Duration::from_secs(self.count(
                "[sftp] login_grace_seconds",
                &sftp.login_grace_seconds,
                defaults::LOGIN_GRACE_SECONDS,
            )),
            idle_timeout: Duration::from_secs(self.count(
                "[sftp] idle_timeout_seconds",
                &sftp.idle_timeout_seconds,
                defaults::IDLE_TIMEOUT_SECONDS,
            )),
            max_unauthenticated: self.count(
                "[sftp] max_unauthenticated",
                &sftp.max_unauthenticated,
                defaults::MAX_UNAUTHENTICATED,
            ) as usize,
            max_sessions_per_supplier: self.default_sessions,
            ban_after_failures: self.count(
                "[sftp] ban_after_failures",
                &sftp.ban_after_failures,
                defaults::BAN_AFTER_FAILURES,
            ) as u32,
            ban: Duration::from_secs(self.count(
                "[sftp] ban_seconds",
                &sftp.ban_seconds,
                defaults::BAN_SECONDS,
            )),
            max_unauthenticated_per_address: self.count(
                "[sftp] max_unauthenticated_per_address",
                &sftp.max_unauthenticated_per_address,
                defaults::MAX_UNAUTHENTICATED_PER_ADDRESS,
            ) as usize,
            handshake: Duration::from_secs(self.count(
                "[sftp] handshake_seconds",
                &sftp.handshake_seconds,
                defaults::HANDSHAKE_SECONDS,
            )),
            ban_exempt,
            proxy_from,
            stop_timeout: Duration::from_secs(self.count(
                "[sftp] stop_timeout_seconds",
                &sftp.stop_timeout_seconds,
                defaults::STOP_TIMEOUT_SECONDS,
            )),
            legacy_host_key: sftp
                .legacy_profile
                .as_ref()
                .map_or(defaults::LEGACY_PROFILE, |on| *on.get_ref())
                .then(|| self.path(&format!("{}_ecdsa", sftp.host_key.get_ref()))),
            channel_window: self.within(
                "[sftp] channel_window_kib",
                &sftp.channel_window_kib,
                defaults::CHANNEL_WINDOW_KIB,
                64..=(1 << 20),
            ) as u32
                * 1024,
            reads_in_flight: self.within(
                "[sftp] reads_in_flight",
                &sftp.reads_in_flight,
                defaults::READS_IN_FLIGHT,
                1..=256,
            ) as usize,
        }
    }

    /// The `[audit]` settings.
    fn audit_settings(&mut self, audit: Option<&RawAudit>) -> AuditSettings {
        AuditSettings {
            retention: Duration::from_secs(
                self.count(
                    "[audit] retention_days",
                    &audit.and_then(|a| a.retention_days.clone()),
                    defaults::RETENTION_DAYS,
                )
                .saturating_mul(86_400),
            ),
            key_file: self.path(
                audit
                    .and_then(|a| a.key_file.as_ref())
                    .map_or(defaults::AUDIT_KEY_FILE, |k| k.get_ref()),
            ),
        }
    }

    /// Accepts sqlite and postgres URLs; a relative SQLite path is made absolute.
    fn db_url(&mut self, what: &str, url: &Spanned<String>) -> String {
        let u = url.get_ref();
        if let Some(rest) = u.strip_prefix("sqlite://") {
            let (path, query) = rest
                .split_once('?')
                .map_or((rest, None), |(p, q)| (p, Some(q)));
            if path.is_empty() {
                self.err(
                    url.span(),
                    format!("{what} = \"{u}\" names no database file"),
                );
                return u.clone();
            }
            let abs = self.path(path);
            let mut out = format!("sqlite://{}", abs.display());
            if let Some(q) = query {
                out.push('?');
                out.push_str(q);
            }
            out
        } else if u.starts_with("postgres://") || u.starts_with("postgresql://") {
            u.clone()
        } else {
            self.err(
                url.span(),
                format!("{what} = \"{u}\" must start with sqlite:// or postgres://"),
            );
            u.clone()
        }
    }

    fn ident(&mut self, what: &str, name: &Spanned<String>) -> String {
        let n = name.get_ref();
        let ok = n
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && n.len() <= 63;
        if !ok {
            self.err(
                name.span(),
                format!("{what} \"{n}\" is not a plain SQL name (letters, digits, _)"),
            );
        }
        n.clone()
    }

    fn unique(&mut self, seen: &mut HashSet<String>, what: &str, id: &Spanned<String>) {
        if !seen.insert(id.get_ref().clone()) {
            self.err(
                id.span(),
                format!("duplicate {what} id \"{}\"", id.get_ref()),
            );
        }
    }

    fn areas(&mut self, raw: &[Spanned<RawArea>]) -> Vec<Area> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for spanned in raw {
            self.unique(&mut seen, "area", &spanned.get_ref().id);
            let area = self.area(spanned);
            self.not_excluded(&area, spanned.span());
            out.push(area);
        }
        out
    }

    fn area(&mut self, spanned: &Spanned<RawArea>) -> Area {
        let r = spanned.get_ref();
        let id = r.id.get_ref().clone();
        if !is_name(&id) {
            self.err(
                r.id.span(),
                format!("area id \"{id}\" must be lower-case letters, digits and -"),
            );
        }
        let version = match u32::try_from(*r.version.get_ref()) {
            Ok(v) if v >= 1 => v,
            _ => {
                self.err(
                    r.version.span(),
                    format!(
                        "area {id}: version {} must be a whole number from 1",
                        r.version.get_ref()
                    ),
                );
                1
            }
        };
        if r.key.is_empty() {
            self.err(spanned.span(), format!("area {id}: key names no column"));
        }
        for (column, text) in r.description.iter().map(|d| ("description", d)).chain(
            r.fields
                .iter()
                .map(|(column, text)| (column.as_str(), text)),
        ) {
            if text.get_ref().trim().is_empty() {
                self.err(
                    text.span(),
                    format!("area {id}: the description of {column} is empty"),
                );
            }
        }
        if r.route.kommune.is_none() && r.route.akasse.is_none() {
            self.err(
                spanned.span(),
                format!("area {id}: [route] names neither a kommune nor an akasse column, so no row could be delivered"),
            );
        }
        let retention = match u32::try_from(*r.retention.full_loads.get_ref()) {
            Ok(n) if n >= 1 => n,
            _ => {
                self.err(
                    r.retention.full_loads.span(),
                    format!(
                        "area {id}: retention full_loads = {} must be at least 1",
                        r.retention.full_loads.get_ref()
                    ),
                );
                1
            }
        };
        Area {
            table: self.ident(&format!("area {id}: table"), &r.table),
            journal: self.ident(&format!("area {id}: journal"), &r.journal),
            key: r
                .key
                .iter()
                .map(|k| self.ident(&format!("area {id}: key column"), k))
                .collect(),
            sequence_column: self.ident(&format!("area {id}: sequence_column"), &r.sequence_column),
            operation_column: self
                .ident(&format!("area {id}: operation_column"), &r.operation_column),
            changed_at_column: self.ident(
                &format!("area {id}: changed_at_column"),
                &r.changed_at_column,
            ),
            route_kommune: r
                .route
                .kommune
                .as_ref()
                .map(|c| self.ident(&format!("area {id}: route.kommune"), c)),
            route_akasse: r
                .route
                .akasse
                .as_ref()
                .map(|c| self.ident(&format!("area {id}: route.akasse"), c)),
            draft_column: r
                .draft_column
                .as_ref()
                .map(|c| self.ident(&format!("area {id}: draft_column"), c)),
            person_column: r.person_column.as_ref().map_or_else(
                || defaults::PERSON_COLUMN.to_string(),
                |c| self.ident(&format!("area {id}: person_column"), c),
            ),
            exclude_columns: r
                .exclude_columns
                .iter()
                .map(|c| self.ident(&format!("area {id}: exclude_columns"), c))
                .collect(),
            schedule_delta: r
                .schedule
                .delta
                .as_ref()
                .and_then(|c| self.cron(&id, "delta", c)),
            schedule_full: r
                .schedule
                .full
                .as_ref()
                .and_then(|c| self.cron(&id, "full", c)),
            retention_full_loads: retention,
            legacy: r.legacy.as_ref().map(|l| self.legacy(&id, l)),
            line: line_of(self.text, spanned.span().start),
            description: r
                .description
                .as_ref()
                .map(|d| d.get_ref().trim().to_string()),
            fields: r
                .fields
                .iter()
                .map(|(c, d)| (c.clone(), d.get_ref().trim().to_string()))
                .collect(),
            field_lines: r
                .fields
                .iter()
                .map(|(c, d)| (c.clone(), line_of(self.text, d.span().start)))
                .collect(),
            lifecycle: r.lifecycle.as_ref().and_then(|l| self.lifecycle(&id, l)),
            id,
            version,
        }
    }

    /// `[area.lifecycle]`: its instants in order (test, production,
    /// retirement, removal), a test source that is a database URL.
    fn lifecycle(&mut self, id: &str, r: &RawLifecycle) -> Option<crate::lifecycle::Lifecycle> {
        let what = format!("area {id}: lifecycle");
        let at = |me: &mut Self, field: &str, v: &Spanned<toml::Value>| {
            me.instant(&what, field, v, false)
                .map(|t| (t, v.span(), field.to_string()))
        };
        let test_from = r.test_from.as_ref().map(|v| at(self, "test_from", v));
        let production_from = at(self, "production_from", &r.production_from);
        let retired_from = r.retired_from.as_ref().map(|v| at(self, "retired_from", v));
        let removed_from = r.removed_from.as_ref().map(|v| at(self, "removed_from", v));
        if let (Some(removed), None) = (&r.removed_from, &r.retired_from) {
            self.err(
                removed.span(),
                format!("{what}: removed_from needs retired_from (an area is retired before its loads are removed)"),
            );
        }
        // Zero is allowed: test loads leave when production begins.
        let test_kept_days = match &r.test_kept_days {
            None => defaults::TEST_KEPT_DAYS,
            Some(n) if *n.get_ref() >= 0 => *n.get_ref() as u64,
            Some(n) => {
                self.err(
                    n.span(),
                    format!("{what}: test_kept_days = {} must be 0 or more", n.get_ref()),
                );
                defaults::TEST_KEPT_DAYS
            }
        };
        let test_source = r
            .test_source
            .as_ref()
            .map(|u| self.db_url(&format!("{what}: test_source"), u));
        // Any value that did not parse is reported already.
        let parsed = |v: Option<Option<_>>| match v {
            None => Some(None),
            Some(Some(x)) => Some(Some(x)),
            Some(None) => None,
        };
        let (test_from, retired_from, removed_from) = (
            parsed(test_from)?,
            parsed(retired_from)?,
            parsed(removed_from)?,
        );
        let production_from = production_from?;
        let order: Vec<&(DateTime<Utc>, Range<usize>, String)> = [
            test_from.as_ref(),
            Some(&production_from),
            retired_from.as_ref(),
            removed_from.as_ref(),
        ]
        .into_iter()
        .flatten()
        .collect();
        for pair in order.windows(2) {
            if pair[1].0 <= pair[0].0 {
                self.err(
                    pair[1].1.clone(),
                    format!("{what}: {} is not after {}", pair[1].2, pair[0].2),
                );
                return None;
            }
        }
        let retired = retired_from.map(|(t, ..)| t);
        Some(crate::lifecycle::Lifecycle {
            test_from: test_from.map(|(t, ..)| t),
            production_from: production_from.0,
            test_removed_from: production_from.0
                + chrono::Duration::days(test_kept_days.min(36_500) as i64),
            retired_from: retired,
            removed_from: removed_from
                .map(|(t, ..)| t)
                .or(retired.map(|t| t + chrono::Duration::days(RETIRED_KEPT_DAYS))),
            test_source,
        })
    }

    /// A column the load needs (key, routes, person) must never be one the
    /// operator excluded.
    fn not_excluded(&mut self, area: &Area, span: Range<usize>) {
        for (what, col) in area
            .key
            .iter()
            .map(|k| ("key", k))
            .chain(area.route_kommune.iter().map(|c| ("route.kommune", c)))
            .chain(area.route_akasse.iter().map(|c| ("route.akasse", c)))
            .chain([("person_column", &area.person_column)])
        {
            if area.exclude_columns.contains(col) {
                self.err(
                    span.clone(),
                    format!(
                        "area {}: {what} column \"{col}\" is also in exclude_columns",
                        area.id
                    ),
                );
            }
        }
    }

    fn legacy(&mut self, area: &str, l: &RawLegacy) -> (String, String) {
        let d = l.datapakke.get_ref();
        if d.len() != 2 || !d.bytes().all(|b| b.is_ascii_digit()) {
            self.err(
                l.datapakke.span(),
                format!("area {area}: legacy datapakke \"{d}\" must be two digits, e.g. \"05\""),
            );
        }
        let t = l.table.get_ref();
        if t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric()) {
            self.err(l.table.span(), format!("area {area}: legacy table \"{t}\" must be letters and digits, e.g. \"tblJoblog\""));
        }
        (d.clone(), t.clone())
    }

    fn cron(&mut self, area: &str, which: &str, expr: &Spanned<String>) -> Option<cron::Schedule> {
        match cron::Schedule::from_str(expr.get_ref()) {
            Ok(s) => Some(s),
            Err(e) => {
                // The cron crate's message draws a caret under the expression; keep its last line.
                let e = e.to_string();
                let e = e.lines().last().unwrap_or_default().trim().to_string();
                self.err(
                    expr.span(),
                    format!(
                        "area {area}: schedule.{which} = \"{}\" is not a cron expression (sec min hour day month weekday): {e}",
                        expr.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn suppliers(&mut self, raw: &[Spanned<RawSupplier>]) -> BTreeMap<String, Supplier> {
        let mut seen = HashSet::new();
        let mut out = BTreeMap::new();
        for spanned in raw {
            let r = spanned.get_ref();
            self.unique(&mut seen, "supplier", &r.id);
            let id = r.id.get_ref().clone();
            if !is_name(&id) {
                self.err(
                    r.id.span(),
                    format!("supplier id \"{id}\" must be lower-case letters, digits and - (it is the SSH user name)"),
                );
            }
            let always = Validity {
                from: DateTime::<Utc>::MIN_UTC,
                to: None,
            };
            let mut keys = Vec::new();
            for k in &r.keys {
                self.keys_from(
                    &mut keys,
                    k.get_ref(),
                    k.span(),
                    &format!("supplier {id}: key line"),
                    &always,
                );
            }
            for f in &r.key_files {
                self.key_file(&mut keys, &id, f, &always);
            }
            for dated in &r.dated_keys {
                let d = dated.get_ref();
                let what = format!("supplier {id}: [[supplier.key]]");
                let validity = match &d.valid_from {
                    Some(from) => self.validity(&what, from, d.valid_to.as_ref()),
                    None => match &d.valid_to {
                        Some(to) => self.instant(&what, "valid_to", to, true).map(|t| Validity {
                            from: DateTime::<Utc>::MIN_UTC,
                            to: Some(t),
                        }),
                        None => Some(always),
                    },
                };
                let Some(validity) = validity else { continue };
                match (&d.key, &d.file) {
                    (Some(k), None) => self.keys_from(
                        &mut keys,
                        k.get_ref(),
                        k.span(),
                        &format!("{what} key"),
                        &validity,
                    ),
                    (None, Some(f)) => self.key_file(&mut keys, &id, f, &validity),
                    _ => self.err(
                        dated.span(),
                        format!("{what} needs exactly one of key = \"...\" or file = \"...\""),
                    ),
                }
            }
            if keys.is_empty()
                && r.keys.is_empty()
                && r.key_files.is_empty()
                && r.dated_keys.is_empty()
            {
                self.err(
                    spanned.span(),
                    format!("supplier {id} has no public key, so it can never log in"),
                );
            }
            let mut allow_from = Vec::new();
            for cidr in &r.allow_from {
                match parse_cidr(cidr.get_ref()) {
                    Some(net) => allow_from.push(net),
                    None => self.err(
                        cidr.span(),
                        format!(
                            "supplier {id}: allow_from \"{}\" is not an address block such as 192.0.2.0/24 or 2001:db8::/32",
                            cidr.get_ref()
                        ),
                    ),
                }
            }
            let max_sessions = match &r.max_sessions {
                Some(n) => self.count(&format!("supplier {id}: max_sessions"), &Some(n.clone()), 0)
                    as usize,
                None => self.default_sessions,
            };
            out.insert(
                id.clone(),
                Supplier {
                    id,
                    name: r.name.clone(),
                    keys,
                    allow_from,
                    max_sessions,
                },
            );
        }
        out
    }

    /// Reads the keys of an `authorized_keys` file named in the config.
    fn key_file(
        &mut self,
        keys: &mut Vec<SupplierKey>,
        id: &str,
        f: &Spanned<String>,
        validity: &Validity,
    ) {
        let path = self.path(f.get_ref());
        self.key_files.push(path.clone());
        match read_bounded(&path, MAX_KEY_FILE_BYTES) {
            Ok(text) if text.contains("PRIVATE KEY-----") => self.err(
                f.span(),
                format!(
                    "supplier {id}: key file {} holds a private key; give the supplier's public key (the .pub file) and keep the private key with the supplier",
                    path.display()
                ),
            ),
            Err(e) => self.err(
                f.span(),
                format!(
                    "supplier {id}: cannot read key file {}: {e}",
                    path.display()
                ),
            ),
            Ok(text) => self.keys_from(
                keys,
                &text,
                f.span(),
                &format!("supplier {id}: {} line", path.display()),
                validity,
            ),
        }
    }

    /// A positive whole number setting, or its default when absent.
    fn count(&mut self, what: &str, v: &Option<Spanned<i64>>, default: u64) -> u64 {
        match v {
            None => default,
            Some(n) if *n.get_ref() >= 1 => *n.get_ref() as u64,
            Some(n) => {
                self.err(
                    n.span(),
                    format!("{what} = {} must be at least 1", n.get_ref()),
                );
                default
            }
        }
    }

    /// A whole number in `range`, or the default (with an error naming the range).
    fn within(
        &mut self,
        what: &str,
        v: &Option<Spanned<i64>>,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> u64 {
        match v {
            None => default,
            Some(n) if u64::try_from(*n.get_ref()).is_ok_and(|n| range.contains(&n)) => {
                *n.get_ref() as u64
            }
            Some(n) => {
                self.err(
                    n.span(),
                    format!(
                        "{what} = {} must be from {} to {}",
                        n.get_ref(),
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
        }
    }

    /// Parses `authorized_keys` text into `keys`; each bad line is an error
    /// reported as `<origin> <line number>`.
    fn keys_from(
        &mut self,
        keys: &mut Vec<SupplierKey>,
        text: &str,
        span: Range<usize>,
        origin: &str,
        validity: &Validity,
    ) {
        for (n, line) in text.lines().enumerate() {
            match parse_key_line(line) {
                Ok(Some(key)) => match key_refusal(&key) {
                    None => keys.push(SupplierKey {
                        key,
                        validity: *validity,
                    }),
                    Some(why) => self.err(span.clone(), format!("{origin} {}: {why}", n + 1)),
                },
                Ok(None) => {}
                Err(e) => self.err(
                    span.clone(),
                    format!("{origin} {} is not an OpenSSH public key: {e}", n + 1),
                ),
            }
        }
    }

    fn agreements(
        &mut self,
        raw: &RawAgreements,
        suppliers: &BTreeMap<String, Supplier>,
        areas: &BTreeSet<String>,
    ) -> Agreements {
        let mut seen = HashSet::new();
        let mut out = Agreements::default();
        for c in &raw.connection {
            let c = c.get_ref();
            self.unique(&mut seen, "agreement", &c.id);
            let what = format!("connection agreement {}", c.id.get_ref());
            let authority = self.authority(&what, &c.authority);
            let validity = self.validity(&what, &c.valid_from, c.valid_to.as_ref());
            if c.suppliers.is_empty() {
                self.err(c.id.span(), format!("{what} lists no supplier"));
            }
            for s in &c.suppliers {
                self.supplier_ref(&what, s, suppliers);
            }
            if let (Some(authority), Some(validity)) = (authority, validity) {
                out.connection.push(ConnectionAgreement {
                    id: c.id.get_ref().clone(),
                    authority,
                    suppliers: c.suppliers.iter().map(|s| s.get_ref().clone()).collect(),
                    validity,
                });
            }
        }
        for d in &raw.data_processing {
            let d = d.get_ref();
            self.unique(&mut seen, "agreement", &d.id);
            let what = format!("data-processing agreement {}", d.id.get_ref());
            let authority = self.authority(&what, &d.authority);
            let validity = self.validity(&what, &d.valid_from, d.valid_to.as_ref());
            self.supplier_ref(&what, &d.supplier, suppliers);
            if let (Some(authority), Some(validity)) = (authority, validity) {
                out.data_processing.push(DataProcessingAgreement {
                    id: d.id.get_ref().clone(),
                    supplier: d.supplier.get_ref().clone(),
                    authority,
                    validity,
                });
            }
        }
        for c in &raw.cooperation {
            let c = c.get_ref();
            self.unique(&mut seen, "agreement", &c.id);
            let what = format!("cooperation agreement {}", c.id.get_ref());
            let validity = self.validity(&what, &c.valid_from, c.valid_to.as_ref());
            self.supplier_ref(&what, &c.supplier, suppliers);
            for a in &c.areas {
                if !areas.contains(a.get_ref()) && !self.unreadable_areas.contains(a.get_ref()) {
                    self.err(
                        a.span(),
                        format!("{what} names unknown data area \"{}\"", a.get_ref()),
                    );
                }
            }
            for a in &c.test_areas {
                if !self.test_stage_areas.contains(a.get_ref())
                    && !self.unreadable_areas.contains(a.get_ref())
                {
                    self.err(
                        a.span(),
                        format!(
                            "{what}: test_areas names \"{}\", which is not an area with a test stage ([area.lifecycle] test_from)",
                            a.get_ref()
                        ),
                    );
                }
            }
            if let Some(validity) = validity {
                out.cooperation.push(CooperationAgreement {
                    id: c.id.get_ref().clone(),
                    supplier: c.supplier.get_ref().clone(),
                    areas: c.areas.iter().map(|a| a.get_ref().clone()).collect(),
                    test_areas: c.test_areas.iter().map(|a| a.get_ref().clone()).collect(),
                    validity,
                });
            }
        }
        out
    }

    fn authority(&mut self, what: &str, a: &Spanned<String>) -> Option<AuthorityId> {
        match a.get_ref().parse::<AuthorityId>() {
            Ok(id) => Some(id),
            Err(e) => {
                self.err(a.span(), format!("{what} names unknown authority: {e}"));
                None
            }
        }
    }

    fn supplier_ref(
        &mut self,
        what: &str,
        s: &Spanned<String>,
        suppliers: &BTreeMap<String, Supplier>,
    ) {
        if !suppliers.contains_key(s.get_ref()) && !self.unreadable_suppliers.contains(s.get_ref())
        {
            self.err(
                s.span(),
                format!("{what} names unknown supplier \"{}\"", s.get_ref()),
            );
        }
    }

    fn validity(
        &mut self,
        what: &str,
        from: &Spanned<toml::Value>,
        to: Option<&Spanned<toml::Value>>,
    ) -> Option<Validity> {
        let f = self.instant(what, "valid_from", from, false);
        let t = to.map(|t| self.instant(what, "valid_to", t, true));
        let (from_at, to_at) = match (f, t) {
            (Some(f), None) => (f, None),
            (Some(f), Some(Some(t))) => (f, Some(t)),
            _ => return None,
        };
        if let (Some(to_at), Some(to)) = (to_at, to)
            && to_at <= from_at
        {
            self.err(
                to.span(),
                format!(
                    "{what}: valid_to ({}) is not after valid_from ({})",
                    value_text(to.get_ref()),
                    value_text(from.get_ref())
                ),
            );
            return None;
        }
        Some(Validity {
            from: from_at,
            to: to_at,
        })
    }

    fn instant(
        &mut self,
        what: &str,
        field: &str,
        v: &Spanned<toml::Value>,
        end: bool,
    ) -> Option<DateTime<Utc>> {
        let text = value_text(v.get_ref());
        match parse_instant(&text, end) {
            Some(t) => Some(t),
            None => {
                self.err(
                    v.span(),
                    format!("{what}: {field} = {text} is not a date (2026-01-31) or an RFC 3339 time (2026-01-31T08:00:00+01:00)"),
                );
                None
            }
        }
    }
}

fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A bare date is a Danish calendar day: `valid_from` starts at its first
/// second, `valid_to` ends after its last (agreements are written inclusive).
pub fn parse_instant(text: &str, end_of_day: bool) -> Option<DateTime<Utc>> {
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let day = if end_of_day {
            d.checked_add_days(Days::new(1))?
        } else {
            d
        };
        return Copenhagen
            .from_local_datetime(&day.and_hms_opt(0, 0, 0)?)
            .earliest()
            .map(|t| t.with_timezone(&Utc));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    // A local time without offset is Danish time.
    let local = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").ok()?;
    Copenhagen
        .from_local_datetime(&local)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// One `authorized_keys` line; blank lines and comments give `None`.
fn parse_key_line(line: &str) -> Result<Option<PublicKey>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    Entry::from_str(line)
        .map(|e| Some(e.public_key().clone()))
        .map_err(|e| e.to_string())
}

/// The config in force. A reload replaces it as a whole; readers take the
/// current one per request, so a change applies to open sessions at once.
#[derive(Debug)]
pub struct Live {
    current: RwLock<Arc<Config>>,
    generation: AtomicU64,
}

impl Live {
    pub fn new(config: Arc<Config>) -> Arc<Live> {
        Arc::new(Live {
            current: RwLock::new(config),
            generation: AtomicU64::new(0),
        })
    }

    pub fn get(&self) -> Arc<Config> {
        self.current.read().expect("config lock").clone()
    }

    /// Bumped by every reload, so cached decisions know they are stale.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Puts `config` in force and returns the one it replaces.
    pub fn replace(&self, config: Arc<Config>) -> Arc<Config> {
        let old = std::mem::replace(&mut *self.current.write().expect("config lock"), config);
        self.generation.fetch_add(1, Ordering::AcqRel);
        old
    }
}

/// Why a public key may not be used to log in, if it may not: only
/// algorithms without known weaknesses, RSA only from 3072 bits.
pub fn key_refusal(key: &PublicKey) -> Option<String> {
    use russh::keys::ssh_key::public::KeyData;
    match key.key_data() {
        KeyData::Ed25519(_) | KeyData::Ecdsa(_) => None,
        KeyData::Rsa(rsa) if rsa.key_size() >= 3072 => None,
        KeyData::Rsa(rsa) => Some(format!(
            "an RSA key of {} bits is refused; RSA keys need at least 3072 bits (or use ssh-ed25519)",
            rsa.key_size()
        )),
        KeyData::Dsa(_) => Some("DSA (ssh-dss) keys are refused: 1024 bits and SHA-1".into()),
        other => Some(format!(
            "{} keys are not supported; use ssh-ed25519, ecdsa-sha2-nistp256/384/521 or RSA of 3072 bits or more",
            other.algorithm()
        )),
    }
}

/// `192.0.2.0/24`, `2001:db8::/32`, or a single address.
fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

/// The columns a source table has, as found by introspection.
pub type TableColumns = BTreeMap<String, BTreeSet<String>>;

/// Planned steps of areas that no announcement tells suppliers of: a new
/// area (a test stage, or production from a date) without a `new_area`
/// announcement, a retirement without a `retirement` one. Warnings.
pub fn unannounced_steps(config: &Config) -> Vec<String> {
    use crate::announce::Kind;
    let announced = |area: &str, kind: Kind| {
        config
            .announcements
            .iter()
            .any(|a| a.kind == kind && a.covers(area))
    };
    let mut out = Vec::new();
    for area in &config.areas {
        let Some(l) = &area.lifecycle else { continue };
        if !announced(&area.id, Kind::NewArea) {
            out.push(format!(
                "area {} goes into production {} but no new_area announcement covers it",
                area.id,
                l.production_from.to_rfc3339()
            ));
        }
        if let Some(t) = l.retired_from
            && !announced(&area.id, Kind::Retirement)
        {
            out.push(format!(
                "area {} is retired {} but no retirement announcement covers it",
                area.id,
                t.to_rfc3339()
            ));
        }
    }
    out
}

/// Per area, the published columns its data dictionary does not describe
/// (a warning: the dictionary says so rather than guess).
pub fn undescribed_columns(config: &Config, tables: &TableColumns) -> Vec<(String, Vec<String>)> {
    config
        .areas
        .iter()
        .filter_map(|area| {
            let missing: Vec<String> = tables
                .get(&area.table)?
                .iter()
                .filter(|c| area.publishes(c) && !area.fields.contains_key(*c))
                .cloned()
                .collect();
            (!missing.is_empty()).then(|| (area.id.clone(), missing))
        })
        .collect()
}

/// Checks every column an area names against the source's tables.
pub fn check_columns(config: &Config, tables: &TableColumns) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for area in &config.areas {
        for column in area.fields.keys() {
            let Some(table) = tables.get(&area.table) else {
                break;
            };
            let wrong = if !table.contains(column) {
                format!("which table {} does not have", area.table)
            } else if !area.publishes(column) {
                "which is never published (a draft or excluded column)".to_string()
            } else {
                continue;
            };
            errors.push(ConfigError {
                file: config.file.clone(),
                line: area.field_lines.get(column).copied().or(Some(area.line)),
                message: format!(
                    "area {}: fields describes column \"{column}\", {wrong}",
                    area.id
                ),
            });
        }
        let mut err = |message: String| {
            errors.push(ConfigError {
                file: config.file.clone(),
                line: Some(area.line),
                message,
            })
        };
        let Some(table) = tables.get(&area.table) else {
            err(format!(
                "area {}: source has no table \"{}\"",
                area.id, area.table
            ));
            continue;
        };
        let table_cols = area
            .key
            .iter()
            .map(|c| ("key", c))
            .chain(area.route_kommune.iter().map(|c| ("route.kommune", c)))
            .chain(area.route_akasse.iter().map(|c| ("route.akasse", c)))
            .chain(area.draft_column.iter().map(|c| ("draft_column", c)))
            .chain([("person_column", &area.person_column)])
            .chain(area.exclude_columns.iter().map(|c| ("exclude_columns", c)));
        for (what, col) in table_cols {
            if !table.contains(col) {
                err(format!(
                    "area {}: {what} names unknown column \"{col}\" of table {} (it has: {})",
                    area.id,
                    area.table,
                    table.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        let Some(journal) = tables.get(&area.journal) else {
            err(format!(
                "area {}: source has no journal table \"{}\"",
                area.id, area.journal
            ));
            continue;
        };
        for (what, col) in [
            ("sequence_column", &area.sequence_column),
            ("operation_column", &area.operation_column),
            ("changed_at_column", &area.changed_at_column),
        ] {
            if !journal.contains(col) {
                err(format!(
                    "area {}: {what} names unknown column \"{col}\" of journal {}",
                    area.id, area.journal
                ));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests;
