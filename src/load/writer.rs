//! Fan-out of record batches to authorities, writing Parquet while the
//! extract runs:
//! - the routing thread (`Fanout::write`) splits each batch by authority and
//!   keeps the parts as pending rows per authority; a full extract from
//!   PostgreSQL is split while it is decoded instead (`Router`, a
//!   `source::Partition`), and each of its parts is one job (`Fanout::take`);
//! - an authority's pending rows go to an encoder thread as one job once they
//!   reach [`JOB_ROWS`], or, when all pending rows together pass
//!   [`PENDING_BYTES`], the largest go first;
//! - each encoder owns the Parquet files of the authorities assigned to it
//!   (an authority always goes to the same encoder, so its rows stay in
//!   order) and writes every job as one row group, then flushes it.
//!
//! Memory is bounded whatever the row count or the number of authorities:
//! pending rows by [`PENDING_BYTES`], jobs by one queued and one being
//! encoded per encoder, and an open Parquet writer between jobs holds only
//! its file buffer (its column encoders, ~2 MiB per authority, exist only
//! while a row group is being written). The legacy text body is written per
//! authority to a staging file and zipped behind its header (which needs the
//! row count) when the load finishes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use arrow_array::{Array, BooleanArray, RecordBatch, StringArray, UInt32Array};
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use sha2::{Digest, Sha256};

use super::{FileEntry, LoadError, Omitted, delta, legacy, plan};
use crate::authority::AuthorityId;
use crate::config::Area;
use crate::source::{Column, Extracted, Partition, arrow_schema};
use crate::tree::store::staged_authority_dir;

/// A file is closed and a new one started after this many rows.
const MAX_ROWS_PER_FILE: u64 = 2_000_000;
/// An authority's pending rows become a job (and a row group) at this many.
const JOB_ROWS: usize = 128 * 1024;
/// All authorities' pending rows together; past it the largest are sent.
const PENDING_BYTES: usize = 96 << 20;
const IO_BUFFER: usize = 64 << 10;
/// Encoder threads; more would only compete with the extract for the cores.
const ENCODERS: usize = 2;

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

/// Per authority, the files written and the rows the legacy text left out.
#[derive(Default)]
pub struct AuthorityOutput {
    pub files: Vec<FileEntry>,
    pub legacy_omitted: Vec<Omitted>,
}

/// Why rows left out of the legacy text are counted as withheld.
pub const LEGACY_OMITTED: &str = "legacy text: a value the format cannot carry (in Parquet only)";

/// Per authority its files, and the count of rows withheld by reason.
pub type Written = (
    BTreeMap<AuthorityId, AuthorityOutput>,
    BTreeMap<String, u64>,
);

/// The sizes that bound a fanout's memory and files; smaller in tests.
#[derive(Debug, Clone, Copy)]
struct Limits {
    job_rows: usize,
    pending_bytes: usize,
    file_rows: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            job_rows: JOB_ROWS,
            pending_bytes: PENDING_BYTES,
            file_rows: MAX_ROWS_PER_FILE,
        }
    }
}

/// Rows routed to one authority and not yet sent to its encoder.
#[derive(Default)]
struct Pending {
    batches: Vec<RecordBatch>,
    rows: usize,
    bytes: usize,
}

pub struct Fanout {
    staging: PathBuf,
    area: String,
    /// The schema written (for a delta: the published columns and `_op`, `_seq`, `_changed_at`).
    schema: SchemaRef,
    kommune_col: Option<usize>,
    akasse_col: Option<usize>,
    /// The key's columns, to name a row left out of the legacy text.
    key_cols: Vec<usize>,
    /// Columns written without a dictionary (see `plain_columns`).
    plain: Vec<String>,
    delta: Option<DeltaState>,
    /// Also write the legacy SUP text format (see `legacy`).
    legacy: Option<legacy::LegacySpec>,
    pending: BTreeMap<AuthorityId, Pending>,
    pending_bytes: usize,
    limits: Limits,
    /// Started with the first job.
    encoders: Vec<Encoder>,
    /// Which encoder owns each authority's files.
    assigned: HashMap<AuthorityId, usize>,
    withheld: BTreeMap<String, u64>,
}

