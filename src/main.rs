//! The `udstil` command: parses the command line, sets up logging, calls `app`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use udstil::app;
use udstil::source::Source;
use udstil::tree::LoadKind;

/// `println!` that ends the process quietly when the reader has gone
/// (`udstil access matrix | head`), instead of panicking on the closed pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = writeln!(stdout, $($arg)*).and_then(|_| stdout.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            panic!("writing to standard output: {e}");
        }
    }};
}

#[derive(Parser)]
#[command(
    name = "udstil",
    version,
    about = "DFDG extracts as per-authority Parquet trees, served over SFTP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    /// Synthetic DFDG commands.
    Fixtures {
        #[command(subcommand)]
        command: FixturesCommand,
    },
    /// Benchmarks that print figures.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file (and its columns against the source); print every error.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum AccessCommand {
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
enum AuditCommand {
    /// Check the hash chain; names the first row that was changed, inserted or removed.
    Verify {
        #[arg(long)]
        config: PathBuf,
    },
    /// Audit events, oldest first, filtered.
    Query {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        supplier: Option<String>,
        /// `kommune/101` or `akasse/901`.
        #[arg(long)]
        authority: Option<String>,
        #[arg(long)]
        area: Option<String>,
        /// login, login_refused, listing, file_open, download, load_published,
        /// config_reload, config_refused, audit_read, audit_pruned.
        #[arg(long)]
        action: Option<String>,
        /// From this date (Danish day) or RFC 3339 time, inclusive.
        #[arg(long)]
        from: Option<String>,
        /// Up to this date or time, exclusive.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value_t = 10_000)]
        limit: i64,
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum AuditFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MatrixFormat {
    Csv,
    Json,
}

#[derive(Subcommand)]
enum FixturesCommand {
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

#[derive(Subcommand)]
enum BenchCommand {
    /// Generate a DFDG and time full loads of every area: rows/s and peak memory.
    Load {
        #[arg(long)]
        source: String,
        #[arg(long, default_value_t = 1_000_000)]
        citizens: u64,
        /// Folder for the tree and config (emptied first).
        #[arg(long, default_value = "target/bench-load")]
        work_dir: PathBuf,
        /// Reuse the data already in the source.
        #[arg(long)]
        no_generate: bool,
        /// After the full loads: apply this many changes and time one delta of joblog.
        #[arg(long, default_value_t = 10_000)]
        delta_changes: u64,
        /// Time only these areas (all when none is given).
        #[arg(long = "area")]
        areas: Vec<String>,
        /// Rounds of a load then a COPY per area; the fastest of each counts.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
    },
}

fn main() -> ExitCode {
    one_malloc_arena();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "udstil=info,sqlx=error,warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal; journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    // The command runs as a task on the runtime's workers, as the daemon's
    // scheduled loads do, not in `block_on` on this thread: this thread never
    // polls the sockets itself, so each wait for PostgreSQL cost two thread
    // switches (a bench round of joblog at 1M citizens: 135K context switches
    // in `block_on`, 62K as a task).
    match rt.block_on(async { tokio::spawn(run(cli)).await }) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
        // The panic's message is out already; it ends the process as before.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that allocates an arena of its own. A load's
/// task moves between the runtime's workers, and its batches are freed on the
/// encoder threads, so memory freed in one arena sat unused while another
/// grew: a joblog load at 1M citizens peaked at 281-355 MiB as a task against
/// 192-197 MiB with one arena, and was no slower (three pairs). Small
/// allocations still come from each thread's own cache. Set before any thread
/// starts.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { config },
        } => match app::check_config(&config).await {
            Ok(c) => {
                out!(
                    "{}: ok ({} suppliers, {} agreements, {} data areas)",
                    config.display(),
                    c.suppliers.len(),
                    c.agreements.connection.len()
                        + c.agreements.data_processing.len()
                        + c.agreements.cooperation.len(),
                    c.areas.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{e}");
                }
                eprintln!("{}: {} error(s)", config.display(), errors.0.len());
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Access { command } => access(command),
        Command::Audit { command } => audit(command).await,
        Command::Serve { config } => {
            // SFTP does not depend on DFDG: its columns are checked in the
            // background, and a source that is down only delays loads.
            let c = udstil::config::load(&config)
                .map_err(|e| anyhow::anyhow!("refusing to start, the config has errors:\n{e}"))?;
            app::reconcile_state(&c).await;
            let listen = c.sftp.listen;
            let c = Arc::new(c);
            let server = app::Server::bind(c.clone(), listen).await?;
            tracing::info!(addr = %server.addr, "serving SFTP");
            app::check_columns_in_background(c);
            serve_until_signal(server).await
        }
        Command::Load {
            config,
            area,
            full: _,
            delta,
        } => {
            let c = checked(&config).await?;
            let kind = if delta {
                LoadKind::Delta
            } else {
                LoadKind::Full
            };
            let progress = udstil::load::Progress::default();
            let bar = progress_bar(progress.clone(), kind);
            let result =
                app::run_loads_with(&c, area.as_deref(), kind, "manual", Some(progress)).await;
            if let Some((bar, ticker)) = bar {
                ticker.abort();
                bar.finish_and_clear();
            }
            for r in result? {
                let window = match r.watermark_from {
                    Some(from) => format!("watermark {from} -> {}", r.watermark_to),
                    None => format!("watermark {}", r.watermark_to),
                };
                out!(
                    "{}: {} load {} published: {} rows read, {} rows written to {} authorities, {} files, {} bytes, {window}, {:.1}s",
                    r.area,
                    r.kind.as_str(),
                    r.load_id,
                    r.rows_read,
                    r.rows_written,
                    r.authorities,
                    r.files,
                    r.bytes,
                    r.elapsed.as_secs_f64()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Fixtures {
            command:
                FixturesCommand::Generate {
                    source,
                    citizens,
                    seed,
                },
        } => {
            let s = Source::create(&source).await?;
            let summary = udstil::fixtures::generate(&s, citizens, seed).await?;
            s.close().await;
            out!(
                "generated {} citizens: current rows {}, journal rows {} (joblog, plan_aktivitet, akasse_medlemskab)",
                summary.citizens,
                list(&summary.rows),
                list(&summary.journal_rows)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Fixtures {
            command:
                FixturesCommand::Mutate {
                    source,
                    changes,
                    seed,
                },
        } => {
            let s = Source::connect(&source).await?;
            let m = udstil::fixtures::mutate(&s, changes, seed).await?;
            s.close().await;
            out!(
                "applied {} inserts, {} updates, {} deletes, {} draft toggles, {} moves, {} fund changes ({} journal rows)",
                m.inserts,
                m.updates,
                m.deletes,
                m.draft_toggles,
                m.moves,
                m.fund_changes,
                m.journal_rows
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            listen,
            data_dir,
            citizens,
        } => demo(listen, &data_dir, citizens).await,
        Command::Bench {
            command:
                BenchCommand::Load {
                    source,
                    citizens,
                    work_dir,
                    no_generate,
                    delta_changes,
                    areas,
                    rounds,
                },
        } => {
            let opts = BenchOptions {
                citizens,
                no_generate,
                delta_changes,
                areas,
                rounds,
            };
            bench_load(&source, &work_dir, &opts).await
        }
    }
}

/// A spinner with the rows read and their rate, when stderr is a terminal.
fn progress_bar(
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

/// Loads a config and refuses to go on with any error, printing them all.
async fn checked(path: &Path) -> anyhow::Result<udstil::config::Config> {
    app::check_config(path)
        .await
        .map_err(|e| anyhow::anyhow!("refusing to start, the config has errors:\n{e}"))
}

fn parse_at(at: Option<&str>) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    match at {
        None => Ok(chrono::Utc::now()),
        Some(t) => udstil::config::parse_instant(t, false).ok_or_else(|| {
            anyhow::anyhow!("--at {t} is not a date (2026-01-31) or an RFC 3339 time")
        }),
    }
}

fn access(command: AccessCommand) -> anyhow::Result<ExitCode> {
    match command {
        AccessCommand::Explain {
            config,
            supplier,
            authority,
            area,
            at,
        } => {
            let c = udstil::config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            let at = parse_at(at.as_deref())?;
            let authority = authority
                .map(|a| {
                    a.parse::<udstil::authority::AuthorityId>()
                        .map_err(|e| anyhow::anyhow!("--authority {a}: {e}"))
                })
                .transpose()?;
            let rows = app::access_rows(&c, Some(&supplier), authority, area.as_deref(), at)?;
            out!("{supplier} at {}:", at.to_rfc3339());
            for r in rows {
                let verdict = if r.allowed {
                    "allowed".to_string()
                } else {
                    format!("denied: {}", r.reasons.join("; "))
                };
                out!("  {:<12} {:<30} {verdict}", r.authority, r.area);
            }
            Ok(ExitCode::SUCCESS)
        }
        AccessCommand::Matrix { config, at, format } => {
            let c = udstil::config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            let at = parse_at(at.as_deref())?;
            let rows = app::access_rows(&c, None, None, None, at)?;
            match format {
                MatrixFormat::Json => {
                    out!("{}", serde_json::to_string_pretty(&rows)?);
                }
                MatrixFormat::Csv => {
                    out!("supplier,authority,authority_name,area,allowed,reasons");
                    for r in rows {
                        let reasons = r.reasons.join("; ").replace('"', "\"\"");
                        out!(
                            "{},{},\"{}\",{},{},\"{reasons}\"",
                            r.supplier,
                            r.authority,
                            r.authority_name,
                            r.area,
                            r.allowed
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_records(rows: &[udstil::audit::Record], format: AuditFormat) -> anyhow::Result<()> {
    match format {
        AuditFormat::Json => out!("{}", serde_json::to_string_pretty(rows)?),
        AuditFormat::Text => {
            for r in rows {
                let e = &r.event;
                let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                out!(
                    "{:>6} {} {:<14} {:<10} {:<12} {:<28} {} bytes={} from={} key={} outcome={} {}",
                    r.id,
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
                );
            }
        }
    }
    Ok(())
}

async fn audit(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify { config } => {
            let c = udstil::config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            match app::audit_verify(&c).await {
                Ok(s) => {
                    out!(
                        "audit chain intact: {} rows ({}..{}), head hash {}",
                        s.rows,
                        s.first_id.map_or("-".into(), |i| i.to_string()),
                        s.last_id,
                        s.head_hash
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(app::AppError::AuditBroken(b)) => {
                    eprintln!("audit chain broken: {b}");
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => Err(e.into()),
            }
        }
        AuditCommand::Query {
            config,
            supplier,
            authority,
            area,
            action,
            from,
            to,
            limit,
            format,
        } => {
            let c = udstil::config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Some(a) = &action
                && udstil::audit::Action::parse(a).is_none()
            {
                anyhow::bail!("--action {a}: not an audit action (see --help)");
            }
            let bound = |flag: &str, v: Option<String>| -> anyhow::Result<Option<String>> {
                v.map(|v| {
                    udstil::config::parse_instant(&v, false)
                        .map(udstil::audit::timestamp)
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "{flag} {v} is not a date (2026-01-31) or an RFC 3339 time"
                            )
                        })
                })
                .transpose()
            };
            let filter = udstil::state::AuditFilter {
                supplier,
                authority,
                area,
                action,
                from: bound("--from", from)?,
                to: bound("--to", to)?,
                limit,
            };
            let rows = app::audit_query(&c, &filter).await?;
            print_records(&rows, format)?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Person {
            config,
            cpr,
            format,
        } => {
            let c = udstil::config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            let Some(cpr) = udstil::audit::parse_cpr(&cpr) else {
                anyhow::bail!("the CPR number must be 10 digits (DDMMYYSSSS or DDMMYY-SSSS)");
            };
            let rows = app::audit_person(&c, &cpr).await?;
            if matches!(format, AuditFormat::Text) && rows.is_empty() {
                out!("no downloads of files holding this person are recorded");
            }
            print_records(&rows, format)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Serves SFTP and runs the configured schedules until SIGINT or SIGTERM;
/// a load in progress is allowed to finish. The config is reloaded on
/// SIGHUP and when its files change; an invalid edit is refused and the
/// config in force keeps serving.
async fn serve_until_signal(server: app::Server) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let live = server.live();
    let audit = server.audit();
    let path = live.get().file.clone();
    let mut stop = tokio_util::sync::CancellationToken::new();
    let mut schedules = app::spawn_schedules(live.get(), stop.clone());
    tracing::info!(schedules = schedules.len(), "schedules started");
    let mut watched = app::config_files_state(&live.get());
    let mut poll = tokio::time::interval(std::time::Duration::from_secs(1));
    let stopper = server.stopper();
    let run = server.run();
    tokio::pin!(run);
    let mut ended = None;
    loop {
        let why = tokio::select! {
            r = &mut run => { ended = Some(r); break; }
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; stopping"); break; }
            _ = term.recv() => { tracing::info!("terminated; stopping"); break; }
            _ = hup.recv() => "SIGHUP",
            _ = poll.tick() => {
                let now = app::config_files_state(&live.get());
                if now == watched { continue; }
                watched = now;
                "a config file changed"
            }
        };
        let before = live.get();
        match app::reload_recorded(&live, &path, &audit, why).await {
            Ok(_) => {
                let after = live.get();
                watched = app::config_files_state(&after);
                if app::schedules_differ(&before, &after) {
                    // A load in progress finishes; the per-area file lock keeps
                    // the new schedules from overlapping it.
                    stop.cancel();
                    stop = tokio_util::sync::CancellationToken::new();
                    schedules = app::spawn_schedules(after, stop.clone());
                    tracing::info!(schedules = schedules.len(), "schedules restarted");
                }
            }
            Err(errors) => {
                tracing::error!(trigger = why, errors = %errors, "config reload refused; the config in force keeps serving");
            }
        }
    }
    // A graceful stop: no new connections, open ones closed and their
    // partial downloads recorded (bounded by `[sftp] stop_timeout_seconds`).
    stopper.cancel();
    let served = match ended {
        Some(r) => r,
        None => run.await,
    };
    stop.cancel();
    for task in schedules {
        let _ = task.await;
    }
    // Events of the last requests are written before the process ends.
    if tokio::time::timeout(std::time::Duration::from_secs(10), audit.flush())
        .await
        .is_err()
    {
        tracing::error!("audit trail not fully written at stop");
    }
    served?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn demo(listen: SocketAddr, dir: &Path, citizens: u64) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    let config_path = app::prepare_demo(&dir, listen, citizens, 1).await?;
    let config = checked(&config_path).await?;
    for r in app::full_loads(&config, None).await? {
        out!(
            "loaded {:<30} {:>8} rows into {:>3} authorities ({})",
            r.area,
            r.rows_read,
            r.authorities,
            r.load_id
        );
    }
    let config = Arc::new(config);
    let server = app::Server::bind(config.clone(), listen).await?;
    // A known_hosts entry so the printed commands connect without a prompt.
    let host = udstil::sftp::host_key(&config.sftp.host_key)?;
    let line = format!(
        "[{}]:{} {}\n",
        server.addr.ip(),
        server.addr.port(),
        host.public_key().to_openssh().context("host key")?
    );
    std::fs::write(dir.join("known_hosts"), line)?;
    out!(
        "\nudstil demo: SFTP on {} (data in {}; config {})\nConnect as each demo supplier:{}\nStop with Ctrl-C. `udstil serve --config {}` serves the same folder again.",
        server.addr,
        dir.display(),
        config_path.display(),
        app::describe_access(&config, &config_path, server.addr),
        config_path.display()
    );
    serve_until_signal(server).await
}

/// Peak resident memory of this process since the last reset, in bytes.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// CPU seconds used so far by this process and by the local PostgreSQL's
/// processes (user + system; a reaped parallel worker counts in the
/// postmaster's children time), and the machine's idle seconds summed over
/// its cores. Linux only; PostgreSQL reads 0 when it runs elsewhere.
fn cpu_seconds() -> (f64, f64, f64) {
    // /proc/<pid>/stat fields after the command name: utime is the 12th,
    // then stime, cutime, cstime; in clock ticks (USER_HZ, 100 on Linux).
    fn ticks(stat: &str) -> Option<(String, u64)> {
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat[open + 1..close].to_string();
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        let sum = f
            .get(11..15)?
            .iter()
            .map(|v| v.parse::<u64>().unwrap_or(0))
            .sum();
        Some((comm, sum))
    }
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| ticks(&s))
        .map_or(0, |(_, t)| t);
    let mut pg = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(s) = std::fs::read_to_string(entry.path().join("stat"))
            && let Some((comm, t)) = ticks(&s)
            && comm == "postgres"
        {
            pg += t;
        }
    }
    // The first line of /proc/stat: "cpu  user nice system idle iowait ...".
    let idle: u64 = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let first = s.lines().next()?.to_string();
            Some(
                first
                    .split_whitespace()
                    .skip(4)
                    .take(2)
                    .filter_map(|v| v.parse::<u64>().ok())
                    .sum(),
            )
        })
        .unwrap_or(0);
    (own as f64 / 100.0, pg as f64 / 100.0, idle as f64 / 100.0)
}

struct BenchOptions {
    citizens: u64,
    no_generate: bool,
    delta_changes: u64,
    areas: Vec<String>,
    rounds: u32,
}

async fn bench_load(source: &str, work: &Path, opts: &BenchOptions) -> anyhow::Result<ExitCode> {
    let BenchOptions {
        citizens,
        no_generate,
        delta_changes,
        ..
    } = *opts;
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    let work = std::fs::canonicalize(work)?;
    let cfg_text = include_str!("../config/demo.toml").replace(
        "url = \"sqlite://dfdg.sqlite\"",
        &format!("url = \"{source}\""),
    );
    std::fs::create_dir_all(work.join("keys"))?;
    for s in ["bi-alpha", "bi-beta", "bi-gamma", "bi-delta"] {
        std::fs::write(
            work.join("keys").join(format!("{s}.pub")),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF96/5qags1wXylJFqn17qwSlFgmPXR3ZBHYg5E1eGEH bench\n",
        )?;
    }
    let cfg_path = work.join("udstil.toml");
    std::fs::write(&cfg_path, cfg_text)?;
    if !no_generate {
        let t = std::time::Instant::now();
        let s = Source::create(source).await?;
        let summary = udstil::fixtures::generate(&s, citizens, 1).await?;
        s.close().await;
        out!(
            "generated {citizens} citizens in {:.0}s: current rows {}, journal rows {}",
            t.elapsed().as_secs_f64(),
            list(&summary.rows),
            list(&summary.journal_rows)
        );
    }
    let config = checked(&cfg_path).await?;
    // Reset the peak-RSS counter so generation does not count (Linux: clear_refs 5).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let base = peak_rss();
    out!(
        "{:<30} {:>10} {:>10} {:>12} {:>14} {:>12} {:>8}",
        "area",
        "rows",
        "seconds",
        "rows/s",
        "peak RSS MiB",
        "COPY rows/s",
        "ratio"
    );
    let src = Source::connect(source).await?;
    let mut total_rows = 0u64;
    let mut total_secs = 0f64;
    if let Some(unknown) = opts.areas.iter().find(|a| config.area(a).is_none()) {
        anyhow::bail!("--area {unknown}: no such area in the bench config");
    }
    let chosen = config
        .areas
        .iter()
        .filter(|a| opts.areas.is_empty() || opts.areas.contains(&a.id));
    for area in chosen {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        // Rounds of a load, then PostgreSQL's own binary COPY of the
        // same query (warm cache); the fastest of each counts. Taking turns
        // spreads this shared machine's swings over both. The loads run as
        // `udstil load` runs them, without recording in the state database
        // or indexing persons afterwards (neither counts in a load's time).
        // The COPY's columns are read after the first load, not before it:
        // with this information_schema query on the pool just before it, a
        // first round of joblog at 1M citizens took 4.9-5.2 s against
        // 4.0-4.2 s without (three pairs; cause not found), and `udstil
        // load` in a new process, which does not run it first, 3.9-4.2 s.
        let mut columns = None;
        let mut best: Option<udstil::load::LoadReport> = None;
        let mut copy_rate: Option<f64> = None;
        // CPU seconds (udstil, PostgreSQL, idle) of the fastest load and COPY.
        let (mut load_cpu, mut copy_cpu) = ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0));
        let spent = |a: (f64, f64, f64), b: (f64, f64, f64)| (b.0 - a.0, b.1 - a.1, b.2 - a.2);
        for _ in 0..opts.rounds {
            // Earlier writes (the generator, the previous load's files) are
            // flushed first, so their writeback does not slow this load's sync.
            let _ = std::process::Command::new("sync").status();
            let c0 = cpu_seconds();
            let held = udstil::load::lock_area(&config.storage_root, area)?;
            let r = udstil::load::full_load(&config, &src, area, &held, None).await?;
            let c1 = cpu_seconds();
            let columns = match &columns {
                Some(c) => c,
                None => columns.insert(src.published_columns(area).await?),
            };
            let c1b = cpu_seconds();
            let t = std::time::Instant::now();
            if src.copy_full_extract(area, columns).await?.is_some() {
                let c2 = cpu_seconds();
                let rate = r.rows_read as f64 / t.elapsed().as_secs_f64();
                if copy_rate.is_none_or(|c| rate > c) {
                    copy_rate = Some(rate);
                    copy_cpu = spent(c1b, c2);
                }
            }
            if best.as_ref().is_none_or(|b| r.elapsed < b.elapsed) {
                best = Some(r);
                load_cpu = spent(c0, c1);
            }
        }
        let r = best.expect("at least one round ran");
        let secs = r.elapsed.as_secs_f64();
        let peak = peak_rss() as f64 / (1 << 20) as f64;
        total_rows += r.rows_read;
        total_secs += secs;
        out!(
            "{:<30} {:>10} {:>10.2} {:>12.0} {:>14.1} {:>12} {:>8}",
            r.area,
            r.rows_read,
            secs,
            r.rows_read as f64 / secs,
            peak,
            copy_rate.map_or("-".into(), |c| format!("{c:.0}")),
            copy_rate.map_or("-".into(), |c| format!(
                "{:.2}",
                (r.rows_read as f64 / secs) / c
            )),
        );
        out!(
            "{:<30} CPU seconds: load udstil {:.2} + PostgreSQL {:.2}, idle {:.2}; COPY udstil {:.2} + PostgreSQL {:.2}, idle {:.2}",
            "",
            load_cpu.0,
            load_cpu.1,
            load_cpu.2,
            copy_cpu.0,
            copy_cpu.1,
            copy_cpu.2
        );
    }
    out!(
        "{:<30} {:>10} {:>10.2} {:>12.0}   (source {}, baseline RSS {:.1} MiB)",
        "all areas",
        total_rows,
        total_secs,
        total_rows as f64 / total_secs,
        udstil::source::redact(source),
        base as f64 / (1 << 20) as f64
    );
    if delta_changes > 0 {
        let t = std::time::Instant::now();
        let m = udstil::fixtures::mutate(&src, delta_changes, 7).await?;
        let applied = t.elapsed().as_secs_f64();
        let joblog = config
            .area("joblog")
            .context("the bench config has joblog")?;
        let hwm = src.high_water_mark(joblog).await?;
        let _ = std::process::Command::new("sync").status();
        // Like the full loads: no state recording and no person indexing (which
        // would first index every full load above).
        let held = udstil::load::lock_area(&config.storage_root, joblog)?;
        let r = udstil::load::delta_load(&config, &src, joblog, &held, None).await?;
        out!(
            "delta of joblog after {delta_changes} changes ({} journal rows in all areas, applied in {applied:.0}s): {} journal rows read, {} rows written, {:.3}s (watermark {} -> {hwm})",
            m.journal_rows,
            r.rows_read,
            r.rows_written,
            r.elapsed.as_secs_f64(),
            r.watermark_from.unwrap_or_default()
        );
    }
    src.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Counts as `a, b, c` for the operator (no debug formatting in output).
fn list(counts: &[u64]) -> String {
    counts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
