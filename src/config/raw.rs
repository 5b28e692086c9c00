//! The config file as written: serde structs, nothing checked beyond syntax.
//! Every field's doc comment is user documentation. Unknown fields are
//! not refused here but reported by `document` (all of them, with lines).

use serde::Deserialize;
use toml::Spanned;

/// The whole file, read section by section (see `document`); a required
/// section is `None` when it is missing or could not be read.
#[derive(Debug, Default)]
pub struct RawConfig {
    /// `[sftp]`
    pub sftp: Option<RawSftp>,
    /// `[storage]`
    pub storage: Option<RawStorage>,
    /// `[source]`
    pub source: Option<RawSource>,
    /// `[state]`
    pub state: Option<RawState>,
    /// `[audit]`
    pub audit: Option<RawAudit>,
    /// `[http]`
    pub http: Option<RawHttp>,
    /// `[[supplier]]`: BI suppliers that log in over SFTP.
    pub suppliers: Vec<Spanned<RawSupplier>>,
    /// `[agreements]`
    pub agreements: RawAgreements,
    /// `[[area]]`: the data areas extracted from DFDG.
    pub areas: Vec<Spanned<RawArea>>,
    /// `[[notify]]`: who is told of what, by webhook or e-mail.
    pub notify: Vec<Spanned<RawNotify>>,
    /// `[smtp]`
    pub smtp: Option<RawSmtp>,
    /// `[announcements]`
    pub announcements: Option<RawAnnouncements>,
}

#[derive(Debug, Deserialize)]
pub struct RawSftp {
    /// Address and port to listen on, e.g. `127.0.0.1:2222`.
    pub listen: Spanned<String>,
    /// The server's ed25519 host key (OpenSSH format); generated on first start.
    pub host_key: Spanned<String>,
    /// Seconds a connection has to authenticate before it is closed.
    pub login_grace_seconds: Option<Spanned<i64>>,
    /// Seconds without an SFTP request before a session is closed.
    pub idle_timeout_seconds: Option<Spanned<i64>>,
    /// Connections not yet authenticated, from all addresses together.
    pub max_unauthenticated: Option<Spanned<i64>>,
    /// Concurrent connections per supplier, unless the supplier sets its own.
    pub max_sessions_per_supplier: Option<Spanned<i64>>,
    /// Failed logins from one address (within an hour) before it is banned.
    pub ban_after_failures: Option<Spanned<i64>>,
    /// Length of a first ban in seconds; each repeat doubles it, up to a day.
    pub ban_seconds: Option<Spanned<i64>>,
    /// Connections not yet authenticated from one address (as many
    /// as a supplier's sessions, which may all start at once behind one NAT); a
    /// supplier's `allow_from` networks and `ban_exempt` are not held to it.
    pub max_unauthenticated_per_address: Option<Spanned<i64>>,
    /// Seconds a new connection has to send its SSH identification.
    pub handshake_seconds: Option<Spanned<i64>>,
    /// Address blocks never banned (monitoring, load balancers); their failures are logged.
    #[serde(default)]
    pub ban_exempt: Vec<Spanned<String>>,
    /// Load balancers in front, as address blocks: a connection from one
    /// must begin with a PROXY protocol v2 header, and the address it names
    /// is the one admitted, banned, logged and audited; one without a valid
    /// header is refused. A header from anywhere else is not read (the SSH
    /// handshake refuses it). Empty: the PROXY protocol is off.
    #[serde(default)]
    pub proxy_protocol_from: Vec<Spanned<String>>,
    /// Seconds a stop waits for open sessions to end before it closes them.
    pub stop_timeout_seconds: Option<Spanned<i64>>,
    /// Also offer what JSch 0.1.54/0.1.55 needs: ECDH key exchange over NIST
    /// P-256 and an ECDSA P-256 host key (`<host_key>_ecdsa`, created on first
    /// start). ssh-audit fails both, so it is off unless set.
    pub legacy_profile: Option<Spanned<bool>>,
    /// The SSH channel window udstil offers a client, in KiB: how much it
    /// may send unanswered. A download is paced by the client's own window,
    /// which udstil fills (see `reads_in_flight`). Takes effect at restart.
    pub channel_window_kib: Option<Spanned<i64>>,
    /// Reads of files kept under way per SFTP session (255 KiB each at
    /// most): enough to fill the client's window on a long link. 16 covers
    /// 4 MiB, twice the window of OpenSSH's client; raise it for clients
    /// with wider windows (HPN-SSH). 1 to 256.
    pub reads_in_flight: Option<Spanned<i64>>,
}

