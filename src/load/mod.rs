//! Builds loads: extract from the source, route each row to its authorities,
//! write Parquet (zstd) per authority, and publish every authority's load
//! folder atomically (staging folder, fsync, rename; MANIFEST.json is written
//! last inside the staging folder, so a published folder is always whole).

pub mod delta;
pub mod dictionary;
pub mod legacy;
pub mod plan;
pub mod retention;
pub mod version;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::authority::AuthorityId;
use crate::config::{Area, Config};
use crate::source::{Column, Extracted, Source, SourceError};
use crate::tree::store::Staged;
use crate::tree::{self, LoadId, LoadKind, Store};
pub use writer::LEGACY_OMITTED;
use writer::{AuthorityOutput, Fanout, Written};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("area {area}: {source}")]
    Source {
        area: String,
        source: Box<SourceError>,
    },
    #[error(
        "area {area}: key or routing column {column} is not published (excluded, or the draft flag)"
    )]
    ColumnNotPublished { area: String, column: String },
    #[error("area {area}: routing column {column} must be text (3-digit codes)")]
    RouteNotText { area: String, column: String },
    #[error("area {area}: writing {path}: {source}")]
    Io {
        area: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("area {area}: writing Parquet: {source}")]
    Parquet {
        area: String,
        source: parquet::errors::ParquetError,
    },
    #[error(
        "area {area}: no full load of version {version} is published yet; run a full load first"
    )]
    NoFullLoad { area: String, version: u32 },
    #[error(
        "area {area}: the source's columns differ from version {version}'s ({detail}); a format change needs a new version: raise the area's version in the config"
    )]
    SchemaChanged {
        area: String,
        version: u32,
        detail: String,
    },
    #[error("area {area}: another load of this area is running")]
    Busy { area: String },
    #[error("area {area}: the writer thread failed: {message}")]
    Writer { area: String, message: String },
}

/// MANIFEST.json of one authority's load.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub load_id: String,
    pub area: String,
    pub version: u32,
    pub kind: LoadKind,
    pub authority: String,
    /// `test` for a test load (in `<area>.test/`); absent for production.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    pub key: Vec<String>,
    /// Deltas: the watermark of the previous load (exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_from: Option<i64>,
    pub watermark_to: i64,
    /// Deltas: this authority's previous load in the area version, so a gap shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_load_id: Option<String>,
    pub created_at: String,
    pub rows: u64,
    pub schema: Vec<SchemaField>,
    pub files: Vec<FileEntry>,
    /// Rows the legacy text file leaves out because a value holds its
    /// separator or a line break; they are in the Parquet files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub legacy_omitted: Vec<Omitted>,
}

/// A row left out of the legacy text: its key and the column at fault, never a value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Omitted {
    pub key: String,
    pub column: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SchemaField {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub rows: u64,
    pub sha256: String,
}

/// Rows read from the source so far, for a progress display.
pub type Progress = std::sync::Arc<std::sync::atomic::AtomicU64>;

/// What a load did, for the operator (never row contents).
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub area: String,
    pub kind: LoadKind,
    pub load_id: LoadId,
    pub watermark_from: Option<i64>,
    pub watermark_to: i64,
    pub rows_read: u64,
    /// Rows written, counting a row once per authority it went to.
    pub rows_written: u64,
    /// Rows (or row copies) not delivered, by reason.
    pub withheld: BTreeMap<String, u64>,
    pub authorities: usize,
    pub files: usize,
    pub bytes: u64,
    /// Old load folders removed by retention afterwards.
    pub removed: usize,
    pub elapsed: Duration,
    /// The first full load of a new version: what changed from the
    /// previous one (as appended to `CHANGES.json`).
    pub new_version: Option<version::SchemaChange>,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let window = match self.watermark_from {
            Some(from) => format!("watermark {from} -> {}", self.watermark_to),
            None => format!("watermark {}", self.watermark_to),
        };
        write!(
            f,
            "{}: {} load {} published: {} rows read, {} rows written to {} authorities, {} files, {} bytes, {window}, {:.1}s",
            self.area,
            self.kind.as_str(),
            self.load_id,
            self.rows_read,
            self.rows_written,
            self.authorities,
            self.files,
            self.bytes,
            self.elapsed.as_secs_f64()
        )
    }
}

