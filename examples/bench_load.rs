//! The load benchmark: generates a synthetic DFDG, then per data area takes
//! turns between a full load and PostgreSQL's own binary `COPY` of the same
//! extract query, and prints rows/s, peak memory, the ratio of the two and
//! the CPU seconds of udstil, of PostgreSQL and of the idle cores; then it
//! times one joblog delta. Linux only (it reads `/proc`). See BENCHMARKS.md.
//!
//!     cargo run --release --example bench_load -- --source postgres://postgres@127.0.0.1:5432/bench

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use futures::TryStreamExt;
use sqlx::{Connection, PgConnection};
use udstil::app;
use udstil::config::{Area, Config};
use udstil::source::{Column, Source};

#[derive(Parser)]
#[command(about = "Generate a DFDG and time full loads of every area against PostgreSQL's COPY")]
struct Options {
    /// sqlite://FILE or postgres://... (COPY only on PostgreSQL); its tables are dropped first.
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
}

fn main() -> anyhow::Result<()> {
    // As the daemon does (see its `one_malloc_arena`): memory figures depend on it.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let opts = Options::parse();
    let rt = tokio::runtime::Runtime::new()?;
    // On the runtime's workers, as the daemon's loads run.
    rt.block_on(async { tokio::spawn(bench_load(opts)).await })?
}

/// PostgreSQL's own `COPY (query) TO STDOUT (FORMAT binary)` of the full
/// extract, drained through sqlx; the bytes received.
async fn copy_full_extract(
    conn: &mut PgConnection,
    area: &Area,
    columns: &[Column],
) -> anyhow::Result<u64> {
    let statement = format!(
        "COPY ({}) TO STDOUT (FORMAT binary)",
        udstil::source::full_extract_sql(area, columns)
    );
    let mut stream = conn.copy_out_raw(&statement).await?;
    let mut bytes = 0u64;
    while let Some(chunk) = stream.try_next().await? {
        bytes += chunk.len() as u64;
    }
    Ok(bytes)
}

/// Applies `delta_changes` changes and times one delta load of joblog.
async fn bench_delta(config: &Config, src: &Source, delta_changes: u64) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let m = udstil::fixtures::mutate(src, delta_changes, 7).await?;
    let applied = t.elapsed().as_secs_f64();
    let joblog = config
        .area("joblog")
        .context("the bench config has joblog")?;
    let hwm = src.high_water_mark(joblog).await?;
    let _ = std::process::Command::new("sync").status();
    // Like the full loads: no state recording and no person indexing (which
    // would first index every full load above).
    let held = udstil::load::lock_area(&config.store(), joblog)?;
    let r = udstil::load::delta_load(config, src, joblog, &held, None).await?;
    println!(
        "delta of joblog after {delta_changes} changes ({} journal rows in all areas, applied in {applied:.0}s): {} journal rows read, {} rows written, {:.3}s (watermark {} -> {hwm})",
        m.journal_rows,
        r.rows_read,
        r.rows_written,
        r.elapsed.as_secs_f64(),
        r.watermark_from.unwrap_or_default()
    );
    Ok(())
}

/// CPU seconds: udstil, PostgreSQL, the idle cores.
type Cpu = (f64, f64, f64);