/// A delta's input batches are the published columns followed by
/// `_draft`, `_seq`, `_op`, `_changed_at` (see `source::delta_extract`).
pub struct DeltaState {
    published: usize,
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
        let schema = delta_schema(columns);
        let fanout = Self::build(
            staging,
            area,
            columns,
            schema,
            Some(DeltaState {
                published: columns.len(),
                state,
            }),
        );
        // A delta tracks rows by key: `load::checked_columns` made sure it is published.
        assert_eq!(
            fanout.key_cols.len(),
            area.key.len(),
            "key columns are published"
        );
        fanout
    }

    fn build(
        staging: PathBuf,
        area: &Area,
        columns: &[Column],
        schema: SchemaRef,
        delta: Option<DeltaState>,
    ) -> Self {
        let schema = super::dictionary::describe(&schema, area);
        let index = |name: &Option<String>| {
            name.as_ref()
                .and_then(|n| columns.iter().position(|c| &c.name == n))
        };
        let key_cols = area
            .key
            .iter()
            .filter_map(|k| columns.iter().position(|c| &c.name == k))
            .collect();
        Fanout {
            staging,
            area: area.id.clone(),
            key_cols,
            plain: plain_columns(area, &schema),
            schema,
            kommune_col: index(&area.route_kommune),
            akasse_col: index(&area.route_akasse),
            delta,
            legacy: None,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            limits: Limits::default(),
            encoders: Vec::new(),
            assigned: HashMap::new(),
            withheld: BTreeMap::new(),
        }
    }

    /// Also writes the legacy SUP text format for every authority with rows.
    pub fn with_legacy(mut self, spec: Option<legacy::LegacySpec>) -> Self {
        self.legacy = spec;
        self
    }

    fn arrow(&self) -> impl FnOnce(arrow_schema::ArrowError) -> LoadError + use<> {
        let area = self.area.clone();
        move |e| LoadError::Writer {
            area,
            message: e.to_string(),
        }
    }

    /// The router a full extract decodes with, so its rows arrive already
    /// split by authority (`Extracted::Part`); its `withheld` counts are the
    /// load's for those rows.
    pub fn router(&self) -> Router {
        Router {
            columns: self
                .kommune_col
                .into_iter()
                .chain(self.akasse_col)
                .collect(),
            kommune: self.kommune_col.is_some(),
            akasse: self.akasse_col.is_some(),
            limits: self.limits,
            withheld: BTreeMap::new(),
        }
    }

    /// Takes one item of an extract: rows to route, or one authority's rows.
    pub fn take(&mut self, item: &Extracted) -> Result<(), LoadError> {
        match item {
            Extracted::Rows(batch) => self.write(batch),
            Extracted::Part { part, batch, .. } => {
                let authority =
                    AuthorityId::from_index(*part).ok_or_else(|| LoadError::Writer {
                        area: self.area.clone(),
                        message: format!("an extract part {part} that is no authority"),
                    })?;
                let bytes = batch.get_array_memory_size();
                let p = self.pending.entry(authority).or_default();
                p.rows += batch.num_rows();
                p.bytes += bytes;
                p.batches.push(batch.clone());
                self.pending_bytes += bytes;
                // The router already kept it under the budget: one part, one job.
                self.send(authority)
            }
        }
    }

    /// Routes one batch: each part joins its authority's pending rows, and
    /// full or oversized pending rows go to the encoders.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), LoadError> {
        for (authority, (rows, ops)) in self.route_batch(batch)? {
            let part = match &self.delta {
                None if rows.len() == batch.num_rows() => batch.clone(),
                None => arrow_select::take::take_record_batch(batch, &UInt32Array::from(rows))
                    .map_err(self.arrow())?,
                Some(d) => self.delta_part(batch, d.published, rows, ops)?,
            };
            let bytes = part.get_array_memory_size();
            let p = self.pending.entry(authority).or_default();
            p.rows += part.num_rows();
            p.bytes += bytes;
            p.batches.push(part);
            self.pending_bytes += bytes;
            if p.rows >= self.limits.job_rows {
                self.send(authority)?;
            }
        }
        while self.pending_bytes > self.limits.pending_bytes {
            let largest = self
                .pending
                .iter()
                .max_by_key(|(_, p)| p.bytes)
                .map(|(a, _)| *a)
                .expect("pending bytes are counted from pending rows");
            self.send(largest)?;
        }
        Ok(())
    }

    /// Per authority: the rows of `batch` it gets and, for a delta, the
    /// operation of each (a delta also advances its per-key state).
    fn route_batch(&mut self, batch: &RecordBatch) -> Result<Routed, LoadError> {
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
        // A delta's `_draft` and `_op` columns, looked up once per batch.
        let delta_cols = self.delta.as_ref().map(|d| {
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
            (draft, ops)
        });
        let mut rows_for = Routed::new();
        for row in 0..batch.num_rows() {
            let r = plan::route(value(kommune, row), value(akasse, row));
            tally(&mut self.withheld, &r, self.delta.is_none());
            match &mut self.delta {
                None => {
                    for t in r.targets {
                        rows_for.entry(t).or_default().0.push(row as u32);
                    }
                }
                Some(d) => {
                    let (draft, ops) = delta_cols.expect("a delta has its columns");
                    let op = delta::Op::parse(ops.value(row)).ok_or_else(|| LoadError::Writer {
                        area: self.area.clone(),
                        message: format!(
                            "journal operation is not I, U or D at sequence row {row} of a batch"
                        ),
                    })?;
                    let is_draft = !draft.is_null(row) && draft.value(row);
                    let after = delta::published_to(op, is_draft, &r.targets);
                    let key = key_string(batch, &self.key_cols, row);
                    let before = d.state.insert(key, after.clone()).unwrap_or_default();
                    for (authority, op) in delta::emit(&before, &after) {
                        let e = rows_for.entry(authority).or_default();
                        e.0.push(row as u32);
                        e.1.push(op.as_str());
                    }
                }
            }
        }
        Ok(rows_for)
    }

    /// One authority's rows of a delta batch (`published` data columns, then
    /// `_draft`, `_op`, `_seq`), as the delta file's columns.
    fn delta_part(
        &self,
        batch: &RecordBatch,
        published: usize,
        rows: Vec<u32>,
        ops: Vec<&'static str>,
    ) -> Result<RecordBatch, LoadError> {
        let idx = UInt32Array::from(rows);
        let n = published;
        // A `D` row carries its key only: its other values are the row's
        // state after the change, which this authority may not see (where
        // the citizen moved, a draft's text).
        let deleted: BooleanArray = ops.iter().map(|op| Some(*op == "D")).collect();
        let mut cols = Vec::with_capacity(n + 3);
        for (i, c) in batch.columns()[..n].iter().enumerate() {
            let taken = arrow_select::take::take(c, &idx, None).map_err(self.arrow())?;
            cols.push(if self.key_cols.contains(&i) {
                taken
            } else {
                arrow_select::nullif::nullif(&taken, &deleted).map_err(self.arrow())?
            });
        }
        cols.push(Arc::new(StringArray::from(ops)) as arrow_array::ArrayRef);
        cols.push(arrow_select::take::take(batch.column(n + 1), &idx, None).map_err(self.arrow())?);
        cols.push(arrow_select::take::take(batch.column(n + 3), &idx, None).map_err(self.arrow())?);
        RecordBatch::try_new(self.schema.clone(), cols).map_err(self.arrow())
    }

    /// Hands an authority's pending rows to its encoder.
    fn send(&mut self, authority: AuthorityId) -> Result<(), LoadError> {
        let Some(p) = self.pending.remove(&authority) else {
            return Ok(());
        };
        self.pending_bytes -= p.bytes;
        if self.encoders.is_empty() {
            let distinct = mostly_distinct_text(&self.schema, &p.batches, &self.plain);
            if !distinct.is_empty() {
                tracing::debug!(area = %self.area, columns = ?distinct, "mostly distinct text, written without a dictionary");
            }
            self.plain.extend(distinct);
            let shared = Arc::new(Encoding {
                staging: self.staging.clone(),
                area: self.area.clone(),
                schema: self.schema.clone(),
                key_cols: self.key_cols.clone(),
                legacy: self.legacy.clone(),
                file_rows: self.limits.file_rows,
                props: {
                    let props = WriterProperties::builder()
                        // Level 1: on 2 cores the encoders compete with the
                        // extract and PostgreSQL; level 3 gave files only 0.6%
                        // smaller (joblog at 1M citizens: 140.5 vs 139.7 MB).
                        .set_compression(Compression::ZSTD(
                            ZstdLevel::try_new(1).expect("valid level"),
                        ))
                        .set_key_value_metadata(super::dictionary::key_values(&self.schema));
                    let props = self.plain.iter().fold(props, |p, c| {
                        p.set_column_dictionary_enabled(ColumnPath::from(c.as_str()), false)
                    });
                    text_columns(&self.schema)
                        .fold(props, |p, c| {
                            p.set_column_statistics_enabled(
                                ColumnPath::from(c),
                                EnabledStatistics::None,
                            )
                        })
                        .build()
                },
            });
            let n = std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(ENCODERS);
            for i in 0..n {
                self.encoders.push(Encoder::start(shared.clone(), i)?);
            }
        }
        // A new authority goes to the encoder with the fewest rows so far, so
        // two large municipalities are not likely to share one.
        let encoders = &self.encoders;
        let e = *self.assigned.entry(authority).or_insert_with(|| {
            (0..encoders.len())
                .min_by_key(|i| encoders[*i].rows)
                .expect("encoders started")
        });
        let encoder = &mut self.encoders[e];
        encoder.rows += p.rows as u64;
        let sent = encoder
            .jobs
            .as_ref()
            .map(|j| j.send((authority, p.batches)));
        if !matches!(sent, Some(Ok(()))) {
            // The encoder stopped on an error; its result says which.
            return Err(encoder.join().err().unwrap_or_else(|| LoadError::Writer {
                area: self.area.clone(),
                message: "a Parquet encoder stopped".into(),
            }));
        }
        Ok(())
    }

    /// Sends what is pending, waits for the encoders and closes every file.
    pub fn finish(mut self) -> Result<Written, LoadError> {
        let authorities: Vec<AuthorityId> = self.pending.keys().copied().collect();
        let mut failed = None;
        for a in authorities {
            if let Err(e) = self.send(a) {
                failed = Some(e);
                break;
            }
        }
        let mut outputs = BTreeMap::new();
        // Every encoder is joined, also after a failure, so no thread is left writing.
        for mut encoder in std::mem::take(&mut self.encoders) {
            match encoder.join() {
                Ok(out) => outputs.extend(out),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let _ = std::fs::remove_dir(self.staging.join(".legacy"));
        let omitted: usize = outputs
            .values()
            .map(|o: &AuthorityOutput| o.legacy_omitted.len())
            .sum();
        if omitted > 0 {
            *self.withheld.entry(LEGACY_OMITTED.into()).or_default() += omitted as u64;
        }
        Ok((outputs, std::mem::take(&mut self.withheld)))
    }
}

impl Drop for Fanout {
    /// A load that fails mid-way drops its fanout: the encoders finish their
    /// current job and are joined before the caller removes the staging folder.
    fn drop(&mut self) {
        for encoder in &mut self.encoders {
            let _ = encoder.join();
        }
    }
}

/// Columns whose values are (nearly) all distinct: the key, the person
/// column and timestamps. A dictionary does not shrink them, yet building
/// one hashes and interns every value (about a fifth of the encoders' CPU in
/// a profile of a joblog load); without it joblog's files at 1M citizens were
/// 17% smaller (115.7 vs 139.4 MB).
fn plain_columns(area: &Area, schema: &SchemaRef) -> Vec<String> {
    schema
        .fields()
        .iter()
        .filter(|f| {
            area.key.contains(f.name())
                || *f.name() == area.person_column
                || matches!(f.data_type(), arrow_schema::DataType::Timestamp(..))
        })
        .map(|f| f.name().clone())
        .collect()
}

/// How many of a text column's values [`mostly_distinct_text`] looks at,
/// and the fewest it decides on.
const SAMPLE_VALUES: usize = 4096;
const SAMPLE_MIN: usize = 1024;

/// Text columns not already plain of which more than half the values in
/// `batches` (a load's first job, a row group's worth of one authority's
/// rows) are distinct. For such a column parquet hashes and interns every
/// value into a dictionary not much smaller than the data, and falls back to
/// plain encoding once the dictionary passes its size limit; written plain,
/// zstd does better with it. In the synthetic data:
/// - joblog's employer number (`arbejdsgiver_cvr`, nearly all distinct):
///   a bench round at 50K citizens took 2.6% fewer instructions (callgrind:
///   2,038M to 1,984M) and its files were 3% smaller (6.39 to 6.20 MB);
/// - joblog's postcode (`postnr`, uniform over 8,990 values, so between half
///   and 90% distinct in a sample): at 1M citizens joblog's files were 2.2%
///   smaller (111.3 to 108.9 MB);
/// - the plan id of plans and activities (`plan_id`): at 1M citizens that
///   area's files were 15% smaller (18.8 to 16.0 MB).
///
/// The loads' CPU did not change beyond the noise (runs in turns with the
/// earlier 90% rule). A column whose values repeat more keeps its
/// dictionary. The first job decides for the whole load, so all its files
/// are written alike; a first job too small to judge keeps every dictionary.
fn mostly_distinct_text(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    plain: &[String],
) -> Vec<String> {
    let mut distinct_columns = Vec::new();
    for name in text_columns(schema).filter(|c| !plain.iter().any(|p| p == c)) {
        let i = schema.index_of(name).expect("a column of this schema");
        let mut seen = 0;
        let mut values = std::collections::HashSet::new();
        'batches: for batch in batches {
            let Some(column) = batch.column(i).as_any().downcast_ref::<StringArray>() else {
                continue;
            };
            for v in column.iter().flatten() {
                if seen == SAMPLE_VALUES {
                    break 'batches;
                }
                seen += 1;
                values.insert(v);
            }
        }
        if seen >= SAMPLE_MIN && values.len() * 2 > seen {
            distinct_columns.push(name.to_string());
        }
    }
    distinct_columns
}

