//! The command line, as clap reads it, its flags' values, and the progress
//! display of a load; `main` runs what it names.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use udstil::app;
use udstil::tree::LoadKind;

#[derive(Parser)]
#[command(
    name = "udstil",
    version,
    about = "DFDG extracts as per-authority Parquet trees, served over SFTP"
)]
pub struct Cli {
    /// How log lines are written to standard error: `text` for people and
    /// journald, `json` (one object per line) for log shipping.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Build a synthetic DFDG, run full loads of every area and serve SFTP.
    Demo {
        #[arg(long, default_value = "127.0.0.1:2222")]
        listen: SocketAddr,
        #[arg(long, default_value = "demo-data")]
        data_dir: PathBuf,
        /// Citizens in the generated DFDG (used only when it does not exist yet).
        #[arg(long, default_value_t = 5000)]
        citizens: u64,
    },
    /// Serve SFTP with a config file.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run one load now: `--full` or `--delta`.
    #[command(group(clap::ArgGroup::new("kind").required(true).args(["full", "delta"])))]
    Load {
        #[arg(long)]
        config: PathBuf,
        /// The data area; every area when left out.
        #[arg(long)]
        area: Option<String>,
        /// A full load: the current state.
        #[arg(long)]
        full: bool,
        /// A delta load: every change since the last published load.
        #[arg(long)]
        delta: bool,
    },
    /// Config file commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Who may read what, and why not.
    Access {
        #[command(subcommand)]
        command: AccessCommand,
    },
    /// The audit trail: check its chain, search it, find who received a person's data.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The delivery ledger: per supplier, authority and data area, the newest
    /// load published and the newest one the supplier fetched completely, the
    /// loads it never fetched completely, and what it needs to be current.
    Ledger {
        #[command(flatten)]
        args: LedgerArgs,
    },
    /// The status page: incidents, maintenance and releases.
    Status {
        #[command(subcommand)]
        command: StatusCommand,
    },
    /// Synthetic DFDG commands.
    Fixtures {
        #[command(subcommand)]
        command: FixturesCommand,
    },
}

#[derive(clap::Args)]
pub struct LedgerArgs {
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long)]
    supplier: Option<String>,
    /// `kommune/101` or `akasse/901`.
    #[arg(long)]
    authority: Option<String>,
    #[arg(long)]
    area: Option<String>,
    #[arg(long, value_enum, default_value_t = LedgerFormat::Text)]
    format: LedgerFormat,
}

impl LedgerArgs {
    /// The rows asked for, and how to print them.
    pub fn filter(self) -> anyhow::Result<(app::LedgerFilter, LedgerFormat)> {
        let filter = app::LedgerFilter {
            supplier: self.supplier,
            authority: parse_authority(self.authority)?,
            area: self.area,
        };
        Ok((filter, self.format))
    }
}

/// `--authority kommune/101`, if given.
pub fn parse_authority(
    authority: Option<String>,
) -> anyhow::Result<Option<udstil::authority::AuthorityId>> {
    authority
        .map(|a| {
            a.parse()
                .map_err(|e| anyhow::anyhow!("--authority {a}: {e}"))
        })
        .transpose()
}

impl AuditFormat {
    /// Audit records as JSON, or a line each (without a trailing newline).
    pub fn render(self, rows: &[udstil::audit::Record]) -> anyhow::Result<String> {
        Ok(match self {
            AuditFormat::Json => serde_json::to_string_pretty(rows)?,
            AuditFormat::Text => rows.iter().map(|r| r.line()).collect::<Vec<_>>().join("\n"),
        })
    }
}

impl LedgerFormat {
    pub fn render(self, entries: &[udstil::ledger::Entry]) -> anyhow::Result<String> {
        Ok(match self {
            LedgerFormat::Text => udstil::ledger::text(entries),
            LedgerFormat::Json => serde_json::to_string_pretty(entries)?,
            LedgerFormat::Csv => udstil::ledger::csv(entries),
        })
    }
}

#[derive(Subcommand)]
pub enum StatusCommand {
    /// Open an incident on a component (`sftp`, `source` or `area:<id>`).
    Open {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        component: String,
        /// `degraded` or `outage`.
        #[arg(long)]
        impact: String,
        #[arg(long)]
        title: String,
        #[arg(long)]
        message: String,
    },
    /// Add an update to an incident: `identified`, `monitoring` or `resolved`.
    Update {
        #[arg(long)]
        config: PathBuf,
        id: i64,
        #[arg(long)]
        state: String,
        #[arg(long)]
        message: String,
    },
    /// Plan maintenance (or, with `--release`, a release) in a time window.
    Plan {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        title: String,
        /// RFC 3339, e.g. 2026-12-10T18:00:00+01:00.
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// One component; the whole platform when absent.
        #[arg(long)]
        component: Option<String>,
        #[arg(long)]
        release: bool,
        #[arg(long, default_value = "")]
        description: String,
    },
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file (and its columns against the source); print every error.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Every setting with its type, default and description (Markdown).
    Reference,
}