/// Rounds of a full load of `area` and of the COPY baseline, taking turns:
/// the fastest load and the best COPY rate, with the CPU seconds of each.
async fn bench_area(
    config: &Config,
    src: &Source,
    mut copy_conn: Option<&mut PgConnection>,
    area: &Area,
    rounds: u32,
) -> anyhow::Result<(udstil::load::LoadReport, Option<f64>, Cpu, Cpu)> {
    // Rounds of a load, then PostgreSQL's own binary COPY of the
    // same query (warm cache); the fastest of each counts. Taking turns
    // spreads this shared machine's swings over both. The loads run as
    // `udstil load` runs them, without recording in the state database
    // or indexing persons afterwards (neither counts in a load's time).
    // The COPY's columns are read after the first load, not before it:
    // with this information_schema query on the pool just before it, a
    // first round of joblog was markedly slower (cause not found), and
    // `udstil load` in a new process does not run it first either.
    let mut columns = None;
    let mut best: Option<udstil::load::LoadReport> = None;
    let mut copy_rate: Option<f64> = None;
    // CPU seconds (udstil, PostgreSQL, idle) of the fastest load and COPY.
    let (mut load_cpu, mut copy_cpu) = ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0));
    let spent = |a: (f64, f64, f64), b: (f64, f64, f64)| (b.0 - a.0, b.1 - a.1, b.2 - a.2);
    for _ in 0..rounds {
        // Earlier writes (the generator, the previous load's files) are
        // flushed first, so their writeback does not slow this load's sync.
        let _ = std::process::Command::new("sync").status();
        let c0 = cpu_seconds();
        let held = udstil::load::lock_area(&config.store(), area)?;
        let r = udstil::load::full_load(config, src, area, &held, None).await?;
        let c1 = cpu_seconds();
        let columns = match &columns {
            Some(c) => c,
            None => columns.insert(src.published_columns(area).await?),
        };
        let c1b = cpu_seconds();
        let t = std::time::Instant::now();
        if let Some(conn) = copy_conn.as_deref_mut() {
            copy_full_extract(conn, area, columns).await?;
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
    Ok((r, copy_rate, load_cpu, copy_cpu))
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

/// A fresh work folder holding the demo config pointed at `source`, with
/// its announcements and placeholder supplier keys; returns the config's path.
fn work_folder(work: &std::path::Path, source: &str) -> anyhow::Result<std::path::PathBuf> {
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
    std::fs::write(
        work.join("announcements.toml"),
        include_str!("../config/announcements.toml"),
    )?;
    Ok(cfg_path)
}

async fn bench_load(opts: Options) -> anyhow::Result<()> {
    let Options {
        ref source,
        citizens,
        ref work_dir,
        no_generate,
        delta_changes,
        ..
    } = opts;
    let source = source.as_str();
    let cfg_path = work_folder(work_dir, source)?;
    if !no_generate {
        let t = std::time::Instant::now();
        let s = Source::create(source).await?;
        let summary = udstil::fixtures::generate(&s, citizens, 1).await?;
        s.close().await;
        println!("{summary}, in {:.0}s", t.elapsed().as_secs_f64());
    }
    let config = app::check_config(&cfg_path)
        .await
        .map_err(|e| anyhow::anyhow!("the bench config has errors:\n{e}"))?;
    // Reset the peak-RSS counter so generation does not count (Linux: clear_refs 5).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let base = peak_rss();
    println!(
        "{:<30} {:>10} {:>10} {:>12} {:>14} {:>12} {:>8}",
        "area", "rows", "seconds", "rows/s", "peak RSS MiB", "COPY rows/s", "ratio"
    );
    let src = Source::connect(source).await?;
    // The baseline's own connection; no COPY on SQLite.
    let mut copy_conn = match source.starts_with("postgres") {
        true => Some(PgConnection::connect(source).await?),
        false => None,
    };
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
        let (r, copy_rate, load_cpu, copy_cpu) =
            bench_area(&config, &src, copy_conn.as_mut(), area, opts.rounds).await?;
        let secs = r.elapsed.as_secs_f64();
        let peak = peak_rss() as f64 / (1 << 20) as f64;
        total_rows += r.rows_read;
        total_secs += secs;
        println!(
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
        println!(
            "{:<30} CPU seconds: load udstil {:.2} + PostgreSQL {:.2}, idle {:.2}; COPY udstil {:.2} + PostgreSQL {:.2}, idle {:.2}",
            "", load_cpu.0, load_cpu.1, load_cpu.2, copy_cpu.0, copy_cpu.1, copy_cpu.2
        );
    }
    println!(
        "{:<30} {:>10} {:>10.2} {:>12.0}   (source {}, baseline RSS {:.1} MiB)",
        "all areas",
        total_rows,
        total_secs,
        total_rows as f64 / total_secs,
        udstil::source::redact(source),
        base as f64 / (1 << 20) as f64
    );
    if delta_changes > 0 {
        bench_delta(&config, &src, delta_changes).await?;
    }
    src.close().await;
    if let Some(conn) = copy_conn {
        conn.close().await?;
    }
    Ok(())
}
