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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arrow_array::{Array, BooleanArray, RecordBatch, StringArray, UInt32Array};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};

use super::{FileEntry, LoadError, delta, legacy, plan};
use crate::authority::AuthorityId;
use crate::config::Area;
use crate::source::{Column, arrow_schema};

/// A file is closed and a new one started after this many rows.
const MAX_ROWS_PER_FILE: u64 = 2_000_000;
const ROW_GROUP_ROWS: usize = 512 * 1024;
/// A row group is also cut at this many buffered bytes.
const ROW_GROUP_BYTES: usize = 64 << 20;
const IO_BUFFER: usize = 64 << 10;
/// Authorities converted to Parquet at once: each holds up to a row group in
/// memory, so this bounds memory as well as using the cores.
const CONVERT_THREADS: usize = 2;

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
    rows: u64,
}

pub struct Fanout {
    staging: PathBuf,
    area: String,
    /// The schema written (for a delta: the published columns and `_op`, `_seq`, `_changed_at`).
    schema: SchemaRef,
    kommune_col: Option<usize>,
    akasse_col: Option<usize>,
    delta: Option<DeltaState>,
    /// Also write the legacy SUP text format (see `legacy`).
    legacy: Option<legacy::LegacySpec>,
    spills: BTreeMap<AuthorityId, Spill>,
    withheld: BTreeMap<String, u64>,
}

/// A delta's input batches are the published columns followed by
/// `_draft`, `_seq`, `_op`, `_changed_at` (see `source::delta_extract`).
pub struct DeltaState {
    published: usize,
    key_cols: Vec<usize>,
    /// Where each row touched so far is published (seeded with the state at
    /// the previous watermark).
    pub state: HashMap<String, BTreeSet<AuthorityId>>,
}

/// A row's key as one string (parts joined by U+001F), as in `source::prior_states`.
pub fn key_string(batch: &RecordBatch, key_cols: &[usize], row: usize) -> String {
    let mut out = String::new();
    for (i, c) in key_cols.iter().enumerate() {
        if i > 0 {
            out.push('\u{1f}');
        }
        let col = batch.column(*c);
        if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
            out.push_str(a.value(row));
        } else {
            out.push_str(&arrow_cast_display(col, row));
        }
    }
    out
}

fn arrow_cast_display(col: &arrow_array::ArrayRef, row: usize) -> String {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int16Type, Int32Type, Int64Type};
    match col.data_type() {
        arrow_schema::DataType::Int64 => col.as_primitive::<Int64Type>().value(row).to_string(),
        arrow_schema::DataType::Int32 => col.as_primitive::<Int32Type>().value(row).to_string(),
        arrow_schema::DataType::Int16 => col.as_primitive::<Int16Type>().value(row).to_string(),
        other => unreachable!("key columns are text or integers, not {other}"),
    }
}

impl Fanout {
    /// A full load: the batches hold the published columns.
    pub fn new(staging: PathBuf, area: &Area, columns: &[Column]) -> Self {
        Self::build(staging, area, columns, arrow_schema(columns), None)
    }

    /// A delta: `columns` are the published ones; `state` is where each key
    /// touched in the window was published at the previous watermark.
    pub fn delta(
        staging: PathBuf,
        area: &Area,
        columns: &[Column],
        state: HashMap<String, BTreeSet<AuthorityId>>,
    ) -> Self {
        let key_cols = area
            .key
            .iter()
            .map(|k| {
                columns
                    .iter()
                    .position(|c| &c.name == k)
                    .expect("key columns are published")
            })
            .collect();
        let schema = delta_schema(columns);
        Self::build(
            staging,
            area,
            columns,
            schema,
            Some(DeltaState {
                published: columns.len(),
                key_cols,
                state,
            }),
        )
    }

    fn build(
        staging: PathBuf,
        area: &Area,
        columns: &[Column],
        schema: SchemaRef,
        delta: Option<DeltaState>,
    ) -> Self {
        let index = |name: &Option<String>| {
            name.as_ref()
                .and_then(|n| columns.iter().position(|c| &c.name == n))
        };
        Fanout {
            staging,
            area: area.id.clone(),
            schema,
            kommune_col: index(&area.route_kommune),
            akasse_col: index(&area.route_akasse),
            delta,
            legacy: None,
            spills: BTreeMap::new(),
            withheld: BTreeMap::new(),
        }
    }