/// The published columns of an area, checked to carry its key and routing.
async fn checked_columns(source: &Source, area: &Area) -> Result<Vec<Column>, LoadError> {
    let columns = source
        .published_columns(area)
        .await
        .map_err(|source| LoadError::Source {
            area: area.id.clone(),
            source: Box::new(source),
        })?;
    let index_of = |name: &str| columns.iter().position(|c| c.name == name);
    for k in area
        .key
        .iter()
        .chain(&area.route_kommune)
        .chain(&area.route_akasse)
    {
        if index_of(k).is_none() {
            return Err(LoadError::ColumnNotPublished {
                area: area.id.clone(),
                column: k.clone(),
            });
        }
    }
    for c in area.route_kommune.iter().chain(&area.route_akasse) {
        if columns[index_of(c).expect("checked above")].ty != crate::source::ColumnType::Text {
            return Err(LoadError::RouteNotText {
                area: area.id.clone(),
                column: c.clone(),
            });
        }
    }
    Ok(columns)
}

/// The legacy file's header values, if the area asks for that output.
fn legacy_spec(
    area: &Area,
    load_type: char,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<legacy::LegacySpec> {
    let (datapakke, table) = area.legacy.clone()?;
    let day = |t: DateTime<Utc>| t.with_timezone(&chrono_tz::Europe::Copenhagen).date_naive();
    Some(legacy::LegacySpec {
        datapakke,
        table,
        run_date: day(now),
        period_start: day(since),
        period_end: day(now),
        load_type,
    })
}

/// What a load is about to publish, beyond the files.
struct Publication<'a> {
    area: &'a Area,
    kind: LoadKind,
    load_id: LoadId,
    created_at: DateTime<Utc>,
    schema: Vec<SchemaField>,
    /// The same schema, for the zero-row file of an authority without rows.
    arrow: arrow_schema::SchemaRef,
    watermark_from: Option<i64>,
    watermark_to: i64,
    /// Per authority, its previous load in this area version (deltas only).
    previous: BTreeMap<AuthorityId, LoadId>,
}

fn schema_fields(schema: &arrow_schema::Schema) -> Vec<SchemaField> {
    schema
        .fields()
        .iter()
        .map(|f| SchemaField {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
            nullable: f.is_nullable(),
        })
        .collect()
}

/// Held for the whole of one load of an area (see `Store::lock`).
pub struct AreaLock {
    _lock: tree::store::AreaLock,
    area: String,
}

/// Takes the area's lock (or fails with `Busy` at once), then finishes or
/// discards what a crashed load left in staging: a load whose folders were
/// partly renamed into the tree is completed (the tree is the truth: it was
/// published), any other is removed. A load is run, and recorded in the
/// state database, while its caller holds this lock, so no one else records
/// it as one published before a crash.
pub fn lock_area(store: &Store, area: &Area) -> Result<AreaLock, LoadError> {
    let io = |source| LoadError::Io {
        area: area.id.clone(),
        path: store.root().to_path_buf(),
        source,
    };
    let Some(lock) = store.lock(&area.id).map_err(io)? else {
        return Err(LoadError::Busy {
            area: area.id.clone(),
        });
    };
    for staged in store.staged(&area.id).map_err(io)? {
        let (completed, discarded) = recover(store, area, &staged).map_err(io)?;
        tracing::warn!(area = %area.id, load = %staged.id, completed, discarded, "recovered an interrupted load");
        store.discard(&staged).map_err(io)?;
    }
    // Folders a crash inside retention left behind, already hidden by their name.
    store.remove_leftovers(&area.id).map_err(io)?;
    Ok(AreaLock {
        _lock: lock,
        area: area.id.clone(),
    })
}