/// Text columns, written without min/max statistics: parquet compares every
/// value twice to keep them (a large share of a load's instructions), and a
/// reader has little use for them here: each file is
/// one authority's, and the text is names, codes and identifiers, not ranges.
/// Numbers, dates and times keep theirs.
fn text_columns(schema: &SchemaRef) -> impl Iterator<Item = &str> {
    schema
        .fields()
        .iter()
        .filter(|f| matches!(f.data_type(), arrow_schema::DataType::Utf8))
        .map(|f| f.name().as_str())
}

/// Counts a row's unusable routing codes and, in a full load, a row that
/// goes nowhere. (In a delta a row that goes nowhere may be a delete.)
fn tally(withheld: &mut BTreeMap<String, u64>, r: &plan::Route, full: bool) {
    let mut count = |reason: &str| *withheld.entry(reason.into()).or_default() += 1;
    if r.unknown_kommune {
        count("unknown municipality code");
    }
    if r.unknown_akasse {
        count("unknown fund code");
    }
    if full && r.targets.is_empty() {
        count("row routes to no authority");
    }
}

/// Routes a full extract's rows while they are decoded (see
/// `source::Partition`): a part is an authority, numbered by `AuthorityId::index`.
pub struct Router {
    /// The routing columns present: the municipality's, then the fund's.
    columns: Vec<usize>,
    kommune: bool,
    akasse: bool,
    limits: Limits,
    pub withheld: BTreeMap<String, u64>,
}