#[derive(Subcommand)]
pub enum AccessCommand {
    /// For each authority and data area: allowed, or which agreement is
    /// missing, not yet valid or ended (with its dates).
    Explain {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        supplier: String,
        /// `kommune/101` or `akasse/901`; every authority with an agreement when left out.
        #[arg(long)]
        authority: Option<String>,
        #[arg(long)]
        area: Option<String>,
        /// A date (Danish day) or RFC 3339 time; now when left out.
        #[arg(long)]
        at: Option<String>,
    },
    /// Every supplier x authority x area that gains or loses access in a
    /// window, and which agreement starts or ends to cause it (a supplier
    /// switch shows as one supplier's losses and the other's gains).
    Changes {
        #[arg(long)]
        config: PathBuf,
        /// A date (from the start of that Danish day) or RFC 3339 time; now when left out.
        #[arg(long)]
        from: Option<String>,
        /// A date (to the end of that Danish day) or RFC 3339 time.
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value_t = ChangesFormat::Text)]
        format: ChangesFormat,
    },
    /// Supplier x authority x area, allowed or not, for audits.
    Matrix {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        at: Option<String>,
        #[arg(long, value_enum, default_value_t = MatrixFormat::Csv)]
        format: MatrixFormat,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; names the first row that was changed, inserted or removed.
    Verify {
        #[arg(long)]
        config: PathBuf,
    },
    /// Audit events, oldest first, filtered.
    Query {
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        filter: QueryFilter,
        #[arg(long, value_enum, default_value_t = AuditFormat::Text)]
        format: AuditFormat,
    },
    /// Which suppliers downloaded files holding this person (CPR number), and when.
    Person {
        #[arg(long)]
        config: PathBuf,
        /// The CPR number, `DDMMYYSSSS` or `DDMMYY-SSSS`.
        cpr: String,
        #[arg(long, value_enum, default_value_t = AuditFormat::Text)]
        format: AuditFormat,
    },
}

/// What `audit query` selects.
#[derive(clap::Args)]
pub struct QueryFilter {
    #[arg(long)]
    supplier: Option<String>,
    /// `kommune/101` or `akasse/901`.
    #[arg(long)]
    authority: Option<String>,
    #[arg(long)]
    area: Option<String>,
    /// The kind of event.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(
        udstil::audit::Action::ALL.map(|a| a.as_str())
    ))]
    action: Option<String>,
    /// From this date (Danish day) or RFC 3339 time, inclusive.
    #[arg(long)]
    from: Option<String>,
    /// Up to this date or time, exclusive.
    #[arg(long)]
    to: Option<String>,
    #[arg(long, default_value_t = 10_000)]
    limit: i64,
}

impl QueryFilter {
    /// The filter, with its times checked (clap checks the action).
    pub fn filter(self) -> anyhow::Result<udstil::state::AuditFilter> {
        let bound = |flag, v: Option<String>| {
            v.map(|v| parse_time(flag, &v).map(udstil::audit::timestamp))
                .transpose()
        };
        Ok(udstil::state::AuditFilter {
            supplier: self.supplier,
            authority: self.authority,
            area: self.area,
            action: self.action,
            from: bound("--from", self.from)?,
            to: bound("--to", self.to)?,
            limit: self.limit,
        })
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum AuditFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LedgerFormat {
    Text,
    Json,
    Csv,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ChangesFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum MatrixFormat {
    Csv,
    Json,
}

#[derive(Subcommand)]
pub enum FixturesCommand {
    /// Append random changes (inserts, updates, deletes, drafts, moves, fund changes) to the journals.
    Mutate {
        #[arg(long)]
        source: String,
        #[arg(long, default_value_t = 100)]
        changes: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Create the DFDG schema and deterministic synthetic data (drops existing tables).
    Generate {
        /// sqlite://FILE or postgres://...
        #[arg(long)]
        source: String,
        #[arg(long, default_value_t = 1000)]
        citizens: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// A date (a Danish day) or an RFC 3339 time given as `flag`.
pub fn parse_time(flag: &str, text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    udstil::config::parse_instant(text, false).ok_or_else(|| {
        anyhow::anyhow!("{flag} {text} is not a date (2026-01-31) or an RFC 3339 time")
    })
}

/// `--to`: a bare date runs to the end of that Danish day.
pub fn parse_until(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    udstil::config::parse_instant(text, true).ok_or_else(|| {
        anyhow::anyhow!("--to {text} is not a date (2026-01-31) or an RFC 3339 time")
    })
}

pub fn parse_at(at: Option<&str>) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    at.map_or_else(|| Ok(chrono::Utc::now()), |t| parse_time("--at", t))
}

/// A spinner with the rows read and their rate, when stderr is a terminal.
pub fn progress_bar(
    progress: udstil::load::Progress,
    kind: LoadKind,
) -> Option<(indicatif::ProgressBar, tokio::task::JoinHandle<()>)> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg}: {human_pos} rows read in {elapsed}",
        )
        .expect("valid template"),
    );
    bar.set_message(format!("{} load", kind.as_str()));
    let b = bar.clone();
    let ticker = tokio::spawn(async move {
        loop {
            b.set_position(progress.load(std::sync::atomic::Ordering::Relaxed));
            b.tick();
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    Some((bar, ticker))
}

impl StatusCommand {
    /// The config file and the change asked for.
    pub fn into_change(self) -> anyhow::Result<(PathBuf, app::StatusChange)> {
        Ok(match self {
            StatusCommand::Open {
                config,
                component,
                impact,
                title,
                message,
            } => (
                config,
                app::StatusChange::Open {
                    component,
                    impact,
                    title,
                    message,
                },
            ),
            StatusCommand::Update {
                config,
                id,
                state,
                message,
            } => (config, app::StatusChange::Update { id, state, message }),
            StatusCommand::Plan {
                config,
                title,
                from,
                to,
                component,
                release,
                description,
            } => (
                config,
                app::StatusChange::Plan {
                    release,
                    title,
                    component,
                    from: parse_time("--from", &from)?,
                    to: parse_time("--to", &to)?,
                    description,
                },
            ),
        })
    }
}