/// Staged authority folders of an interrupted load: moved into the tree if
/// any authority already has the load, else left to be discarded.
fn recover(store: &Store, area: &Area, staged: &Staged) -> std::io::Result<(usize, usize)> {
    let mut ready = Vec::new();
    for authority in staged.authorities()? {
        let Ok(bytes) = staged.read(authority, "MANIFEST.json") else {
            continue;
        };
        let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes) else {
            continue;
        };
        ready.push(tree::store::Load {
            authority,
            area: area.id.clone(),
            version: manifest.version,
            kind: manifest.kind,
            id: staged.id,
        });
    }
    let published = store
        .loads(&area.id)?
        .iter()
        .any(|l| l.id == staged.id && l.version == area.version);
    if !published {
        return Ok((0, ready.len()));
    }
    let mut done = 0;
    for load in ready {
        if !store.exists(&load) {
            store.publish(staged, &load)?;
            done += 1;
        }
    }
    store.sync()?;
    Ok((done, 0))
}

fn new_load(store: &Store, area: &Area) -> Result<Staged, LoadError> {
    let io = |source| LoadError::Io {
        area: area.id.clone(),
        path: store.root().to_path_buf(),
        source,
    };
    let id = LoadId {
        seq: next_seq(store, &area.id).map_err(io)?,
        at: Utc::now().trunc_subsecs(0),
    };
    store.stage(&area.id, id).map_err(io)
}

/// Runs one full load of `area` now and publishes it.
pub async fn full_load(
    config: &Config,
    source: &Source,
    area: &Area,
    held: &AreaLock,
    progress: Option<&Progress>,
) -> Result<LoadReport, LoadError> {
    assert_eq!(held.area, area.id, "a load runs under its own area's lock");
    let started = Instant::now();
    let store = config.store();
    let columns = checked_columns(source, area).await?;
    let arrow = dictionary::describe(&crate::source::arrow_schema(&columns), area);
    let schema = schema_fields(&arrow);
    check_schema(&store, area, &schema)?;
    let first_of_version = matches!(current_schema(&store, area), Ok(None));
    let staging = new_load(&store, area)?;
    let load_id = staging.id;
    let fanout = Fanout::new(staging.dir().to_path_buf(), area, &columns)
        .with_legacy(legacy_spec(area, 'F', load_id.at, load_id.at));
    let mut router = fanout.router();
    let result = pipeline(&store, area, &staging, fanout, progress, |tx| {
        source.full_extract(area, &columns, &mut router, tx)
    })
    .await;
    let (snapshot, (mut outputs, mut withheld)) = result?;
    for (reason, n) in router.withheld {
        *withheld.entry(reason).or_default() += n;
    }
    let rows = snapshot.rows;
    // Every authority party to a connection agreement gets a load, empty or
    // not, so "you have no rows" and "not delivered" differ.
    for c in &config.agreements.connection {
        if area.routes_to(c.authority.kind) {
            outputs.entry(c.authority).or_default();
        }
    }
    let schema_for_changes = schema.clone();
    let plan = Publication {
        area,
        kind: LoadKind::Full,
        load_id,
        created_at: load_id.at,
        schema,
        arrow,
        watermark_from: None,
        watermark_to: snapshot.watermark,
        previous: BTreeMap::new(),
    };
    let mut report = finish(&store, &staging, plan, rows, outputs, withheld, started)?;
    if first_of_version {
        match record_version_change(&store, area, load_id, &schema_for_changes) {
            Ok(change) => report.new_version = change,
            Err(e) => tracing::warn!(area = %area.id, error = %e, "could not write CHANGES.json"),
        }
    }
    Ok(report)
}