impl Partition for Router {
    fn columns(&self) -> &[usize] {
        &self.columns
    }

    fn parts(&mut self, values: &[Option<&str>], out: &mut Vec<usize>) {
        let mut values = values.iter().copied();
        let kommune = if self.kommune {
            values.next().flatten()
        } else {
            None
        };
        let akasse = if self.akasse {
            values.next().flatten()
        } else {
            None
        };
        let r = plan::route(kommune, akasse);
        tally(&mut self.withheld, &r, true);
        out.extend(r.targets.iter().map(|a| a.index()));
    }

    fn part_rows(&self) -> usize {
        self.limits.job_rows
    }

    fn budget_bytes(&self) -> usize {
        self.limits.pending_bytes
    }
}

/// What every encoder of one load needs.
struct Encoding {
    staging: PathBuf,
    area: String,
    schema: SchemaRef,
    key_cols: Vec<usize>,
    legacy: Option<legacy::LegacySpec>,
    file_rows: u64,
    props: WriterProperties,
}

impl Encoding {
    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> LoadError + use<> {
        let (area, path) = (self.area.clone(), path.to_path_buf());
        move |source| LoadError::Io { area, path, source }
    }

    fn parquet(&self, source: parquet::errors::ParquetError) -> LoadError {
        LoadError::Parquet {
            area: self.area.clone(),
            source,
        }
    }
}

type Job = (AuthorityId, Vec<RecordBatch>);