    /// Also writes the legacy SUP text format for every authority with rows.
    pub fn with_legacy(mut self, spec: Option<legacy::LegacySpec>) -> Self {
        self.legacy = spec;
        self
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
        // Per authority: the rows it gets and, for a delta, the operation of each.
        let mut rows_for: BTreeMap<AuthorityId, (Vec<u32>, Vec<&'static str>)> = BTreeMap::new();
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
            match &mut self.delta {
                None => {
                    if r.targets.is_empty() {
                        *self
                            .withheld
                            .entry("row routes to no authority".into())
                            .or_default() += 1;
                    }
                    for t in r.targets {
                        rows_for.entry(t).or_default().0.push(row as u32);
                    }
                }
                Some(d) => {
                    let n = d.published;
                    let draft = batch
                        .column(n)
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .expect("_draft is boolean");
                    let ops = batch
                        .column(n + 2)
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .expect("_op is text");
                    let op = delta::Op::parse(ops.value(row)).ok_or_else(|| LoadError::Writer {
                        area: self.area.clone(),
                        message: format!(
                            "journal operation is not I, U or D at sequence row {row} of a batch"
                        ),
                    })?;
                    let is_draft = !draft.is_null(row) && draft.value(row);
                    let after = delta::published_to(op, is_draft, &r.targets);
                    let key = key_string(batch, &d.key_cols, row);
                    let before = d.state.insert(key, after.clone()).unwrap_or_default();
                    for (authority, op) in delta::emit(&before, &after) {
                        let e = rows_for.entry(authority).or_default();
                        e.0.push(row as u32);
                        e.1.push(op.as_str());
                    }
                }
            }
        }
        for (authority, (rows, ops)) in rows_for {
            let part = match &self.delta {
                None if rows.len() == batch.num_rows() => batch.clone(),
                None => arrow_select::take::take_record_batch(batch, &UInt32Array::from(rows))
                    .map_err(self.arrow())?,
                Some(d) => {
                    let idx = UInt32Array::from(rows);
                    let n = d.published;
                    let mut cols = Vec::with_capacity(n + 3);
                    for c in batch.columns()[..n].iter() {
                        cols.push(arrow_select::take::take(c, &idx, None).map_err(self.arrow())?);
                    }
                    cols.push(Arc::new(StringArray::from(ops)) as arrow_array::ArrayRef);
                    cols.push(
                        arrow_select::take::take(batch.column(n + 1), &idx, None)
                            .map_err(self.arrow())?,
                    );
                    cols.push(
                        arrow_select::take::take(batch.column(n + 3), &idx, None)
                            .map_err(self.arrow())?,
                    );
                    RecordBatch::try_new(self.schema.clone(), cols).map_err(self.arrow())?
                }
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
                self.spills.insert(
                    authority,
                    Spill {
                        path,
                        writer,
                        rows: 0,
                    },
                );
            }
            let arrow = self.arrow();
            let spill = self.spills.get_mut(&authority).expect("opened above");
            spill.writer.write(&part).map_err(arrow)?;
            spill.rows += part.num_rows() as u64;
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
        let spills = std::mem::take(&mut self.spills);
        let queue = Mutex::new(spills.into_iter());
        let outputs = Mutex::new(BTreeMap::new());
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(CONVERT_THREADS);
        let this = &self;
        let worker = || -> Result<(), LoadError> {
            loop {
                let next = queue.lock().expect("queue lock").next();
                let Some((authority, spill)) = next else {
                    return Ok(());
                };
                match this.convert(authority, spill, &props) {
                    Ok(out) => {
                        outputs.lock().expect("outputs lock").insert(authority, out);
                    }
                    Err(e) => {
                        // Stop the other workers too; the staging folder is discarded.
                        queue.lock().expect("queue lock").by_ref().for_each(drop);
                        return Err(e);
                    }
                }
            }
        };
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers).map(|_| s.spawn(worker)).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a Parquet conversion thread panicked"))
                .collect::<Result<Vec<()>, LoadError>>()
        })?;
        let _ = std::fs::remove_dir(self.staging.join(".spill"));
        Ok((outputs.into_inner().expect("outputs lock"), self.withheld))
    }

    /// Phase 2 for one authority: its spill file into Parquet (and legacy text).
    fn convert(
        &self,
        authority: AuthorityId,
        spill: Spill,
        props: &WriterProperties,
    ) -> Result<AuthorityOutput, LoadError> {
        {
            let Spill {
                path,
                mut writer,
                rows,
            } = spill;
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
            let mut legacy = match &self.legacy {
                Some(spec) => Some(self.open_legacy(&dir, spec, rows)?),
                None => None,
            };
            for batch in reader {
                let batch = batch.map_err(self.arrow())?;
                if let Some((_, zip)) = &mut legacy {
                    let mut text = String::with_capacity(batch.num_rows() * 128);
                    for row in 0..batch.num_rows() {
                        legacy::push_row(&mut text, &batch, row);
                    }
                    zip.write_all(text.as_bytes()).map_err(self.io(&dir))?;
                }
                if current.is_none() {
                    current = Some(self.open_file(&dir, files.len(), props)?);
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
            if let Some((name, zip)) = legacy {
                files.push(self.close_legacy(&dir, name, zip, rows)?);
            }
            std::fs::remove_file(&path).map_err(self.io(&path))?;
            Ok(AuthorityOutput { files })
        }
    }

    /// Starts `<name>.zip` holding `<name>.csv`, with the header and column line written.
    fn open_legacy(
        &self,
        dir: &std::path::Path,
        spec: &legacy::LegacySpec,
        rows: u64,
    ) -> Result<(String, zip::ZipWriter<File>), LoadError> {
        let csv = spec.file_name();
        let name = csv.replace(".csv", ".zip");
        let path = dir.join(&name);
        let file = File::create(&path).map_err(self.io(&path))?;
        let mut zip = zip::ZipWriter::new(file);
        let zerr = |e: zip::result::ZipError| LoadError::Writer {
            area: self.area.clone(),
            message: format!("writing {}: {e}", path.display()),
        };
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file(csv, options).map_err(zerr)?;
        zip.write_all(spec.header(rows).as_bytes())
            .map_err(self.io(&path))?;
        zip.write_all(legacy::column_line(&self.schema).as_bytes())
            .map_err(self.io(&path))?;
        Ok((name, zip))
    }

    fn close_legacy(
        &self,
        dir: &std::path::Path,
        name: String,
        zip: zip::ZipWriter<File>,
        rows: u64,
    ) -> Result<FileEntry, LoadError> {
        let path = dir.join(&name);
        let file = zip.finish().map_err(|e| LoadError::Writer {
            area: self.area.clone(),
            message: format!("writing {}: {e}", path.display()),
        })?;
        file.sync_all().map_err(self.io(&path))?;
        drop(file);
        // The zip writer seeks, so it is hashed afterwards rather than on the way.
        let mut hasher = Sha256::new();
        let bytes = std::io::copy(&mut File::open(&path).map_err(self.io(&path))?, &mut hasher)
            .map_err(self.io(&path))?;
        Ok(FileEntry {
            name,
            bytes,
            rows,
            sha256: hex::encode(hasher.finalize()),
        })
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

/// A delta's columns: the published ones, then `_op`, `_seq`, `_changed_at`.
pub fn delta_schema(columns: &[Column]) -> SchemaRef {
    let mut fields: Vec<arrow_schema::Field> = arrow_schema(columns)
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(arrow_schema::Field::new(
        "_op",
        arrow_schema::DataType::Utf8,
        false,
    ));
    fields.push(arrow_schema::Field::new(
        "_seq",
        arrow_schema::DataType::Int64,
        false,
    ));
    fields.push(arrow_schema::Field::new(
        "_changed_at",
        arrow_schema::DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, Some("UTC".into())),
        true,
    ));
    Arc::new(arrow_schema::Schema::new(fields))
}