/// Runs one delta load of `area` now: every journal entry since the
/// published watermark, up to the source's high-water mark at the start.
pub async fn delta_load(
    config: &Config,
    source: &Source,
    area: &Area,
    held: &AreaLock,
    progress: Option<&Progress>,
) -> Result<LoadReport, LoadError> {
    assert_eq!(held.area, area.id, "a load runs under its own area's lock");
    let started = Instant::now();
    let store = config.store();
    let serr = |source| LoadError::Source {
        area: area.id.clone(),
        source: Box::new(source),
    };
    let previous = latest_loads(&store, area).map_err(|source| LoadError::Io {
        area: area.id.clone(),
        path: store.root().to_path_buf(),
        source,
    })?;
    let Some(from) = previous.values().map(|(_, wm)| *wm).max() else {
        return Err(LoadError::NoFullLoad {
            area: area.id.clone(),
            version: area.version,
        });
    };
    let columns = checked_columns(source, area).await?;
    let to = source.high_water_mark(area).await.map_err(serr)?;
    let prior = source.prior_rows(area, from, to).await.map_err(serr)?;
    let state = prior
        .into_iter()
        .map(|p| {
            let op = delta::Op::parse(&p.op).unwrap_or(delta::Op::Update);
            let targets = plan::route(p.kommune.as_deref(), p.akasse.as_deref()).targets;
            (p.key, delta::published_to(op, p.draft, &targets))
        })
        .collect();
    let staging = new_load(&store, area)?;
    let load_id = staging.id;
    let since = previous
        .values()
        .map(|(id, _)| id.at)
        .max()
        .unwrap_or(load_id.at);
    let fanout = Fanout::delta(staging.dir().to_path_buf(), area, &columns, state)
        .with_legacy(legacy_spec(area, 'D', since, load_id.at));
    let arrow = dictionary::describe(&writer::delta_schema(&columns), area);
    let schema = schema_fields(&arrow);
    check_schema(&store, area, &schema)?;
    let result = pipeline(&store, area, &staging, fanout, progress, |tx| {
        source.delta_extract(area, &columns, from, to, tx)
    })
    .await;
    let (rows, (mut outputs, withheld)) = result?;
    // Every authority that holds this area gets the delta, empty or not.
    for authority in previous.keys() {
        outputs.entry(*authority).or_default();
    }
    let plan = Publication {
        area,
        kind: LoadKind::Delta,
        load_id,
        created_at: load_id.at,
        schema,
        arrow,
        watermark_from: Some(from),
        watermark_to: to,
        previous: previous.into_iter().map(|(a, (id, _))| (a, id)).collect(),
    };
    finish(&store, &staging, plan, rows, outputs, withheld, started)
}

/// Extract and write concurrently: the extract sends batches over a small
/// bounded channel, so memory stays flat, to the writer on a blocking thread.
async fn pipeline<T, F, Fut>(
    store: &Store,
    area: &Area,
    staging: &Staged,
    mut fanout: Fanout,
    progress: Option<&Progress>,
    extract: F,
) -> Result<(T, Written), LoadError>
where
    F: FnOnce(mpsc::Sender<Extracted>) -> Fut,
    Fut: std::future::Future<Output = Result<T, SourceError>>,
{
    let (tx, mut rx) = mpsc::channel(4);
    let progress = progress.cloned();
    let writer = tokio::task::spawn_blocking(move || {
        while let Some(item) = rx.blocking_recv() {
            fanout.take(&item)?;
            if let Some(p) = &progress {
                let read = match &item {
                    Extracted::Rows(batch) => batch.num_rows() as u64,
                    Extracted::Part { read, .. } => *read,
                };
                p.fetch_add(read, std::sync::atomic::Ordering::Relaxed);
            }
        }
        fanout.finish()
    });
    let extracted = extract(tx).await;
    let result = match writer.await {
        Err(e) => Err(LoadError::Writer {
            area: area.id.clone(),
            message: e.to_string(),
        }),
        // The writer's own error explains a dropped channel better than the extract's.
        Ok(Err(e)) => Err(e),
        Ok(Ok(written)) => extracted
            .map(|x| (x, written))
            .map_err(|source| LoadError::Source {
                area: area.id.clone(),
                source: Box::new(source),
            }),
    };
    if result.is_err() {
        // Nothing of a failed load is kept.
        let _ = store.discard(staging);
    }
    result
}