/// Per authority, the rows of a batch it gets and (deltas) their operations.
type Routed = BTreeMap<AuthorityId, (Vec<u32>, Vec<&'static str>)>;

/// An encoder thread and the way to it.
struct Encoder {
    area: String,
    /// Both `None` once joined.
    jobs: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<EncoderResult>>,
    /// Rows sent so far, for assigning new authorities.
    rows: u64,
}

type EncoderResult = Result<BTreeMap<AuthorityId, AuthorityOutput>, LoadError>;

impl Encoder {
    fn start(shared: Arc<Encoding>, index: usize) -> Result<Encoder, LoadError> {
        // One job queued while one is encoded: enough to keep it busy.
        let (jobs, rx) = sync_channel::<Job>(1);
        let area = shared.area.clone();
        let thread = std::thread::Builder::new()
            .name(format!("parquet-{index}"))
            .spawn({
                let shared = shared.clone();
                move || encode(&shared, rx)
            })
            .map_err(|e| LoadError::Writer {
                area,
                message: format!("cannot start a Parquet encoder thread: {e}"),
            })?;
        Ok(Encoder {
            area: shared.area.clone(),
            jobs: Some(jobs),
            thread: Some(thread),
            rows: 0,
        })
    }

    /// Ends the jobs and waits for the thread's result (empty if joined before).
    fn join(&mut self) -> EncoderResult {
        self.jobs = None;
        match self.thread.take() {
            None => Ok(BTreeMap::new()),
            Some(t) => t.join().unwrap_or_else(|_| {
                Err(LoadError::Writer {
                    area: self.area.clone(),
                    message: "a Parquet encoder thread panicked".into(),
                })
            }),
        }
    }
}

/// One authority's output while the load runs (owned by one encoder).
struct AuthorityFiles {
    dir: PathBuf,
    files: Vec<FileEntry>,
    current: Option<OpenFile>,
    legacy: Option<LegacyBody>,
    legacy_omitted: Vec<Omitted>,
}

/// Legacy text rows, kept in staging until the row count for the header is known.
struct LegacyBody {
    path: PathBuf,
    out: BufWriter<File>,
    rows: u64,
}

/// An encoder thread: writes each job as one row group of its authority's
/// current file; when the jobs end, closes every file.
fn encode(shared: &Encoding, jobs: Receiver<Job>) -> EncoderResult {
    let mut open: BTreeMap<AuthorityId, AuthorityFiles> = BTreeMap::new();
    for (authority, batches) in jobs {
        let files = match open.entry(authority) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(AuthorityFiles::start(shared, authority)?)
            }
        };
        // One batch per job: routed parts are many and small, and the Parquet
        // writer works per batch. (A partitioned extract sends one already.)
        let batch = match <[RecordBatch; 1]>::try_from(batches) {
            Ok([batch]) => batch,
            Err(batches) => arrow_select::concat::concat_batches(&shared.schema, &batches)
                .map_err(|e| LoadError::Writer {
                    area: shared.area.clone(),
                    message: e.to_string(),
                })?,
        };
        files.write_legacy(shared, &batch)?;
        files.write_parquet(shared, &batch)?;
    }
    let mut out = BTreeMap::new();
    for (authority, files) in open {
        out.insert(authority, files.finish(shared)?);
    }
    Ok(out)
}

impl AuthorityFiles {
    /// An authority's first job: its staging folder, and the legacy body
    /// beside it if the area has that output.
    fn start(shared: &Encoding, authority: AuthorityId) -> Result<AuthorityFiles, LoadError> {
        let io = |path: &Path| shared.io(path);
        let dir = staged_authority_dir(&shared.staging, authority);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let legacy = match &shared.legacy {
            Some(_) => {
                let tmp = shared.staging.join(".legacy");
                std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
                let path = tmp.join(format!(
                    "{}-{}.txt",
                    authority.kind.as_str(),
                    authority.code_str()
                ));
                let file = File::create(&path).map_err(io(&path))?;
                Some(LegacyBody {
                    out: BufWriter::with_capacity(IO_BUFFER, file),
                    path,
                    rows: 0,
                })
            }
            None => None,
        };
        Ok(AuthorityFiles {
            dir,
            files: Vec::new(),
            current: None,
            legacy,
            legacy_omitted: Vec::new(),
        })
    }

    /// Appends a job's rows to the legacy body; a row the format cannot
    /// carry is left out and named by its key.
    fn write_legacy(&mut self, shared: &Encoding, batch: &RecordBatch) -> Result<(), LoadError> {
        let Some(body) = &mut self.legacy else {
            return Ok(());
        };
        let mut text = String::with_capacity(batch.num_rows() * 128);
        for row in 0..batch.num_rows() {
            match legacy::unrepresentable(batch, row) {
                None => {
                    legacy::push_row(&mut text, batch, row);
                    body.rows += 1;
                }
                Some(col) => self.legacy_omitted.push(Omitted {
                    key: key_string(batch, &shared.key_cols, row),
                    column: shared.schema.field(col).name().clone(),
                }),
            }
        }
        body.out
            .write_all(text.as_bytes())
            .map_err(shared.io(&body.path))
    }