impl RawSftp {
    /// Stands in for a missing or unreadable `[sftp]` so the rest can be checked.
    pub fn absent() -> Self {
        RawSftp {
            listen: Spanned::new(0..0, "127.0.0.1:0".into()),
            host_key: Spanned::new(0..0, String::new()),
            login_grace_seconds: None,
            idle_timeout_seconds: None,
            max_unauthenticated: None,
            max_sessions_per_supplier: None,
            ban_after_failures: None,
            ban_seconds: None,
            max_unauthenticated_per_address: None,
            handshake_seconds: None,
            ban_exempt: Vec::new(),
            proxy_protocol_from: Vec::new(),
            stop_timeout_seconds: None,
            legacy_profile: None,
            channel_window_kib: None,
            reads_in_flight: None,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct RawStorage {
    /// Folder holding the published tree (one folder per authority).
    pub root: Spanned<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawSource {
    /// DFDG: `sqlite://file.sqlite` or `postgres://user@host/db`.
    pub url: Spanned<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawState {
    /// The platform's own state database (loads, watermarks, audit).
    pub url: Spanned<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawHttp {
    /// Address and port of the read-only HTTP listener, e.g. `127.0.0.1:9100`:
    /// `/healthz`, `/readyz` and `/metrics` (Prometheus). No listener without it.
    pub listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawNotify {
    /// A name for this recipient (lower-case letters, digits and -), in logs
    /// and the state database's outbox.
    pub id: Spanned<String>,
    /// URL that gets a POST per event: a JSON body, signed in the header
    /// `X-Udstil-Signature: sha256=<hex HMAC-SHA256 of the body>`. Retried
    /// with backoff until it answers 2xx, across restarts. Give this or `email`.
    pub webhook: Option<Spanned<String>>,
    /// File holding the secret a webhook's signature is made with (at least 16 bytes).
    pub secret_file: Option<Spanned<String>>,
    /// Address that gets a mail per event, through `[smtp]`. Give this or `webhook`.
    pub email: Option<Spanned<String>>,
    /// The events wanted: `load_published`, `load_failed`, `incident_opened`,
    /// `incident_updated`, `incident_resolved`, `maintenance_planned`,
    /// `agreement_ending`, `supplier_behind`, `access_change` (a supplier
    /// gains or loses an authority's data area when an agreement starts or
    /// ends), `announcement` (one in the announcements file is new or changed).
    pub events: Vec<Spanned<String>>,
    /// Only events of these data areas (every area when not given).
    #[serde(default)]
    pub areas: Vec<Spanned<String>>,
    /// `agreement_ending` and `access_change` are sent this many days before
    /// the agreement ends or the access changes.
    pub agreement_days: Option<Spanned<i64>>,
    /// `supplier_behind` is sent (once a day) when a supplier lacks at least
    /// this many kept loads (the delivery ledger's `not_fetched`).
    pub behind_loads: Option<Spanned<i64>>,
    /// Makes this recipient a supplier's own contact (an id of `[[supplier]]`):
    /// it is told only of what concerns that supplier (its access changes,
    /// announcements about its areas, its delivery) and of notices about the
    /// platform as a whole. Left out: an operator, told of everything asked for.
    pub supplier: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawSmtp {
    /// The mail server's host name or address; mail is sent with STARTTLS
    /// and the server's certificate must verify for this name.
    pub host: Spanned<String>,
    /// The submission port.
    pub port: Option<Spanned<i64>>,
    /// The sender address of notification mails.
    pub from: Spanned<String>,
    /// A PEM file of a certificate authority to trust besides the public
    /// ones (a private mail relay).
    pub ca_file: Option<Spanned<String>>,
    /// User name to log in with, if the server wants one.
    pub username: Option<Spanned<String>>,
    /// File holding the password for `username`.
    pub password_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawAnnouncements {
    /// The announcements file (TOML, `[[announcement]]` entries), watched and
    /// reloaded like the config; an invalid edit is refused as a whole.
    pub file: Spanned<String>,
}

/// The announcements file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnnouncementFile {
    #[serde(default)]
    pub announcement: Vec<Spanned<RawAnnouncement>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnnouncement {
    /// Lower-case letters, digits and `-`; unique in the file; part of the
    /// file name suppliers see (`ANNOUNCEMENTS/<effective date>-<id>.md`).
    pub id: Spanned<String>,
    /// One line.
    pub title: Spanned<String>,
    /// `release`, `data_conversion`, `new_area`, `retirement` or `maintenance`.
    pub kind: Spanned<String>,
    /// The data areas it concerns (ids of `[[area]]`); every area when left out.
    /// It goes to the suppliers whose cooperation agreements list one of them.
    #[serde(default)]
    pub areas: Vec<Spanned<String>>,
    /// When what it announces takes effect: a date or an RFC 3339 time.
    pub effective: Spanned<toml::Value>,
    /// The text, in Markdown.
    pub body: Spanned<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawAudit {
    /// Days an audit event (and the person index of a removed load) is kept (about six months).
    pub retention_days: Option<Spanned<i64>>,
    /// Secret key (32 random bytes) for the person index; created on first use.
    pub key_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawSupplier {
    /// The SSH user name; lower-case letters, digits, `-`, `_`, `.`.
    pub id: Spanned<String>,
    /// The supplier's name, for people reading the config and the access reports.
    pub name: String,
    /// Public keys as `authorized_keys` lines.
    #[serde(default)]
    pub keys: Vec<Spanned<String>>,
    /// Files in `authorized_keys` format.
    #[serde(default)]
    pub key_files: Vec<Spanned<String>>,
    /// `[[supplier.key]]`: a key with a validity period (for rotation).
    #[serde(default, rename = "key")]
    pub dated_keys: Vec<Spanned<RawKey>>,
    /// Source addresses allowed to log in, as CIDR blocks (`192.0.2.0/24`); empty = any.
    #[serde(default)]
    pub allow_from: Vec<Spanned<String>>,
    /// Concurrent connections of this supplier.
    pub max_sessions: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
pub struct RawKey {
    /// One `authorized_keys` line (give this or `file`).
    pub key: Option<Spanned<String>>,
    /// A file in `authorized_keys` format (give this or `key`).
    pub file: Option<Spanned<String>>,
    /// From when the key may log in (a date or RFC 3339 instant; default: always).
    pub valid_from: Option<Spanned<toml::Value>>,
    /// Until when the key may log in (a date, inclusive, or an RFC 3339 instant).
    pub valid_to: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Default)]
pub struct RawAgreements {
    /// `[[agreements.connection]]`: an authority's agreement with STAR; lists its suppliers.
    pub connection: Vec<Spanned<RawConnection>>,
    /// `[[agreements.data_processing]]`: a supplier's agreement with an authority.
    pub data_processing: Vec<Spanned<RawDataProcessing>>,
    /// `[[agreements.cooperation]]`: a supplier's agreement with STAR; lists data areas.
    pub cooperation: Vec<Spanned<RawCooperation>>,
}

#[derive(Debug, Deserialize)]
pub struct RawConnection {
    /// The agreement's id, unique among all agreements (named in access reports).
    pub id: Spanned<String>,
    /// `kommune/<code>` or `akasse/<code>`.
    pub authority: Spanned<String>,
    /// The suppliers the authority has chosen (ids of `[[supplier]]`).
    pub suppliers: Vec<Spanned<String>>,
    /// A date (`2026-01-01`, from the start of that day, Danish time) or an RFC 3339 instant.
    pub valid_from: Spanned<toml::Value>,
    /// A date (until the end of that day, Danish time) or an RFC 3339 instant (exclusive).
    pub valid_to: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
pub struct RawDataProcessing {
    /// The agreement's id, unique among all agreements.
    pub id: Spanned<String>,
    /// The supplier processing the authority's data (an id of `[[supplier]]`).
    pub supplier: Spanned<String>,
    /// `kommune/<code>` or `akasse/<code>`.
    pub authority: Spanned<String>,
    /// A date (from the start of that day, Danish time) or an RFC 3339 instant.
    pub valid_from: Spanned<toml::Value>,
    /// A date (until the end of that day, Danish time) or an RFC 3339 instant (exclusive).
    pub valid_to: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
pub struct RawCooperation {
    /// The agreement's id, unique among all agreements.
    pub id: Spanned<String>,
    /// The supplier (an id of `[[supplier]]`).
    pub supplier: Spanned<String>,
    /// The data areas it may fetch (ids of `[[area]]`).
    pub areas: Vec<Spanned<String>>,
    /// Areas whose test loads it may fetch (`<area>.test/`), during their
    /// test stage and until the test loads are removed.
    #[serde(default)]
    pub test_areas: Vec<Spanned<String>>,
    /// A date (from the start of that day, Danish time) or an RFC 3339 instant.
    pub valid_from: Spanned<toml::Value>,
    /// A date (until the end of that day, Danish time) or an RFC 3339 instant (exclusive).
    pub valid_to: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
pub struct RawArea {
    /// The area's name in the tree, e.g. `joblog`.
    pub id: Spanned<String>,
    /// Bumped when DFDG changes the area's format; the tree gets `v<version>/`.
    pub version: Spanned<i64>,
    /// The current-state table.
    pub table: Spanned<String>,
    /// The change journal: one row per insert, update or delete.
    pub journal: Spanned<String>,
    /// The key column(s) identifying a row.
    pub key: Vec<Spanned<String>>,
    /// Journal column with the rising sequence number.
    pub sequence_column: Spanned<String>,
    /// Journal column holding `I`, `U` or `D`.
    pub operation_column: Spanned<String>,
    /// Journal column with the time of the change.
    pub changed_at_column: Spanned<String>,
    /// Which column names the authority a row belongs to, e.g. `{ kommune = "kommune_kode" }`.
    pub route: RawRoute,
    /// A boolean column; rows where it is true are drafts and never published.
    pub draft_column: Option<Spanned<String>>,
    /// The column holding the CPR number, indexed for `udstil audit person`.
    pub person_column: Option<Spanned<String>>,
    /// Columns never published (e.g. third-party data such as income from SKAT).
    #[serde(default)]
    pub exclude_columns: Vec<Spanned<String>>,
    /// When loads run, e.g. `{ delta = "0 0 * * * *", full = "0 30 2 * * Sun" }`.
    #[serde(default)]
    pub schedule: RawSchedule,
    /// How many loads are kept, e.g. `{ full_loads = 3 }`.
    #[serde(default)]
    pub retention: RawRetention,
    /// Also write the legacy SUP text format, e.g. `{ datapakke = "05", table = "tblJoblog" }`.
    pub legacy: Option<RawLegacy>,
    /// A short description of the area for suppliers: the first line of its
    /// data dictionary (`DICTIONARY.md`) and of its entry on the status page.
    pub description: Option<Spanned<String>>,
    /// The data dictionary: a short description of each published column,
    /// e.g. `[area.fields]` with `joblog_id = "The joblog entry's id"`.
    /// Checked against the source: a description of a column the table does
    /// not have, or that is never published, is an error; a published column
    /// without one is a warning. Published with every version as
    /// `DICTIONARY.json` and `DICTIONARY.md` and in the Parquet files'
    /// column metadata (`description`).
    #[serde(default)]
    pub fields: std::collections::BTreeMap<String, Spanned<String>>,
    /// The area's life: test loads, production from a planned time,
    /// retirement, removal. An area without one is in production.
    pub lifecycle: Option<RawLifecycle>,
}

#[derive(Debug, Deserialize)]
pub struct RawLifecycle {
    /// Test loads from then (a date or RFC 3339 time), into
    /// `<area>.test/` and only for suppliers whose cooperation agreement
    /// lists the area in `test_areas`. Left out: no test stage.
    pub test_from: Option<Spanned<toml::Value>>,
    /// Production loads from then, starting with a full load at that time;
    /// test loads stop.
    pub production_from: Spanned<toml::Value>,
    /// Days the test loads stay in the tree after production starts.
    pub test_kept_days: Option<Spanned<i64>>,
    /// No more loads from then (announce it first).
    pub retired_from: Option<Spanned<toml::Value>>,
    /// The area's loads leave the tree then (after `retired_from`); left
    /// out, 30 days after `retired_from`.
    pub removed_from: Option<Spanned<toml::Value>>,
    /// Test loads from this DFDG instead of `[source] url` (same tables).
    pub test_source: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawLegacy {
    /// Two digits: the SUP data package number.
    pub datapakke: Spanned<String>,
    /// The table name in the file name, e.g. `tblJoblog`.
    pub table: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRoute {
    /// Column holding the citizen's responsible municipality (3-digit code).
    pub kommune: Option<Spanned<String>>,
    /// Column holding the member's unemployment-insurance fund (3-digit code).
    pub akasse: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawSchedule {
    /// Delta loads: a cron expression (sec min hour day month weekday), Danish time.
    pub delta: Option<Spanned<String>>,
    /// Full loads: a cron expression, as for `delta`.
    pub full: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawRetention {
    /// How many full loads to keep (with every delta after the oldest kept one).
    #[serde(default = "default_full_loads")]
    pub full_loads: Spanned<i64>,
}

impl Default for RawRetention {
    fn default() -> Self {
        RawRetention {
            full_loads: Spanned::new(0..0, default_full_loads().into_inner()),
        }
    }
}

fn default_full_loads() -> Spanned<i64> {
    Spanned::new(0..0, defaults::FULL_LOADS as i64)
}

/// Declares the defaults once: as constants the validation applies, and as
/// the list `config reference` prints (keyed `section.field`).
macro_rules! defaults {
    ($($key:literal => $name:ident: $ty:ty = $value:expr;)*) => {
        $(pub const $name: $ty = $value;)*

        /// `(section.field, default)` of every setting that has one.
        pub fn documented() -> Vec<(&'static str, String)> {
            vec![$(($key, format!("{:?}", $name))),*]
        }
    };
}

/// The default of every optional setting.
pub mod defaults {
    defaults! {
        "sftp.login_grace_seconds" => LOGIN_GRACE_SECONDS: u64 = 30;
        "sftp.idle_timeout_seconds" => IDLE_TIMEOUT_SECONDS: u64 = 900;
        "sftp.max_unauthenticated" => MAX_UNAUTHENTICATED: u64 = 64;
        "sftp.max_sessions_per_supplier" => MAX_SESSIONS_PER_SUPPLIER: u64 = 32;
        "sftp.ban_after_failures" => BAN_AFTER_FAILURES: u64 = 10;
        "sftp.ban_seconds" => BAN_SECONDS: u64 = 300;
        "sftp.max_unauthenticated_per_address" => MAX_UNAUTHENTICATED_PER_ADDRESS: u64 = 32;
        "sftp.handshake_seconds" => HANDSHAKE_SECONDS: u64 = 10;
        "sftp.stop_timeout_seconds" => STOP_TIMEOUT_SECONDS: u64 = 10;
        "sftp.legacy_profile" => LEGACY_PROFILE: bool = false;
        "sftp.channel_window_kib" => CHANNEL_WINDOW_KIB: u64 = 8192;
        "sftp.reads_in_flight" => READS_IN_FLIGHT: u64 = 16;
        "audit.retention_days" => RETENTION_DAYS: u64 = 183;
        "audit.key_file" => AUDIT_KEY_FILE: &str = "audit.key";
        "supplier.max_sessions" => SUPPLIER_MAX_SESSIONS: &str = "sftp.max_sessions_per_supplier";
        "area.person_column" => PERSON_COLUMN: &str = "cpr";
        "area.retention.full_loads" => FULL_LOADS: u64 = 3;
        "smtp.port" => SMTP_PORT: u64 = 587;
        "notify.agreement_days" => AGREEMENT_DAYS: u64 = 30;
        "notify.behind_loads" => BEHIND_LOADS: u64 = 3;
        "area.lifecycle.test_kept_days" => TEST_KEPT_DAYS: u64 = 14;
    }
}