fn finish(
    store: &Store,
    staging: &Staged,
    plan: Publication<'_>,
    rows_read: u64,
    outputs: BTreeMap<AuthorityId, AuthorityOutput>,
    withheld: BTreeMap<String, u64>,
    started: Instant,
) -> Result<LoadReport, LoadError> {
    let mut report = LoadReport {
        area: plan.area.id.clone(),
        kind: plan.kind,
        load_id: plan.load_id,
        watermark_from: plan.watermark_from,
        watermark_to: plan.watermark_to,
        rows_read,
        rows_written: 0,
        withheld,
        authorities: outputs.len(),
        files: 0,
        bytes: 0,
        removed: 0,
        elapsed: Duration::ZERO,
        new_version: None,
    };
    let written = started.elapsed();
    let published = publish_all(store, staging, &plan, outputs, &mut report);
    let _ = store.discard(staging);
    published?;
    let published_at = started.elapsed();
    // Documentation beside the loads: a failure to write it is logged and
    // retried by the next load; the load stands.
    if let Err(e) = publish_dictionary(store, plan.area, &plan.schema) {
        tracing::warn!(area = %plan.area.id, error = %e, "could not write the data dictionary");
    }
    // Retention runs after the new load is in place; a failure here leaves
    // extra loads behind, never fewer, so it is logged and not fatal.
    match apply_retention(store, plan.area) {
        Ok(n) => report.removed = n,
        Err(e) => tracing::warn!(area = %plan.area.id, error = %e, "retention failed"),
    }
    report.elapsed = started.elapsed();
    tracing::debug!(
        area = %plan.area.id,
        written_ms = written.as_millis() as u64,
        published_ms = published_at.as_millis() as u64,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "load phases"
    );
    Ok(report)
}

fn publish_all(
    store: &Store,
    staging: &Staged,
    plan: &Publication<'_>,
    outputs: BTreeMap<AuthorityId, AuthorityOutput>,
    report: &mut LoadReport,
) -> Result<(), LoadError> {
    let area = plan.area;
    let ioerr = |path: &Path| {
        let path = path.to_path_buf();
        let area = area.id.clone();
        move |source| LoadError::Io { area, path, source }
    };
    // Write every manifest first; only then move folders into the tree, so a
    // failure before the renames publishes nothing at all.
    let mut ready = Vec::with_capacity(outputs.len());
    for (authority, mut out) in outputs {
        // A load without rows still has a data file, so every load has a
        // checksum line (`sha256sum -c` fails on an empty SHA256SUMS) and a
        // schema a loader can read.
        if !out.files.iter().any(|f| f.name.ends_with(".parquet")) {
            let dir = tree::store::staged_authority_dir(staging.dir(), authority);
            std::fs::create_dir_all(&dir).map_err(ioerr(&dir))?;
            out.files
                .insert(0, writer::empty_file(&dir, &plan.arrow, &area.id)?);
        }
        let manifest = plan.manifest(authority, out);
        let sums: String = manifest
            .files
            .iter()
            .map(|f| format!("{}  {}\n", f.sha256, f.name))
            .collect();
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        staging
            .write(authority, "SHA256SUMS", sums.as_bytes())
            .and_then(|()| staging.write(authority, "MANIFEST.json", &json))
            .map_err(ioerr(staging.dir()))?;
        report.rows_written += manifest.rows;
        report.files += manifest.files.len();
        report.bytes += manifest.files.iter().map(|f| f.bytes).sum::<u64>();
        ready.push(tree::store::Load {
            authority,
            area: area.id.clone(),
            version: area.version,
            kind: plan.kind,
            id: plan.load_id,
        });
    }
    // Everything staged is made durable before the first rename, as recovery
    // completes a load that any authority already has (`recover`). One sync
    // of the file system here and one after the renames replace an fsync per
    // file and folder (and the encoders have already started writing the
    // data out, `writer::start_writeback`).
    store.sync().map_err(ioerr(staging.dir()))?;
    for load in &ready {
        store.publish(staging, load).map_err(ioerr(store.root()))?;
    }
    store.sync().map_err(ioerr(store.root()))
}