    /// Writes a job as row groups of the current file, starting a new file
    /// when one is full.
    fn write_parquet(&mut self, shared: &Encoding, batch: &RecordBatch) -> Result<(), LoadError> {
        let pq = |source| shared.parquet(source);
        let mut at = 0;
        while at < batch.num_rows() {
            if self.current.is_none() {
                self.current = Some(open_file(shared, &self.dir, self.files.len())?);
            }
            let current = self.current.as_mut().expect("opened above");
            let room = (shared.file_rows - current.rows) as usize;
            let n = room.min(batch.num_rows() - at);
            current.writer.write(&batch.slice(at, n)).map_err(pq)?;
            // Closing the row group frees its column encoders until the next job.
            current.writer.flush().map_err(pq)?;
            start_writeback(current.writer.inner().inner.get_ref());
            current.rows += n as u64;
            at += n;
            if current.rows >= shared.file_rows {
                let done = self.current.take().expect("open");
                self.files.push(close(done, &self.dir, &shared.area)?);
            }
        }
        Ok(())
    }

    /// Closes the open file and the legacy file.
    fn finish(mut self, shared: &Encoding) -> Result<AuthorityOutput, LoadError> {
        if let Some(current) = self.current.take() {
            self.files.push(close(current, &self.dir, &shared.area)?);
        }
        if let (Some(body), Some(spec)) = (self.legacy.take(), &shared.legacy) {
            self.files
                .push(close_legacy(shared, &self.dir, spec, body)?);
        }
        Ok(AuthorityOutput {
            files: self.files,
            legacy_omitted: self.legacy_omitted,
        })
    }
}

