//! Fan-out of record batches into one Parquet writer per authority, opened
//! lazily (no empty files). Runs on a blocking thread. Each writer buffers a
//! row group in memory, so the sum of buffers is kept under a budget by
//! flushing the largest ones.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use arrow_array::{Array, RecordBatch, StringArray, UInt32Array};
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};

use super::{FileEntry, LoadError, plan};
use crate::authority::AuthorityId;
use crate::config::Area;
use crate::source::{Column, arrow_schema};

/// Buffered row groups across all writers of one load.
const MEMORY_BUDGET: usize = 32 << 20;
/// A file is closed and a new one started after this many rows.
const MAX_ROWS_PER_FILE: u64 = 2_000_000;
const ROW_GROUP_ROWS: usize = 256 * 1024;

/// A file writer that hashes and counts what it writes.
struct HashingWriter {
    inner: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct OpenFile {
    name: String,
    writer: ArrowWriter<HashingWriter>,
    rows: u64,
}

#[derive(Default)]
pub struct AuthorityOutput {
    current: Option<OpenFile>,
    pub files: Vec<FileEntry>,
}

/// Per authority its files, and the count of rows withheld by reason.
pub type Written = (
    BTreeMap<AuthorityId, AuthorityOutput>,
    BTreeMap<String, u64>,
);

pub struct Fanout {
    staging: PathBuf,
    area: String,
    schema: SchemaRef,
    props: WriterProperties,
    kommune_col: Option<usize>,
    akasse_col: Option<usize>,
    outputs: BTreeMap<AuthorityId, AuthorityOutput>,
    withheld: BTreeMap<String, u64>,
}

impl Fanout {
    pub fn new(staging: PathBuf, area: &Area, columns: &[Column]) -> Self {
        let index = |name: &Option<String>| {
            name.as_ref()
                .and_then(|n| columns.iter().position(|c| &c.name == n))
        };
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).expect("valid level"),
            ))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        Fanout {
            staging,
            area: area.id.clone(),
            schema: arrow_schema(columns),
            props,
            kommune_col: index(&area.route_kommune),
            akasse_col: index(&area.route_akasse),
            outputs: BTreeMap::new(),
            withheld: BTreeMap::new(),
        }
    }

    fn perr(&self) -> impl FnOnce(parquet::errors::ParquetError) -> LoadError + use<> {
        let area = self.area.clone();
        move |source| LoadError::Parquet { area, source }
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), LoadError> {
        let col = |i: Option<usize>| {
            i.map(|i| {
                batch
                    .column(i)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("routing columns are checked to be text")
            })
        };
        let (kommune, akasse) = (col(self.kommune_col), col(self.akasse_col));
        fn value(a: Option<&StringArray>, row: usize) -> Option<&str> {
            a.and_then(|a| (!a.is_null(row)).then(|| a.value(row)))
        }
        let mut rows_for: BTreeMap<AuthorityId, Vec<u32>> = BTreeMap::new();
        for row in 0..batch.num_rows() {
            let r = plan::route(value(kommune, row), value(akasse, row));
            if r.unknown_kommune {
                *self
                    .withheld
                    .entry("unknown municipality code".into())
                    .or_default() += 1;
            }
            if r.unknown_akasse {
                *self.withheld.entry("unknown fund code".into()).or_default() += 1;
            }
            if r.targets.is_empty() {
                *self
                    .withheld
                    .entry("row routes to no authority".into())
                    .or_default() += 1;
            }
            for t in r.targets {
                rows_for.entry(t).or_default().push(row as u32);
            }
        }
        for (authority, rows) in rows_for {
            let part = if rows.len() == batch.num_rows() {
                batch.clone()
            } else {
                let idx = UInt32Array::from(rows);
                arrow_select::take::take_record_batch(batch, &idx).map_err(|e| {
                    LoadError::Writer {
                        area: self.area.clone(),
                        message: e.to_string(),
                    }
                })?
            };
            self.write_to(authority, &part)?;
        }
        self.keep_within_budget()
    }

    fn write_to(&mut self, authority: AuthorityId, part: &RecordBatch) -> Result<(), LoadError> {
        let perr = self.perr();
        let dir = self
            .staging
            .join(authority.kind.as_str())
            .join(authority.code_str());
        let out = self.outputs.entry(authority).or_default();
        if out.current.is_none() {
            let name = format!("part-{:05}.parquet", out.files.len());
            std::fs::create_dir_all(&dir).map_err(|source| LoadError::Io {
                area: self.area.clone(),
                path: dir.clone(),
                source,
            })?;
            let path = dir.join(&name);
            let file = File::create(&path).map_err(|source| LoadError::Io {
                area: self.area.clone(),
                path: path.clone(),
                source,
            })?;
            let sink = HashingWriter {
                inner: BufWriter::with_capacity(64 << 10, file),
                hasher: Sha256::new(),
                bytes: 0,
            };
            let writer = ArrowWriter::try_new(sink, self.schema.clone(), Some(self.props.clone()))
                .map_err(|source| LoadError::Parquet {
                    area: self.area.clone(),
                    source,
                })?;
            out.current = Some(OpenFile {
                name,
                writer,
                rows: 0,
            });
        }
        let open = out.current.as_mut().expect("opened above");
        open.writer.write(part).map_err(perr)?;
        open.rows += part.num_rows() as u64;
        if open.rows >= MAX_ROWS_PER_FILE {
            let open = out.current.take().expect("open");
            let entry = close(open, &self.area)?;
            self.outputs
                .get_mut(&authority)
                .expect("exists")
                .files
                .push(entry);
        }
        Ok(())
    }

    /// Flushes the largest buffered row groups until the total is under half
    /// the budget: many authorities each hold a partial row group.
    fn keep_within_budget(&mut self) -> Result<(), LoadError> {
        let total: usize = self
            .outputs
            .values()
            .filter_map(|o| o.current.as_ref())
            .map(|f| f.writer.in_progress_size())
            .sum();
        if total <= MEMORY_BUDGET {
            return Ok(());
        }
        let mut sizes: Vec<(usize, AuthorityId)> = self
            .outputs
            .iter()
            .filter_map(|(a, o)| {
                o.current
                    .as_ref()
                    .map(|f| (f.writer.in_progress_size(), *a))
            })
            .collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        let mut remaining = total;
        for (size, authority) in sizes {
            if remaining <= MEMORY_BUDGET / 2 {
                break;
            }
            let perr = self.perr();
            if let Some(f) = self
                .outputs
                .get_mut(&authority)
                .and_then(|o| o.current.as_mut())
            {
                f.writer.flush().map_err(perr)?;
            }
            remaining -= size;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<Written, LoadError> {
        for out in self.outputs.values_mut() {
            if let Some(open) = out.current.take() {
                out.files.push(close(open, &self.area)?);
            }
        }
        Ok((self.outputs, self.withheld))
    }
}

fn close(open: OpenFile, area: &str) -> Result<FileEntry, LoadError> {
    let sink = open
        .writer
        .into_inner()
        .map_err(|source| LoadError::Parquet {
            area: area.to_string(),
            source,
        })?;
    let HashingWriter {
        inner,
        hasher,
        bytes,
    } = sink;
    let file = inner.into_inner().map_err(|e| LoadError::Io {
        area: area.to_string(),
        path: PathBuf::from(&open.name),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(|source| LoadError::Io {
        area: area.to_string(),
        path: PathBuf::from(&open.name),
        source,
    })?;
    Ok(FileEntry {
        name: open.name,
        bytes,
        rows: open.rows,
        sha256: hex::encode(hasher.finalize()),
    })
}