impl Publication<'_> {
    /// One authority's MANIFEST.json, given what was written for it.
    fn manifest(&self, authority: AuthorityId, out: AuthorityOutput) -> Manifest {
        let area = self.area;
        Manifest {
            load_id: self.load_id.to_string(),
            area: area.id.clone(),
            version: area.version,
            kind: self.kind,
            authority: authority.to_string(),
            stage: area.is_test().then(|| "test".to_string()),
            key: area.key.clone(),
            watermark_from: self.watermark_from,
            watermark_to: self.watermark_to,
            previous_load_id: self.previous.get(&authority).map(|id| id.to_string()),
            created_at: self.created_at.to_rfc3339(),
            // Rows of the data: the legacy text file repeats them.
            rows: out
                .files
                .iter()
                .filter(|f| f.name.ends_with(".parquet"))
                .map(|f| f.rows)
                .sum(),
            schema: self.schema.clone(),
            files: out.files,
            legacy_omitted: out.legacy_omitted,
        }
    }
}

/// Removes, for every authority, the loads of `area` that retention no longer
/// keeps (see `retention`). A client already reading one of their files
/// keeps its open file and finishes (see `Store::remove`).
pub fn apply_retention(store: &Store, area: &Area) -> std::io::Result<usize> {
    let mut removed = 0;
    for authority in store.authorities()? {
        let mut loads = Vec::new();
        for version in store.versions(authority, &area.id)? {
            loads.extend(store.loads_of(authority, &area.id, version)?);
        }
        let published: Vec<_> = loads
            .iter()
            .map(|l| retention::Published {
                id: l.id,
                kind: l.kind,
                version: l.version,
            })
            .collect();
        for old in retention::to_remove(&published, area.retention_full_loads) {
            let load = loads
                .iter()
                .find(|l| l.id == old.id && l.version == old.version && l.kind == old.kind)
                .expect("retention picks among the loads it was given");
            store.remove(load)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether a load of `area` (a tree name) was published at or after `tick`:
/// any load for a delta's tick, a full load for a full's. Load ids carry
/// the second their load started, so this reads the tree, the truth.
pub fn published_since(
    store: &Store,
    area: &str,
    kind: LoadKind,
    tick: chrono::DateTime<Utc>,
) -> std::io::Result<bool> {
    Ok(store
        .loads(area)?
        .iter()
        .any(|l| l.id.at >= tick && (kind == LoadKind::Delta || l.kind == LoadKind::Full)))
}

/// Takes every load of `area` (a tree name: an area or its `.test` twin)
/// out of the tree, for every authority, with the area's folder.
pub fn remove_area(store: &Store, area: &str) -> std::io::Result<usize> {
    store.remove_area(area)
}

/// The schema of the area's current version as published (any authority's
/// latest load; all loads of a version share it), or `None` before its first load.
fn current_schema(store: &Store, area: &Area) -> std::io::Result<Option<Vec<SchemaField>>> {
    for authority in store.authorities()? {
        if let Some((_, manifest)) = latest_manifest(store, authority, &area.id, area.version)? {
            return Ok(Some(manifest.schema));
        }
    }
    Ok(None)
}

/// An authority's newest load in one version of an area, with its manifest.
fn latest_manifest(
    store: &Store,
    authority: AuthorityId,
    area: &str,
    version: u32,
) -> std::io::Result<Option<(LoadId, Manifest)>> {
    let Some(latest) = store.loads_of(authority, area, version)?.pop() else {
        return Ok(None);
    };
    let manifest = read_manifest(store, &latest)?;
    Ok(Some((latest.id, manifest)))
}

/// A published load's MANIFEST.json.
pub fn read_manifest(store: &Store, load: &tree::store::Load) -> std::io::Result<Manifest> {
    serde_json::from_slice(&store.read(load, "MANIFEST.json")?).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{load}/MANIFEST.json: {e}"),
        )
    })
}