/// Writes `<name>.zip` holding `<name>.csv`: the header with the row count,
/// the column line, then the body kept in staging.
fn close_legacy(
    shared: &Encoding,
    dir: &Path,
    spec: &legacy::LegacySpec,
    body: LegacyBody,
) -> Result<FileEntry, LoadError> {
    let io = |path: &Path| shared.io(path);
    let LegacyBody {
        path: body_path,
        out,
        rows,
    } = body;
    out.into_inner()
        .map_err(|e| io(&body_path)(e.into_error()))?;
    let csv = spec.file_name();
    let name = csv.replace(".csv", ".zip");
    let path = dir.join(&name);
    let zerr = |e: zip::result::ZipError| LoadError::Writer {
        area: shared.area.clone(),
        message: format!("writing {}: {e}", path.display()),
    };
    let mut zip = zip::ZipWriter::new(File::create(&path).map_err(io(&path))?);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        // The fastest level: the text is zipped after the extract, so its
        // time adds to the load's; level 6 took seconds per million rows.
        .compression_level(Some(1));
    zip.start_file(csv, options).map_err(zerr)?;
    zip.write_all(spec.header(rows).as_bytes())
        .map_err(io(&path))?;
    zip.write_all(legacy::column_line(&shared.schema).as_bytes())
        .map_err(io(&path))?;
    std::io::copy(
        &mut File::open(&body_path).map_err(io(&body_path))?,
        &mut zip,
    )
    .map_err(io(&path))?;
    // Synced with the load's other files when it is published.
    drop(zip.finish().map_err(zerr)?);
    std::fs::remove_file(&body_path).map_err(io(&body_path))?;
    // The zip writer seeks, so it is hashed afterwards rather than on the way.
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut File::open(&path).map_err(io(&path))?, &mut hasher)
        .map_err(io(&path))?;
    Ok(FileEntry {
        name,
        bytes,
        rows,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// A zero-row Parquet file with `schema`, for an authority whose load has no rows.
pub fn empty_file(dir: &Path, schema: &SchemaRef, area: &str) -> Result<FileEntry, LoadError> {
    let name = "part-00000.parquet".to_string();
    let path = dir.join(&name);
    let file = File::create(&path).map_err(|source| LoadError::Io {
        area: area.to_string(),
        path: path.clone(),
        source,
    })?;
    let sink = HashingWriter {
        inner: BufWriter::with_capacity(IO_BUFFER, file),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid level"),
        ))
        .set_key_value_metadata(super::dictionary::key_values(schema))
        .build();
    let writer = ArrowWriter::try_new(sink, schema.clone(), Some(props)).map_err(|source| {
        LoadError::Parquet {
            area: area.to_string(),
            source,
        }
    })?;
    close(
        OpenFile {
            name,
            writer,
            rows: 0,
        },
        dir,
        area,
    )
}

fn open_file(shared: &Encoding, dir: &Path, index: usize) -> Result<OpenFile, LoadError> {
    let name = format!("part-{index:05}.parquet");
    let path = dir.join(&name);
    let file = File::create(&path).map_err(shared.io(&path))?;
    let sink = HashingWriter {
        inner: BufWriter::with_capacity(IO_BUFFER, file),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let writer = ArrowWriter::try_new(sink, shared.schema.clone(), Some(shared.props.clone()))
        .map_err(|e| shared.parquet(e))?;
    Ok(OpenFile {
        name,
        writer,
        rows: 0,
    })
}

/// Starts writing a file's dirty pages to disk without waiting for them,
/// so the sync when the load is published has little left to do (joblog at
/// 1M citizens writes ~115 MB, which held publication up).
fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: an open descriptor and plain integers; nothing is read or
        // written through pointers. Best effort: a failed writeback is
        // reported by `syncfs` at publication (Linux 5.8 and later).
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

struct OpenFile {
    name: String,
    writer: ArrowWriter<HashingWriter>,
    rows: u64,
}

fn close(open: OpenFile, dir: &Path, area: &str) -> Result<FileEntry, LoadError> {
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
    // Not synced here: publishing syncs every file of the load at once (`load::publish_all`).
    inner.into_inner().map_err(|e| io(e.into_error()))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::AuthorityKind;
    use crate::source::ColumnType;
    use arrow_array::Int64Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn area() -> Area {
        Area {
            id: "joblog".into(),
            version: 1,
            table: "t".into(),
            journal: "j".into(),
            key: vec!["id".into()],
            sequence_column: "seq".into(),
            operation_column: "op".into(),
            changed_at_column: "at".into(),
            route_kommune: Some("kommune".into()),
            route_akasse: None,
            draft_column: None,
            person_column: "id".into(),
            exclude_columns: vec![],
            schedule_delta: None,
            schedule_full: None,
            retention_full_loads: 2,
            legacy: None,
            line: 1,
            description: None,
            fields: Default::default(),
            field_lines: Default::default(),
            lifecycle: None,
        }
    }

    fn columns() -> Vec<Column> {
        [("id", ColumnType::Int64), ("kommune", ColumnType::Text)]
            .into_iter()
            .map(|(name, ty)| Column {
                name: name.into(),
                ty,
                sql_type: String::new(),
            })
            .collect()
    }

    /// Six municipalities, the first getting half of all rows.
    fn kommuner() -> Vec<AuthorityId> {
        AuthorityId::all()
            .into_iter()
            .filter(|a| a.kind == AuthorityKind::Kommune)
            .take(6)
            .collect()
    }

    fn batch(from: i64, rows: i64) -> RecordBatch {
        let k = kommuner();
        let ids: Vec<i64> = (from..from + rows).collect();
        let codes: Vec<String> = ids
            .iter()
            .map(|i| {
                k[if i % 2 == 0 {
                    0
                } else {
                    1 + (i / 2 % 5) as usize
                }]
                .code_str()
            })
            .collect();
        RecordBatch::try_new(
            arrow_schema(&columns()),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(codes)),
            ],
        )
        .unwrap()
    }

    /// Every file's ids in order, and the row group sizes.
    fn read_back(dir: &Path, files: &[FileEntry]) -> (Vec<i64>, Vec<i64>) {
        let (mut ids, mut groups) = (Vec::new(), Vec::new());
        for f in files {
            let builder =
                ParquetRecordBatchReaderBuilder::try_new(File::open(dir.join(&f.name)).unwrap())
                    .unwrap();
            let meta = builder.metadata().clone();
            groups.extend(meta.row_groups().iter().map(|g| g.num_rows()));
            let mut n = 0;
            for b in builder.build().unwrap() {
                let b = b.unwrap();
                n += b.num_rows() as u64;
                ids.extend(b.column(0).as_primitive::<Int64Type>().values().iter());
            }
            assert_eq!(n, f.rows, "{}", f.name);
        }
        (ids, groups)
    }

    /// Loads `batch` and gives the footer of the first municipality's first file.
    fn first_footer(
        columns: &[Column],
        batch: &RecordBatch,
    ) -> Arc<parquet::file::metadata::ParquetMetaData> {
        let tmp = tempfile::tempdir().unwrap();
        let mut fanout = Fanout::new(tmp.path().to_path_buf(), &area(), columns);
        fanout.write(batch).unwrap();
        let (outputs, _) = fanout.finish().unwrap();
        let a = kommuner()[0];
        let dir = tmp.path().join(a.kind.as_str()).join(a.code_str());
        let file = File::open(dir.join(&outputs[&a].files[0].name)).unwrap();
        ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .metadata()
            .clone()
    }

    #[test]
    fn text_columns_have_no_min_max_and_numbers_do() {
        let meta = first_footer(&columns(), &batch(0, 100));
        let group = meta.row_group(0);
        let (id, kommune) = (group.column(0), group.column(1));
        assert_eq!(id.column_path().string(), "id");
        let stats = id.statistics().expect("the number column has statistics");
        assert_eq!(stats.min_bytes_opt(), Some(&0i64.to_le_bytes()[..]));
        assert_eq!(stats.max_bytes_opt(), Some(&98i64.to_le_bytes()[..]));
        assert_eq!(kommune.column_path().string(), "kommune");
        assert!(kommune.statistics().is_none(), "{:?}", kommune.statistics());
    }

    /// Text columns of `rows` values: each value repeats `repeat` times in a
    /// row (0: all NULL).
    fn text_batch(columns: &[(&str, usize)], rows: usize) -> RecordBatch {
        let fields: Vec<arrow_schema::Field> = columns
            .iter()
            .map(|(name, _)| arrow_schema::Field::new(*name, arrow_schema::DataType::Utf8, true))
            .collect();
        let arrays = columns
            .iter()
            .map(|(_, repeat)| -> arrow_array::ArrayRef {
                Arc::new(StringArray::from_iter((0..rows).map(|i| match repeat {
                    0 => None,
                    r => Some(format!("{:08}", (i / r) * 7919 % 100_000_000)),
                })))
            })
            .collect();
        RecordBatch::try_new(Arc::new(arrow_schema::Schema::new(fields)), arrays).unwrap()
    }

    /// One text column: `distinct - 1` different values, then one value repeated.
    fn with_distinct(distinct: usize, rows: usize) -> RecordBatch {
        let values = (0..rows).map(|i| format!("v{}", i.min(distinct - 1)));
        let schema = arrow_schema::Schema::new(vec![arrow_schema::Field::new(
            "c",
            arrow_schema::DataType::Utf8,
            true,
        )]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![Arc::new(StringArray::from_iter_values(values))],
        )
        .unwrap()
    }

    #[test]
    fn only_text_columns_mostly_distinct_in_enough_values_go_without_a_dictionary() {
        let cols = [
            ("unique", 1),
            ("pairs", 2),
            ("tens", 10),
            ("nulls", 0),
            ("keyed", 1),
        ];
        let big = text_batch(&cols, 3000);
        let plain = vec!["keyed".to_string()];
        let judge =
            |batches: &[RecordBatch]| mostly_distinct_text(&batches[0].schema(), batches, &plain);
        assert_eq!(judge(std::slice::from_ref(&big)), ["unique"]);
        // Over several batches the values are judged together.
        assert_eq!(
            judge(&[big.slice(0, 1500), big.slice(1500, 1500)]),
            ["unique"]
        );
        // Too few values to judge: every dictionary stays.
        assert!(judge(&[big.slice(0, SAMPLE_MIN - 1)]).is_empty());
        assert_eq!(judge(&[big.slice(0, SAMPLE_MIN)]), ["unique"]);
        // More than half distinct is enough; exactly half is not.
        let judge = |b: RecordBatch| mostly_distinct_text(&b.schema(), &[b], &[]);
        assert_eq!(judge(with_distinct(1001, 2000)), ["c"]);
        assert!(judge(with_distinct(1000, 2000)).is_empty());
        // Only the first SAMPLE_VALUES values count: unique ones, then repeats.
        assert_eq!(
            judge(with_distinct(SAMPLE_VALUES, 3 * SAMPLE_VALUES)),
            ["c"]
        );
    }

    #[test]
    fn a_load_writes_mostly_distinct_text_without_a_dictionary_and_the_rest_with_one() {
        let columns: Vec<Column> = ["kommune", "unique", "tens"]
            .into_iter()
            .map(|name| Column {
                name: name.into(),
                ty: ColumnType::Text,
                sql_type: String::new(),
            })
            .collect();
        let a = kommuner()[0];
        let rows = 4000;
        let mut batch = text_batch(&[("kommune", 1), ("unique", 1), ("tens", 10)], rows);
        batch = RecordBatch::try_new(
            arrow_schema(&columns),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|_| a.code_str()),
                )),
                batch.column(1).clone(),
                batch.column(2).clone(),
            ],
        )
        .unwrap();
        let meta = first_footer(&columns, &batch);
        let group = meta.row_group(0);
        assert_eq!(group.num_rows(), rows as i64);
        let dictionary = |i: usize| group.column(i).dictionary_page_offset().is_some();
        assert!(!dictionary(1), "the unique column has a dictionary");
        assert!(dictionary(2), "the repeating column has no dictionary");
    }

    #[test]
    fn every_authority_gets_its_rows_in_order_across_jobs_and_files() {
        let tmp = tempfile::tempdir().unwrap();
        let mut fanout = Fanout::new(tmp.path().to_path_buf(), &area(), &columns());
        // Small limits, so that rows leave both because an authority has a
        // job's worth and because all pending rows pass the budget.
        fanout.limits = Limits {
            job_rows: 700,
            pending_bytes: 16 << 10,
            file_rows: 1500,
        };
        let total = 12_000;
        for from in (0..total).step_by(500) {
            fanout.write(&batch(from, 500)).unwrap();
        }
        let (outputs, withheld) = fanout.finish().unwrap();
        assert!(withheld.is_empty());
        let k = kommuner();
        assert_eq!(outputs.keys().copied().collect::<Vec<_>>(), {
            let mut k = k.clone();
            k.sort();
            k
        });
        let mut seen = 0;
        for (i, authority) in k.iter().enumerate() {
            let dir = tmp
                .path()
                .join(authority.kind.as_str())
                .join(authority.code_str());
            let files = &outputs[authority].files;
            let (ids, groups) = read_back(&dir, files);
            let expected: Vec<i64> = (0..total)
                .filter(|n| {
                    if i == 0 {
                        n % 2 == 0
                    } else {
                        n % 2 == 1 && (n / 2 % 5) as usize == i - 1
                    }
                })
                .collect();
            assert_eq!(ids, expected, "{authority:?}");
            seen += ids.len();
            // No file over the file limit; the large authority spans files and row groups.
            assert!(files.iter().all(|f| f.rows <= 1500));
            if i == 0 {
                assert_eq!(files.len(), 4, "6000 rows in files of 1500");
                assert!(groups.len() >= 8, "jobs of at most 750 rows: {groups:?}");
            }
            // A job is sent once it reaches 700 rows; a part adds at most 250.
            assert!(groups.iter().all(|g| *g <= 700 + 250), "{groups:?}");
        }
        assert_eq!(seen, total as usize);
    }

    #[test]
    fn an_unwritable_staging_folder_fails_the_load_naming_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = tmp.path().join("staging");
        std::fs::write(&staging, "not a folder").unwrap();
        let mut fanout = Fanout::new(staging.clone(), &area(), &columns());
        fanout.limits.job_rows = 10;
        let mut result = Ok(());
        for from in (0..5000).step_by(500) {
            result = fanout.write(&batch(from, 500));
            if result.is_err() {
                break;
            }
        }
        let err = match result {
            Err(e) => e,
            Ok(()) => fanout.finish().err().expect("the load fails"),
        };
        let text = err.to_string();
        assert!(text.contains(&staging.display().to_string()), "{text}");
    }
}
