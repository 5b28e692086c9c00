//! The `udstil` command: parses the command line, sets up logging, calls `app`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use udstil::app;
use udstil::config::report;
use udstil::source::Source;
use udstil::tree::LoadKind;

mod cli;
use cli::*;

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

fn main() -> ExitCode {
    one_malloc_arena();
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "udstil=info,sqlx=error,warn".into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        // Colour only on a terminal; journald and log files get plain text.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    // The command runs as a task on the runtime's workers, as the daemon's
    // scheduled loads do, not in `block_on` on this thread: this thread never
    // polls the sockets itself, so each wait for PostgreSQL would cost two
    // thread switches.
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
/// grew: a load's peak memory was much higher with glibc's default arenas,
/// and no faster. Small allocations still come from each thread's own cache.
/// Set before any thread starts.
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
        } => config_check(&config).await,
        Command::Config {
            command: ConfigCommand::Reference,
        } => {
            out!("{}", udstil::config::reference::reference().trim_end());
            Ok(ExitCode::SUCCESS)
        }
        Command::Access { command } => access(command),
        Command::Status { command } => {
            let (config, change) = command.into_change()?;
            let c = config_file(&config)?;
            let done = app::change_status(&c, &change).await?;
            out!("{done}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Ledger { args } => {
            let c = config_file(&args.config)?;
            let (filter, format) = args.filter()?;
            let text = format.render(&app::ledger(&c, &filter).await?)?;
            out!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command } => audit(command).await,
        Command::Serve { config } => match app::serve(&config).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(app::AppError::Config(errors)) => {
                anyhow::bail!("refusing to start, the config has errors:\n{errors}")
            }
            Err(e) => Err(e.into()),
        },
        Command::Load {
            config,
            area,
            full: _,
            delta,
        } => load(&config, area.as_deref(), delta).await,
        Command::Fixtures { command } => fixtures(command).await,
        Command::Demo {
            listen,
            data_dir,
            citizens,
        } => demo(listen, &data_dir, citizens).await,
    }
}

async fn config_check(config: &Path) -> anyhow::Result<ExitCode> {
    match app::check_config(config).await {
        Ok(c) => {
            let agreements = &c.agreements;
            out!(
                "{}: ok ({} suppliers, {} agreements, {} data areas)",
                config.display(),
                c.suppliers.len(),
                agreements.connection.len()
                    + agreements.data_processing.len()
                    + agreements.cooperation.len(),
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
    }
}

async fn load(config: &Path, area: Option<&str>, delta: bool) -> anyhow::Result<ExitCode> {
    let c = checked(config).await?;
    let kind = if delta {
        LoadKind::Delta
    } else {
        LoadKind::Full
    };
    let progress = udstil::load::Progress::default();
    let bar = progress_bar(progress.clone(), kind);
    let request = app::LoadRequest {
        area,
        progress: Some(progress),
        ..app::LoadRequest::manual(kind, None)
    };
    let result = app::run_loads(&c, request).await;
    if let Some((bar, ticker)) = bar {
        ticker.abort();
        bar.finish_and_clear();
    }
    for r in result? {
        out!("{r}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn fixtures(command: FixturesCommand) -> anyhow::Result<ExitCode> {
    match command {
        FixturesCommand::Generate {
            source,
            citizens,
            seed,
        } => {
            let s = Source::create(&source).await?;
            let summary = udstil::fixtures::generate(&s, citizens, seed).await?;
            s.close().await;
            out!("{summary}");
        }
        FixturesCommand::Mutate {
            source,
            changes,
            seed,
        } => {
            let s = Source::connect(&source).await?;
            let m = udstil::fixtures::mutate(&s, changes, seed).await?;
            s.close().await;
            out!("{m}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads a config and refuses to go on with any error, printing them all.
async fn checked(path: &Path) -> anyhow::Result<udstil::config::Config> {
    app::check_config(path)
        .await
        .map_err(|e| anyhow::anyhow!("refusing to start, the config has errors:\n{e}"))
}

/// A config file for the commands that do not load (no column check).
fn config_file(path: &Path) -> anyhow::Result<udstil::config::Config> {
    udstil::config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
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
            let c = config_file(&config)?;
            let at = parse_at(at.as_deref())?;
            let authority = parse_authority(authority)?;
            let rows = report::access_rows(&c, Some(&supplier), authority, area.as_deref(), at)?;
            out!("{}", report::explain_text(&supplier, at, &rows));
            Ok(ExitCode::SUCCESS)
        }
        AccessCommand::Changes {
            config,
            from,
            to,
            format,
        } => {
            let c = config_file(&config)?;
            let from = match from {
                Some(t) => parse_time("--from", &t)?,
                None => chrono::Utc::now(),
            };
            let to = parse_until(&to)?;
            anyhow::ensure!(to > from, "--to must be after --from");
            let changes = report::planned_changes(&c, from, to);
            match format {
                ChangesFormat::Json => out!("{}", serde_json::to_string_pretty(&changes)?),
                ChangesFormat::Text => out!("{}", report::changes_text(from, to, &changes)),
            }
            Ok(ExitCode::SUCCESS)
        }
        AccessCommand::Matrix { config, at, format } => {
            let c = config_file(&config)?;
            let at = parse_at(at.as_deref())?;
            let rows = report::access_rows(&c, None, None, None, at)?;
            match format {
                MatrixFormat::Json => out!("{}", serde_json::to_string_pretty(&rows)?),
                MatrixFormat::Csv => out!("{}", report::matrix_csv(&rows)),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn audit(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify { config } => {
            let c = config_file(&config)?;
            match app::audit_verify(&c).await {
                Ok(summary) => {
                    out!("{summary}");
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
            filter,
            format,
        } => {
            let c = config_file(&config)?;
            let rows = app::audit_query(&c, &filter.filter()?).await?;
            print_nonempty(&format.render(&rows)?);
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Person {
            config,
            cpr,
            format,
        } => {
            let c = config_file(&config)?;
            let Some(cpr) = udstil::audit::parse_cpr(&cpr) else {
                anyhow::bail!("the CPR number must be 10 digits (DDMMYYSSSS or DDMMYY-SSSS)");
            };
            let rows = app::audit_person(&c, &cpr).await?;
            if matches!(format, AuditFormat::Text) && rows.is_empty() {
                out!("no downloads of files holding this person are recorded");
            }
            print_nonempty(&format.render(&rows)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints `text` unless it is empty (a query without rows prints nothing).
fn print_nonempty(text: &str) {
    if !text.is_empty() {
        out!("{text}");
    }
}

async fn demo(listen: SocketAddr, dir: &Path, citizens: u64) -> anyhow::Result<ExitCode> {
    let demo = app::demo(listen, dir, citizens).await?;
    out!("{}\n{}", demo.loaded(), demo.welcome);
    app::serve_until_stopped(demo.server).await?;
    Ok(ExitCode::SUCCESS)
}
