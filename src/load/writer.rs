//! Fan-out of record batches to authorities, in two phases so memory does
//! not grow with the number of authorities or rows:
//! 1. route: each routed sub-batch is appended to its authority's Arrow IPC
//!    spill file in the staging folder (a writer's state is a small buffer);
//! 2. convert: after the extract, each spill file is streamed into Parquet
//!    (zstd), one authority at a time.
//!
//! Why not a Parquet writer per authority straight away: parquet keeps zstd
//! contexts and buffers for every column of every open writer, about 2 MiB
//! per authority before any data (measured with massif), so ~119 authorities
//! cost hundreds of MiB. Runs on a blocking thread.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;

use arrow_array::{Array, RecordBatch, StringArray, UInt32Array};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};

use super::{FileEntry, LoadError, plan};
use crate::authority::AuthorityId;
use crate::config::Area;
use crate::source::{Column, arrow_schema};

/// A file is closed and a new one started after this many rows.
const MAX_ROWS_PER_FILE: u64 = 2_000_000;
const ROW_GROUP_ROWS: usize = 512 * 1024;
/// A row group is also cut at this many buffered bytes.
const ROW_GROUP_BYTES: usize = 64 << 20;
const IO_BUFFER: usize = 64 << 10;

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

/// Per authority, the Parquet files written.
#[derive(Default)]
pub struct AuthorityOutput {
    pub files: Vec<FileEntry>,
}

/// Per authority its files, and the count of rows withheld by reason.
pub type Written = (
    BTreeMap<AuthorityId, AuthorityOutput>,
    BTreeMap<String, u64>,
);

struct Spill {
    path: PathBuf,
    writer: StreamWriter<BufWriter<File>>,
}

pub struct Fanout {
    staging: PathBuf,
    area: String,
    schema: SchemaRef,
    kommune_col: Option<usize>,
    akasse_col: Option<usize>,
    spills: BTreeMap<AuthorityId, Spill>,
    withheld: BTreeMap<String, u64>,
}

impl Fanout {
    pub fn new(staging: PathBuf, area: &Area, columns: &[Column]) -> Self {
        let index = |name: &Option<String>| {
            name.as_ref()
                .and_then(|n| columns.iter().position(|c| &c.name == n))
        };
        Fanout {
            staging,
            area: area.id.clone(),
            schema: arrow_schema(columns),
            kommune_col: index(&area.route_kommune),
            akasse_col: index(&area.route_akasse),
            spills: BTreeMap::new(),
            withheld: BTreeMap::new(),
        }
    }

    fn io(&self, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> LoadError + use<> {
        let (area, path) = (self.area.clone(), path.to_path_buf());
        move |source| LoadError::Io { area, path, source }
    }

    fn arrow(&self) -> impl FnOnce(arrow_schema::ArrowError) -> LoadError + use<> {
        let area = self.area.clone();
        move |e| LoadError::Writer {
            area,
            message: e.to_string(),
        }
    }

    /// Phase 1: routes one batch and appends each part to its authority's spill.
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
                arrow_select::take::take_record_batch(batch, &UInt32Array::from(rows))
                    .map_err(self.arrow())?
            };
            if !self.spills.contains_key(&authority) {
                let dir = self.staging.join(".spill");
                std::fs::create_dir_all(&dir).map_err(self.io(&dir))?;
                let path = dir.join(format!(
                    "{}-{}.arrows",
                    authority.kind.as_str(),
                    authority.code_str()
                ));
                let file = File::create(&path).map_err(self.io(&path))?;
                let writer =
                    StreamWriter::try_new(BufWriter::with_capacity(IO_BUFFER, file), &self.schema)
                        .map_err(self.arrow())?;
                self.spills.insert(authority, Spill { path, writer });
            }
            let arrow = self.arrow();
            let spill = self.spills.get_mut(&authority).expect("opened above");
            spill.writer.write(&part).map_err(arrow)?;
        }
        Ok(())
    }

    /// Phase 2: turns every spill into Parquet files, one authority at a time.
    pub fn finish(mut self) -> Result<Written, LoadError> {
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).expect("valid level"),
            ))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
            .build();
        let mut outputs = BTreeMap::new();
        for (authority, spill) in std::mem::take(&mut self.spills) {
            let Spill { path, mut writer } = spill;
            writer.finish().map_err(self.arrow())?;
            let mut buffered = writer.into_inner().map_err(self.arrow())?;
            buffered.flush().map_err(self.io(&path))?;
            drop(buffered);
            let dir = self
                .staging
                .join(authority.kind.as_str())
                .join(authority.code_str());
            std::fs::create_dir_all(&dir).map_err(self.io(&dir))?;
            let reader = StreamReader::try_new(
                BufReader::with_capacity(IO_BUFFER, File::open(&path).map_err(self.io(&path))?),
                None,
            )
            .map_err(self.arrow())?;
            let mut files = Vec::new();
            let mut current: Option<OpenFile> = None;
            for batch in reader {
                let batch = batch.map_err(self.arrow())?;
                if current.is_none() {
                    current = Some(self.open_file(&dir, files.len(), &props)?);
                }
                let open = current.as_mut().expect("opened above");
                open.writer
                    .write(&batch)
                    .map_err(|source| LoadError::Parquet {
                        area: self.area.clone(),
                        source,
                    })?;
                open.rows += batch.num_rows() as u64;
                if open.rows >= MAX_ROWS_PER_FILE {
                    files.push(close(current.take().expect("open"), &dir, &self.area)?);
                }
            }
            if let Some(open) = current {
                files.push(close(open, &dir, &self.area)?);
            }
            std::fs::remove_file(&path).map_err(self.io(&path))?;
            outputs.insert(authority, AuthorityOutput { files });
        }
        let _ = std::fs::remove_dir(self.staging.join(".spill"));
        Ok((outputs, self.withheld))
    }

    fn open_file(
        &self,
        dir: &std::path::Path,
        index: usize,
        props: &WriterProperties,
    ) -> Result<OpenFile, LoadError> {
        let name = format!("part-{index:05}.parquet");
        let path = dir.join(&name);
        let file = File::create(&path).map_err(self.io(&path))?;
        let sink = HashingWriter {
            inner: BufWriter::with_capacity(IO_BUFFER, file),
            hasher: Sha256::new(),
            bytes: 0,
        };
        let writer = ArrowWriter::try_new(sink, self.schema.clone(), Some(props.clone())).map_err(
            |source| LoadError::Parquet {
                area: self.area.clone(),
                source,
            },
        )?;
        Ok(OpenFile {
            name,
            writer,
            rows: 0,
        })
    }
}

struct OpenFile {
    name: String,
    writer: ArrowWriter<HashingWriter>,
    rows: u64,
}

fn close(open: OpenFile, dir: &std::path::Path, area: &str) -> Result<FileEntry, LoadError> {
    let path = dir.join(&open.name);
    let io = |source| LoadError::Io {
        area: area.to_string(),
        path: path.clone(),
        source,
    };
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
    let file = inner.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(FileEntry {
        name: open.name,
        bytes,
        rows: open.rows,
        sha256: hex::encode(hasher.finalize()),
    })
}
