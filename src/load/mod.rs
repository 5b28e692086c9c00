//! Builds loads: extract from the source, route each row to its authorities,
//! write Parquet (zstd) per authority, and publish every authority's load
//! folder atomically (staging folder, fsync, rename; MANIFEST.json is written
//! last inside the staging folder, so a published folder is always whole).

pub mod plan;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::authority::{AuthorityId, AuthorityKind};
use crate::config::{Area, Config};
use crate::source::{Column, Source, SourceError};
use crate::tree::{self, LoadId, LoadKind};
use writer::{AuthorityOutput, Fanout};

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
    #[error("area {area}: the writer thread failed: {message}")]
    Writer { area: String, message: String },
}

/// MANIFEST.json of one authority's load.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub load_id: String,
    pub area: String,
    pub version: u32,
    pub kind: String,
    pub authority: String,
    pub key: Vec<String>,
    pub watermark_to: i64,
    pub created_at: String,
    pub rows: u64,
    pub schema: Vec<SchemaField>,
    pub files: Vec<FileEntry>,
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

/// What a load did, for the operator (never row contents).
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub area: String,
    pub load_id: LoadId,
    pub watermark_to: i64,
    pub rows_read: u64,
    /// Rows written, counting a row once per authority it went to.
    pub rows_written: u64,
    /// Rows (or row copies) not delivered, by reason.
    pub withheld: BTreeMap<String, u64>,
    pub authorities: usize,
    pub files: usize,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Runs one full load of `area` now and publishes it.
pub async fn full_load(
    config: &Config,
    source: &Source,
    area: &Area,
) -> Result<LoadReport, LoadError> {
    let started = Instant::now();
    let serr = |source| LoadError::Source {
        area: area.id.clone(),
        source: Box::new(source),
    };
    let columns = source.published_columns(area).await.map_err(serr)?;
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
        if columns[index_of(c).unwrap()].ty != crate::source::ColumnType::Text {
            return Err(LoadError::RouteNotText {
                area: area.id.clone(),
                column: c.clone(),
            });
        }
    }

    let root = &config.storage_root;
    let ioerr = |path: &Path| {
        let path = path.to_path_buf();
        let area = area.id.clone();
        move |source| LoadError::Io { area, path, source }
    };
    let now = Utc::now().trunc_subsecs(0);
    let load_id = LoadId {
        seq: next_seq(root, &area.id).map_err(ioerr(root))?,
        at: now,
    };
    let staging = root.join(".staging").join(format!("{}-{load_id}", area.id));
    std::fs::create_dir_all(&staging).map_err(ioerr(&staging))?;

    let result = extract_and_write(source, area, &columns, &staging).await;
    let (snapshot, mut outputs, withheld) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    // Every authority party to a connection agreement gets a load, empty or
    // not, so "you have no rows" and "not delivered" differ.
    for c in &config.agreements.connection {
        let routed = match c.authority.kind {
            AuthorityKind::Kommune => area.route_kommune.is_some(),
            AuthorityKind::Akasse => area.route_akasse.is_some(),
        };
        if routed {
            outputs
                .entry(c.authority)
                .or_insert_with(AuthorityOutput::default);
        }
    }

    let mut report = LoadReport {
        area: area.id.clone(),
        load_id,
        watermark_to: snapshot.watermark,
        rows_read: snapshot.rows,
        rows_written: 0,
        withheld,
        authorities: outputs.len(),
        files: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
    };
    let publish = publish_all(
        root,
        &staging,
        area,
        &columns,
        load_id,
        snapshot.watermark,
        now,
        outputs,
        &mut report,
    );
    let _ = std::fs::remove_dir_all(&staging);
    publish?;
    report.elapsed = started.elapsed();
    Ok(report)
}

type Extracted = (
    crate::source::Snapshot,
    BTreeMap<AuthorityId, AuthorityOutput>,
    BTreeMap<String, u64>,
);