/// Refuses a load whose columns differ from what this version already
/// published: clients of a version rely on one schema.
fn check_schema(store: &Store, area: &Area, schema: &[SchemaField]) -> Result<(), LoadError> {
    let current = current_schema(store, area).map_err(|source| LoadError::Io {
        area: area.id.clone(),
        path: store.root().to_path_buf(),
        source,
    })?;
    if let Some(old) = current {
        let (added, removed, retyped) = version::diff(&old, schema);
        if !(added.is_empty() && removed.is_empty() && retyped.is_empty()) {
            let names = |v: Vec<version::Column>| {
                v.into_iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
            };
            return Err(LoadError::SchemaChanged {
                area: area.id.clone(),
                version: area.version,
                detail: format!(
                    "added [{}], removed [{}], retyped [{}]",
                    names(added),
                    names(removed),
                    retyped
                        .into_iter()
                        .map(|r| format!("{}: {} -> {}", r.name, r.from, r.to))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// Writes the area's data dictionary (`DICTIONARY.json`, `DICTIONARY.md`)
/// into the current version's folder of every authority holding it, where
/// it differs from what is there (a description edited in the config).
fn publish_dictionary(store: &Store, area: &Area, schema: &[SchemaField]) -> std::io::Result<()> {
    let d = dictionary::dictionary(area, schema);
    let files = [
        (dictionary::JSON, dictionary::json(&d)),
        (dictionary::MARKDOWN, dictionary::markdown(&d).into_bytes()),
    ];
    for authority in store.authorities()? {
        if !store.versions(authority, &area.id)?.contains(&area.version) {
            continue;
        }
        for (name, data) in &files {
            if store
                .read_version_file(authority, &area.id, area.version, name)?
                .as_ref()
                != Some(data)
            {
                store.write_version_file(authority, &area.id, area.version, name, data)?;
            }
        }
    }
    Ok(())
}

/// After the first full load of a new version: per authority, appends what
/// changed since its previous version to `<area>/CHANGES.json`. Returns the
/// change (the first authority's, as they share the schemas) if there was
/// an older version.
fn record_version_change(
    store: &Store,
    area: &Area,
    load_id: LoadId,
    schema: &[SchemaField],
) -> std::io::Result<Option<version::SchemaChange>> {
    const CHANGES: &str = "CHANGES.json";
    let mut first = None;
    for authority in store.authorities()? {
        let older = store
            .versions(authority, &area.id)?
            .into_iter()
            .filter(|v| *v < area.version)
            .max();
        let Some(from_version) = older else { continue };
        let Some((_, old)) = latest_manifest(store, authority, &area.id, from_version)? else {
            continue;
        };
        let (added, removed, retyped) = version::diff(&old.schema, schema);
        let mut changes: Vec<version::SchemaChange> = store
            .read_area_file(authority, &area.id, CHANGES)?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let change = version::SchemaChange {
            from_version,
            to_version: area.version,
            load_id: load_id.to_string(),
            added,
            removed,
            retyped,
        };
        first.get_or_insert_with(|| change.clone());
        changes.push(change);
        let json = serde_json::to_vec_pretty(&changes).expect("serialises");
        store.write_area_file(authority, &area.id, CHANGES, &json)?;
    }
    Ok(first)
}

/// Per authority holding the area's current version: its latest load and
/// that load's watermark, read from the published tree.
pub fn latest_loads(
    store: &Store,
    area: &Area,
) -> std::io::Result<BTreeMap<AuthorityId, (LoadId, i64)>> {
    let mut out = BTreeMap::new();
    for authority in store.authorities()? {
        if let Some((id, manifest)) = latest_manifest(store, authority, &area.id, area.version)? {
            out.insert(authority, (id, manifest.watermark_to));
        }
    }
    Ok(out)
}

/// The next load sequence number of an area: one more than any in the tree.
/// The tree is the truth for what was published.
pub fn next_seq(store: &Store, area: &str) -> std::io::Result<u64> {
    let max = store
        .loads(area)?
        .iter()
        .map(|l| l.id.seq)
        .max()
        .unwrap_or(0);
    Ok(max + 1)
}