async fn extract_and_write(
    source: &Source,
    area: &Area,
    columns: &[Column],
    staging: &Path,
) -> Result<Extracted, LoadError> {
    // A small bounded channel: the extract waits for the writer, so memory stays flat.
    let (tx, mut rx) = mpsc::channel(4);
    let mut fanout = Fanout::new(staging.to_path_buf(), area, columns);
    let area_id = area.id.clone();
    let writer = tokio::task::spawn_blocking(move || {
        while let Some(batch) = rx.blocking_recv() {
            fanout.write(&batch)?;
        }
        fanout.finish()
    });
    let extract = source.full_extract(area, columns, tx).await;
    let written = writer.await.map_err(|e| LoadError::Writer {
        area: area_id.clone(),
        message: e.to_string(),
    })?;
    // The writer's own error explains a dropped channel better than the extract's.
    let (outputs, withheld) = written?;
    let snapshot = extract.map_err(|source| LoadError::Source {
        area: area_id,
        source: Box::new(source),
    })?;
    Ok((snapshot, outputs, withheld))
}

#[allow(clippy::too_many_arguments)]
fn publish_all(
    root: &Path,
    staging: &Path,
    area: &Area,
    columns: &[Column],
    load_id: LoadId,
    watermark: i64,
    now: DateTime<Utc>,
    outputs: BTreeMap<AuthorityId, AuthorityOutput>,
    report: &mut LoadReport,
) -> Result<(), LoadError> {
    let ioerr = |path: &Path| {
        let path = path.to_path_buf();
        let area = area.id.clone();
        move |source| LoadError::Io { area, path, source }
    };
    let schema: Vec<SchemaField> = columns
        .iter()
        .map(|c| SchemaField {
            name: c.name.clone(),
            data_type: c.ty.arrow().to_string(),
            nullable: true,
        })
        .collect();
    // Write every manifest first; only then move folders into the tree, so a
    // failure before the renames publishes nothing at all.
    let mut ready = Vec::new();
    for (authority, out) in outputs {
        let dir = staging
            .join(authority.kind.as_str())
            .join(authority.code_str());
        std::fs::create_dir_all(&dir).map_err(ioerr(&dir))?;
        let manifest = Manifest {
            load_id: load_id.to_string(),
            area: area.id.clone(),
            version: area.version,
            kind: LoadKind::Full.as_str().into(),
            authority: authority.to_string(),
            key: area.key.clone(),
            watermark_to: watermark,
            created_at: now.to_rfc3339(),
            rows: out.files.iter().map(|f| f.rows).sum(),
            schema: schema.clone(),
            files: out.files,
        };
        let sums: String = manifest
            .files
            .iter()
            .map(|f| format!("{}  {}\n", f.sha256, f.name))
            .collect();
        write_synced(&dir.join("SHA256SUMS"), sums.as_bytes()).map_err(ioerr(&dir))?;
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        write_synced(&dir.join("MANIFEST.json"), &json).map_err(ioerr(&dir))?;
        sync_dir(&dir).map_err(ioerr(&dir))?;
        report.rows_written += manifest.rows;
        report.files += manifest.files.len();
        report.bytes += manifest.files.iter().map(|f| f.bytes).sum::<u64>();
        ready.push((authority, dir));
    }
    for (authority, dir) in ready {
        let target = tree::load_dir(
            root,
            authority,
            &area.id,
            area.version,
            LoadKind::Full,
            load_id,
        );
        let parent = target.parent().expect("load dir has a parent");
        std::fs::create_dir_all(parent).map_err(ioerr(parent))?;
        std::fs::rename(&dir, &target).map_err(ioerr(&target))?;
        sync_dir(parent).map_err(ioerr(parent))?;
    }
    Ok(())
}

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The next load sequence number of an area: one more than any in the tree.
/// The tree is the truth for what was published.
pub fn next_seq(root: &Path, area: &str) -> std::io::Result<u64> {
    let mut max = 0;
    for kind in crate::authority::AuthorityKind::ALL {
        for authority in read_dir_names(&root.join(kind.as_str()))? {
            for version in read_dir_names(&root.join(kind.as_str()).join(&authority).join(area))? {
                for load_kind in [LoadKind::Full, LoadKind::Delta] {
                    let dir = root
                        .join(kind.as_str())
                        .join(&authority)
                        .join(area)
                        .join(&version)
                        .join(load_kind.as_str());
                    for name in read_dir_names(&dir)? {
                        if let Some(id) = LoadId::parse(&name) {
                            max = max.max(id.seq);
                        }
                    }
                }
            }
        }
    }
    Ok(max + 1)
}

fn read_dir_names(dir: &Path) -> std::io::Result<Vec<String>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}
