//! The DFDG reader: schema introspection and streaming extracts, for SQLite
//! and PostgreSQL alike. Rows leave this module only as Arrow record batches.
//! Drafts and excluded columns are filtered in the query itself, so they are
//! never even read from the database.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder,
    TimestampMicrosecondBuilder,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use futures::TryStreamExt;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Row, ValueRef};
use tokio::sync::mpsc;

use crate::config::{Area, TableColumns};

mod pgcopy;
mod text;

/// The same decoding for SQLite and PostgreSQL rows (their row types differ,
/// the code does not). Errors name the column and row, never the value.
macro_rules! append_row {
    ($batcher:expr, $row:expr) => {{
        let row = &$row;
        for i in 0..$batcher.builders.len() {
            let null = row
                .try_get_raw(i)
                .map_err(|e| $batcher.bad(i, e))?
                .is_null();
            let res: Result<(), sqlx::Error> = match &mut $batcher.builders[i] {
                ColBuilder::Bool(b) => row
                    .try_get::<Option<bool>, _>(i)
                    .map(|v| b.append_option(v)),
                ColBuilder::Int16(b) => {
                    row.try_get::<Option<i16>, _>(i).map(|v| b.append_option(v))
                }
                ColBuilder::Int32(b) => {
                    row.try_get::<Option<i32>, _>(i).map(|v| b.append_option(v))
                }
                ColBuilder::Int64(b) => {
                    row.try_get::<Option<i64>, _>(i).map(|v| b.append_option(v))
                }
                ColBuilder::Float64(b) => {
                    row.try_get::<Option<f64>, _>(i).map(|v| b.append_option(v))
                }
                ColBuilder::Text(b) => row.try_get::<Option<&str>, _>(i).map(|v| b.append_str(v)),
                ColBuilder::Date(b) => row
                    .try_get::<Option<NaiveDate>, _>(i)
                    .map(|v| b.append_option(v.map(|d| (d - EPOCH).num_days() as i32))),
                ColBuilder::Timestamp(b) => {
                    if null {
                        b.append_null();
                        Ok(())
                    } else {
                        // Either kind of timestamp column; a naive one is taken as UTC.
                        row.try_get::<DateTime<Utc>, _>(i)
                            .or_else(|_| row.try_get::<NaiveDateTime, _>(i).map(|n| n.and_utc()))
                            .map(|t| b.append_value(t.timestamp_micros()))
                    }
                }
            };
            res.map_err(|e| $batcher.bad(i, e))?;
        }
        $batcher.len += 1;
        $batcher.total += 1;
    }};
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to source {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("source query on {table} failed: {source}")]
    Query { table: String, source: sqlx::Error },
    #[error("source table {table} has no columns (does it exist?)")]
    NoTable { table: String },
    #[error("source column {table}.{column} has type {sql_type}, which udstil cannot publish")]
    UnsupportedType {
        table: String,
        column: String,
        sql_type: String,
    },
    #[error(
        "source row {row} of {table}: column {column} does not hold a valid {expected}: {source}"
    )]
    BadValue {
        table: String,
        column: String,
        row: u64,
        expected: &'static str,
        source: sqlx::Error,
    },
    #[error("the load stopped reading (its writer failed)")]
    ConsumerGone,
    #[error(
        "source journal {table}: {open} transaction(s) still writing after {waited_secs} s; \
         the load waits for them so that no change is skipped, and will be retried"
    )]
    Unsettled {
        table: String,
        open: i64,
        waited_secs: u64,
    },
    #[error("source journal {table} kept changing under the snapshot after {attempts} attempts")]
    NoStableSnapshot { table: String, attempts: u32 },
}

impl SourceError {
    /// Whether DFDG could not be reached (or the connection to it broke),
    /// as opposed to answering with an error.
    pub fn is_unreachable(&self) -> bool {
        match self {
            SourceError::Connect { .. } => true,
            SourceError::Query { source, .. } => matches!(
                source,
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
            ),
            _ => false,
        }
    }
}

/// How long a load waits for DFDG transactions still writing the journal.
const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
const SETTLE_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// PostgreSQL hands out sequence numbers before commit, so a journal row with
/// a lower sequence can become visible after one with a higher sequence. A
/// watermark taken as `MAX(seq)` is only safe once every transaction that was
/// writing the journal when it was read has ended: such a transaction holds
/// `RowExclusiveLock` on the journal from before it draws its sequence number
/// (a column default or trigger, in the INSERT itself) until it commits or
/// aborts. Only `pg_locks` is read, so a read-only account suffices.
async fn wait_for_journal_writers(
    pool: &PgPool,
    journal: &str,
    timeout: std::time::Duration,
) -> Result<(), SourceError> {
    let qerr = |source| SourceError::Query {
        table: journal.to_string(),
        source,
    };
    let rel = quote(journal);
    let writers: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT virtualtransaction FROM pg_locks \
         WHERE locktype = 'relation' AND relation = to_regclass($1) \
         AND mode = 'RowExclusiveLock' AND pid IS DISTINCT FROM pg_backend_pid()",
    )
    .bind(&rel)
    .fetch_all(pool)
    .await
    .map_err(qerr)?;
    if writers.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT virtualtransaction) FROM pg_locks \
             WHERE locktype = 'relation' AND relation = to_regclass($1) \
             AND virtualtransaction = ANY($2)",
        )
        .bind(&rel)
        .bind(&writers)
        .fetch_one(pool)
        .await
        .map_err(qerr)?;
        if open == 0 {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(SourceError::Unsettled {
                table: journal.to_string(),
                open,
                waited_secs: started.elapsed().as_secs(),
            });
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// The column types udstil publishes; every source type maps to one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Bool,
    Int16,
    Int32,
    Int64,
    Float64,
    Text,
    Date,
    Timestamp,
}

impl ColumnType {
    fn from_sqlite(declared: &str) -> Option<Self> {
        let d = declared.to_ascii_uppercase();
        Some(if d.contains("BOOL") {
            ColumnType::Bool
        } else if d.contains("INT") {
            ColumnType::Int64
        } else if d.contains("REAL") || d.contains("DOUB") || d.contains("FLOA") {
            ColumnType::Float64
        } else if d.contains("TIMESTAMP") || d.contains("DATETIME") {
            ColumnType::Timestamp
        } else if d == "DATE" {
            ColumnType::Date
        } else if d.contains("CHAR") || d.contains("TEXT") || d.contains("CLOB") {
            ColumnType::Text
        } else {
            return None;
        })
    }

    fn from_postgres(data_type: &str) -> Option<Self> {
        Some(match data_type {
            "boolean" => ColumnType::Bool,
            "smallint" => ColumnType::Int16,
            "integer" => ColumnType::Int32,
            "bigint" => ColumnType::Int64,
            "double precision" => ColumnType::Float64,
            "text" | "character varying" | "character" => ColumnType::Text,
            "date" => ColumnType::Date,
            "timestamp with time zone" | "timestamp without time zone" => ColumnType::Timestamp,
            _ => return None,
        })
    }

    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Int16 => DataType::Int16,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Text => DataType::Utf8,
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }

    fn expected(self) -> &'static str {
        match self {
            ColumnType::Bool => "boolean",
            ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 => "integer",
            ColumnType::Float64 => "number",
            ColumnType::Text => "text",
            ColumnType::Date => "date",
            ColumnType::Timestamp => "timestamp",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub sql_type: String,
}

/// A connection pool to DFDG; the URL decides the database.
#[derive(Debug, Clone)]
pub enum Source {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// What a full extract saw: the journal's high-water mark at the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub watermark: i64,
    pub rows: u64,
}

pub const BATCH_ROWS: usize = 8192;

/// What an extract sends its consumer.
#[derive(Debug)]
pub enum Extracted {
    /// Rows in source order, for the consumer to route.
    Rows(RecordBatch),
    /// Rows that all go to `part` (see [`Partition`]), in source order within
    /// the part; `read` source rows were decoded since the previous item.
    Part {
        part: usize,
        batch: RecordBatch,
        read: u64,
    },
}

/// Splits a full extract into parts as it is decoded, so each row is
/// decoded once, straight into the batch of every part it goes to, rather
/// than decoded into one batch and copied out per part afterwards.
pub trait Partition: Send {
    /// The published columns (indices) whose text decides a row's parts.
    fn columns(&self) -> &[usize];
    /// Appends the parts a row goes to, given those columns' values
    /// (`None` for NULL or text that is not UTF-8, which fails the row anyway).
    fn parts(&mut self, values: &[Option<&str>], out: &mut Vec<usize>);
    /// A part's batch is sent at this many rows...
    fn part_rows(&self) -> usize;
    /// ...or, largest first, when all parts' unsent rows pass this many bytes.
    fn budget_bytes(&self) -> usize;
}

impl Source {
    pub async fn connect(url: &str) -> Result<Source, SourceError> {
        let err = |source| SourceError::Connect {
            url: redact(url),
            source,
        };
        if url.starts_with("sqlite:") {
            let opts: SqliteConnectOptions = url.parse().map_err(err)?;
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(opts.read_only(false))
                .await
                .map_err(err)?;
            Ok(Source::Sqlite(pool))
        } else {
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(std::time::Duration::from_secs(10))
                .connect(url)
                .await
                .map_err(err)?;
            Ok(Source::Postgres(pool))
        }
    }

    /// Creates the SQLite file if missing (for `fixtures generate`).
    pub async fn create(url: &str) -> Result<Source, SourceError> {
        if url.starts_with("sqlite:") {
            let err = |source| SourceError::Connect {
                url: redact(url),
                source,
            };
            let opts: SqliteConnectOptions = url.parse().map_err(err)?;
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(
                    opts.create_if_missing(true)
                        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal),
                )
                .await
                .map_err(err)?;
            Ok(Source::Sqlite(pool))
        } else {
            Source::connect(url).await
        }
    }

    pub async fn close(&self) {
        match self {
            Source::Sqlite(p) => p.close().await,
            Source::Postgres(p) => p.close().await,
        }
    }

    /// The columns of one table in declaration order.
    pub async fn columns(&self, table: &str) -> Result<Vec<Column>, SourceError> {
        let qerr = |source| SourceError::Query {
            table: table.to_string(),
            source,
        };
        let raw: Vec<(String, String)> = match self {
            Source::Sqlite(p) => sqlx::query_as("SELECT name, type FROM pragma_table_info(?1) ORDER BY cid")
                .bind(table)
                .fetch_all(p)
                .await
                .map_err(qerr)?,
            Source::Postgres(p) => sqlx::query_as(
                "SELECT column_name::text, data_type::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
            )
            .bind(table)
            .fetch_all(p)
            .await
            .map_err(qerr)?,
        };
        if raw.is_empty() {
            return Err(SourceError::NoTable {
                table: table.to_string(),
            });
        }
        raw.into_iter()
            .map(|(name, sql_type)| {
                let ty = match self {
                    Source::Sqlite(_) => ColumnType::from_sqlite(&sql_type),
                    Source::Postgres(_) => ColumnType::from_postgres(&sql_type),
                };
                match ty {
                    Some(ty) => Ok(Column { name, ty, sql_type }),
                    None => Err(SourceError::UnsupportedType {
                        table: table.to_string(),
                        column: name,
                        sql_type,
                    }),
                }
            })
            .collect()
    }

    /// Column names of every table the config's areas name (missing tables are left out).
    pub async fn table_columns(
        &self,
        tables: &BTreeSet<String>,
    ) -> Result<TableColumns, SourceError> {
        let mut out = BTreeMap::new();
        for t in tables {
            match self.columns(t).await {
                Ok(cols) => {
                    out.insert(t.clone(), cols.into_iter().map(|c| c.name).collect());
                }
                Err(SourceError::NoTable { .. }) => {}
                // A column of a type we cannot publish is still a known name here;
                // the load reports the type problem.
                Err(SourceError::UnsupportedType { .. }) => {
                    let names: Vec<(String,)> = match self {
                        Source::Sqlite(p) => {
                            sqlx::query_as("SELECT name FROM pragma_table_info(?1)")
                                .bind(t)
                                .fetch_all(p)
                                .await
                        }
                        Source::Postgres(p) => {
                            sqlx::query_as(
                                "SELECT column_name::text FROM information_schema.columns \
                             WHERE table_schema = current_schema() AND table_name = $1",
                            )
                            .bind(t)
                            .fetch_all(p)
                            .await
                        }
                    }
                    .map_err(|source| SourceError::Query {
                        table: t.clone(),
                        source,
                    })?;
                    out.insert(t.clone(), names.into_iter().map(|(n,)| n).collect());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The columns a full load of `area` publishes: the table's columns less the
    /// excluded ones and the draft flag, in table order.
    pub async fn published_columns(&self, area: &Area) -> Result<Vec<Column>, SourceError> {
        Ok(self
            .columns(&area.table)
            .await?
            .into_iter()
            .filter(|c| area.publishes(&c.name))
            .collect())
    }

    /// Streams the current state of `area` (drafts left out) as record batches
    /// into `out`, from one consistent snapshot that also gives the watermark.
    /// From PostgreSQL the rows arrive split by `partition` into parts
    /// ([`Extracted::Part`]), and memory is bounded by its budget; from
    /// SQLite as [`Extracted::Rows`] of [`BATCH_ROWS`], bounded by the
    /// channel's capacity, for the consumer to route.
    pub async fn full_extract(
        &self,
        area: &Area,
        columns: &[Column],
        partition: &mut dyn Partition,
        out: mpsc::Sender<Extracted>,
    ) -> Result<Snapshot, SourceError> {
        let schema = arrow_schema(columns);
        let sql = full_extract_sql(area, columns);
        let hwm_sql = format!(
            "SELECT COALESCE(MAX({}), 0) FROM {}",
            quote(&area.sequence_column),
            quote(&area.journal)
        );
        let qerr = |table: &str| {
            let table = table.to_string();
            move |source| SourceError::Query { table, source }
        };
        let mut batcher = Batcher::new(schema, columns, &area.table);
        macro_rules! stream_rows {
            ($tx:expr) => {{
                let mut rows = sqlx::query(AssertSqlSafe(sql.as_str())).fetch(&mut *$tx);
                while let Some(row) = rows.try_next().await.map_err(qerr(&area.table))? {
                    append_row!(batcher, row);
                    if batcher.len() >= BATCH_ROWS {
                        out.send(Extracted::Rows(batcher.finish()))
                            .await
                            .map_err(|_| SourceError::ConsumerGone)?;
                    }
                }
            }};
        }
        let watermark = match self {
            // SQLite: a read transaction is a snapshot (WAL mode), and its
            // single writer commits sequence numbers in order.
            Source::Sqlite(p) => {
                let mut tx = p.begin().await.map_err(qerr(&area.table))?;
                let (watermark,): (i64,) = sqlx::query_as(AssertSqlSafe(hwm_sql.as_str()))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(qerr(&area.journal))?;
                stream_rows!(tx);
                tx.rollback().await.map_err(qerr(&area.table))?;
                watermark
            }
            // PostgreSQL: the binary COPY of the same query, decoded straight
            // into Arrow (see `pgcopy`), in the snapshot the watermark came from.
            Source::Postgres(p) => {
                let (mut tx, watermark) = self.stable_snapshot(p, area, &hwm_sql).await?;
                copy_rows(&mut tx, &sql, &mut batcher, partition, &out).await?;
                tx.rollback().await.map_err(qerr(&area.table))?;
                watermark
            }
        };
        let rows = batcher.total;
        if batcher.len() > 0 {
            out.send(Extracted::Rows(batcher.finish()))
                .await
                .map_err(|_| SourceError::ConsumerGone)?;
        }
        Ok(Snapshot { watermark, rows })
    }
}

/// Streams `COPY (sql) TO STDOUT (FORMAT binary)` into the batchers of the
/// parts each row goes to ([`Parts`]), sending them as they fill. `batcher`
/// holds no rows: it gives the columns, and its `total` counts every row read.
async fn copy_rows(
    conn: &mut sqlx::PgConnection,
    sql: &str,
    batcher: &mut Batcher,
    partition: &mut dyn Partition,
    out: &mpsc::Sender<Extracted>,
) -> Result<(), SourceError> {
    let table = batcher.table.clone();
    let qerr = |source| SourceError::Query {
        table: table.clone(),
        source,
    };
    let statement = format!("COPY ({sql}) TO STDOUT (FORMAT binary)");
    let mut stream = conn.copy_out_raw(&statement).await.map_err(qerr)?;
    let mut decoder = pgcopy::CopyDecoder::new(batcher.builders.len());
    let mut parts = Parts::new(partition, batcher);
    let mut ready = Vec::new();
    // A bad value's row is the row being read: one past those read before it.
    let copy_err = |batcher: &Batcher, read: u64, e: pgcopy::CopyError| match e {
        pgcopy::CopyError::Format(m) => {
            qerr(sqlx::Error::Protocol(format!("binary COPY stream: {m}")))
        }
        pgcopy::CopyError::Value { column, reason } => {
            batcher.bad_at(column, read + 1, sqlx::Error::Decode(reason.into()))
        }
    };
    let mut done = false;
    while !done {
        match stream.try_next().await.map_err(qerr)? {
            Some(chunk) => decoder
                .feed(&chunk, &mut |tuple| parts.append(tuple, &mut ready))
                .map_err(|e| copy_err(batcher, parts.read, e))?,
            None => {
                decoder
                    .finish()
                    .map_err(|e| copy_err(batcher, parts.read, e))?;
                parts.finish(&mut ready);
                batcher.total = parts.read;
                done = true;
            }
        }
        for item in ready.drain(..) {
            out.send(item)
                .await
                .map_err(|_| SourceError::ConsumerGone)?;
        }
    }
    Ok(())
}

/// Routing columns a [`Partition`] may read (a municipality and a fund).
const MAX_ROUTING: usize = 2;

/// The per-part batchers of a partitioned extract, and their memory budget.
struct Parts<'p> {
    partition: &'p mut dyn Partition,
    routing: Vec<usize>,
    template: Batcher,
    /// Index into `open` by part number (`u32::MAX`: none yet).
    slot: Vec<u32>,
    open: Vec<PartRows>,
    /// Unsent bytes of all parts, as they were in the stream.
    bytes: usize,
    /// Source rows read, and those already reported in a sent item.
    read: u64,
    reported: u64,
    targets: Vec<usize>,
}

struct PartRows {
    part: usize,
    batcher: Batcher,
    bytes: usize,
}

impl<'p> Parts<'p> {
    fn new(partition: &'p mut dyn Partition, like: &Batcher) -> Self {
        assert!(
            partition.columns().len() <= MAX_ROUTING,
            "a partition routes on at most {MAX_ROUTING} columns"
        );
        Parts {
            routing: partition.columns().to_vec(),
            partition,
            template: like.empty_like(),
            slot: Vec::new(),
            open: Vec::new(),
            bytes: 0,
            read: 0,
            reported: 0,
            targets: Vec::new(),
        }
    }

    /// Appends a tuple to each of its parts; full or over-budget parts go to `ready`.
    fn append(
        &mut self,
        tuple: &pgcopy::Tuple<'_>,
        ready: &mut Vec<Extracted>,
    ) -> Result<(), pgcopy::CopyError> {
        let mut values = [None; MAX_ROUTING];
        let values = &mut values[..self.routing.len()];
        for (v, c) in values.iter_mut().zip(&self.routing) {
            *v = tuple.field(*c).and_then(|b| std::str::from_utf8(b).ok());
        }
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        self.partition.parts(values, &mut targets);
        for &part in &targets {
            if part >= self.slot.len() {
                self.slot.resize(part + 1, u32::MAX);
            }
            if self.slot[part] == u32::MAX {
                self.slot[part] = self.open.len() as u32;
                self.open.push(PartRows {
                    part,
                    batcher: self.template.empty_like(),
                    bytes: 0,
                });
            }
            let i = self.slot[part] as usize;
            let rows = &mut self.open[i];
            pgcopy::append_tuple(&mut rows.batcher, tuple)?;
            rows.bytes += tuple.bytes;
            self.bytes += tuple.bytes;
            if rows.batcher.len() >= self.partition.part_rows() {
                self.send(i, ready);
            }
        }
        self.targets = targets;
        self.read += 1;
        while self.bytes > self.partition.budget_bytes() {
            let largest = (0..self.open.len())
                .max_by_key(|i| self.open[*i].bytes)
                .expect("unsent bytes are counted from open parts");
            self.send(largest, ready);
        }
        Ok(())
    }

    fn send(&mut self, i: usize, ready: &mut Vec<Extracted>) {
        let rows = &mut self.open[i];
        self.bytes -= rows.bytes;
        rows.bytes = 0;
        ready.push(Extracted::Part {
            part: rows.part,
            batch: rows.batcher.finish(),
            read: self.read - self.reported,
        });
        self.reported = self.read;
    }

    /// Sends every part's remaining rows, in part order. (Rows read after
    /// the last part was sent that went to no part are in no item's `read`;
    /// the extract's total counts them.)
    fn finish(&mut self, ready: &mut Vec<Extracted>) {
        let mut order: Vec<usize> = (0..self.open.len())
            .filter(|i| self.open[*i].batcher.len() > 0)
            .collect();
        order.sort_by_key(|i| self.open[*i].part);
        for i in order {
            self.send(i, ready);
        }
    }
}

impl Source {
    /// A repeatable-read snapshot of DFDG whose journal watermark is exact:
    /// every sequence number up to it is visible in the snapshot or was
    /// aborted. A transaction that drew a lower number but had not committed
    /// when the snapshot was taken would otherwise be in neither this full
    /// load nor the next delta; if one is found, the snapshot is retaken.
    async fn stable_snapshot(
        &self,
        pool: &PgPool,
        area: &Area,
        hwm_sql: &str,
    ) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, i64), SourceError> {
        const ATTEMPTS: u32 = 5;
        let qerr = |source| SourceError::Query {
            table: area.journal.clone(),
            source,
        };
        let count_sql = |from: i64, to: i64| {
            format!(
                "SELECT count(*) FROM {} WHERE {seq} > {from} AND {seq} <= {to}",
                quote(&area.journal),
                seq = quote(&area.sequence_column),
            )
        };
        // Everything up to `settled` is committed or aborted before the snapshot.
        let mut settled = self.high_water_mark(area).await?;
        for _ in 0..ATTEMPTS {
            let mut tx = pool.begin().await.map_err(qerr)?;
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await
                .map_err(qerr)?;
            let (watermark,): (i64,) = sqlx::query_as(AssertSqlSafe(hwm_sql))
                .fetch_one(&mut *tx)
                .await
                .map_err(qerr)?;
            let seen: i64 = sqlx::query_scalar(AssertSqlSafe(count_sql(settled, watermark)))
                .fetch_one(&mut *tx)
                .await
                .map_err(qerr)?;
            wait_for_journal_writers(pool, &area.journal, SETTLE_TIMEOUT).await?;
            let committed: i64 = sqlx::query_scalar(AssertSqlSafe(count_sql(settled, watermark)))
                .fetch_one(pool)
                .await
                .map_err(qerr)?;
            if seen == committed {
                return Ok((tx, watermark));
            }
            tx.rollback().await.map_err(qerr)?;
            settled = watermark;
        }
        Err(SourceError::NoStableSnapshot {
            table: area.journal.clone(),
            attempts: ATTEMPTS,
        })
    }
}

/// A key column's value as text, the way `load::writer::key_string` writes it.
fn key_text_sql(keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("CAST({} AS TEXT)", quote(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where one row stood at a watermark: the journal's last entry for its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorRow {
    pub key: String,
    pub op: String,
    pub kommune: Option<String>,
    pub akasse: Option<String>,
    pub draft: bool,
}

impl Source {
    /// The journal's highest sequence number for an area now, once every
    /// sequence number up to it is settled (committed or aborted), so that a
    /// delta up to it can never skip a late commit.
    pub async fn high_water_mark(&self, area: &Area) -> Result<i64, SourceError> {
        let sql = format!(
            "SELECT CAST(COALESCE(MAX({}), 0) AS BIGINT) FROM {}",
            quote(&area.sequence_column),
            quote(&area.journal)
        );
        let qerr = |source| SourceError::Query {
            table: area.journal.clone(),
            source,
        };
        let (hwm,): (i64,) = match self {
            // SQLite has one writer and commits its sequence numbers at once.
            Source::Sqlite(p) => sqlx::query_as(AssertSqlSafe(sql))
                .fetch_one(p)
                .await
                .map_err(qerr)?,
            Source::Postgres(p) => {
                let hwm = sqlx::query_as(AssertSqlSafe(sql))
                    .fetch_one(p)
                    .await
                    .map_err(qerr)?;
                // Writers are looked up after MAX was read: any later writer
                // draws a sequence number above it.
                wait_for_journal_writers(p, &area.journal, SETTLE_TIMEOUT).await?;
                hwm
            }
        };
        Ok(hwm)
    }

    /// For every key changed in `(from, to]`, its journal state at `from`
    /// (keys first seen in the window are absent). Cost grows with the number
    /// of changed keys, not with the table (given an index on the journal key).
    pub async fn prior_rows(
        &self,
        area: &Area,
        from: i64,
        to: i64,
    ) -> Result<Vec<PriorRow>, SourceError> {
        let keys = area
            .key
            .iter()
            .map(|k| quote(k))
            .collect::<Vec<_>>()
            .join(", ");
        let seq = quote(&area.sequence_column);
        let j = quote(&area.journal);
        let opt = |c: &Option<String>| {
            c.as_ref().map_or("CAST(NULL AS TEXT)".to_string(), |c| {
                format!("CAST({} AS TEXT)", quote(c))
            })
        };
        let draft = area.draft_column.as_ref().map_or("FALSE".to_string(), |d| {
            format!("COALESCE({}, FALSE)", quote(d))
        });
        // Integers are our own watermarks, not input, so they are inlined.
        let sql = format!(
            "SELECT {key_text}, CAST({op} AS TEXT), {kommune}, {akasse}, {draft} FROM {j} \
             WHERE {seq} IN (SELECT MAX({seq}) FROM {j} WHERE {seq} <= {from} AND ({keys}) IN \
             (SELECT {keys} FROM {j} WHERE {seq} > {from} AND {seq} <= {to}) GROUP BY {keys})",
            key_text = key_text_sql(&area.key),
            op = quote(&area.operation_column),
            kommune = opt(&area.route_kommune),
            akasse = opt(&area.route_akasse),
        );
        let qerr = |source| SourceError::Query {
            table: area.journal.clone(),
            source,
        };
        let nkeys = area.key.len();
        macro_rules! fetch {
            ($pool:expr) => {{
                let rows = sqlx::query(AssertSqlSafe(sql))
                    .fetch_all($pool)
                    .await
                    .map_err(qerr)?;
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    let mut key = String::new();
                    for i in 0..nkeys {
                        if i > 0 {
                            key.push('\u{1f}');
                        }
                        key.push_str(&row.try_get::<String, _>(i).map_err(qerr)?);
                    }
                    out.push(PriorRow {
                        key,
                        op: row.try_get(nkeys).map_err(qerr)?,
                        kommune: row.try_get(nkeys + 1).map_err(qerr)?,
                        akasse: row.try_get(nkeys + 2).map_err(qerr)?,
                        draft: row.try_get(nkeys + 3).map_err(qerr)?,
                    });
                }
                out
            }};
        }
        Ok(match self {
            Source::Sqlite(p) => fetch!(p),
            Source::Postgres(p) => fetch!(p),
        })
    }

    /// Streams the journal window `(from, to]` in sequence order: the
    /// published columns, then `_draft`, `_seq`, `_op`, `_changed_at`.
    pub async fn delta_extract(
        &self,
        area: &Area,
        columns: &[Column],
        from: i64,
        to: i64,
        out: mpsc::Sender<Extracted>,
    ) -> Result<u64, SourceError> {
        let mut all = columns.to_vec();
        for (name, ty) in [
            ("_draft", ColumnType::Bool),
            ("_seq", ColumnType::Int64),
            ("_op", ColumnType::Text),
            ("_changed_at", ColumnType::Timestamp),
        ] {
            all.push(Column {
                name: name.into(),
                ty,
                sql_type: String::new(),
            });
        }
        let select = columns
            .iter()
            .map(|c| quote(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let draft = area.draft_column.as_ref().map_or("FALSE".to_string(), |d| {
            format!("COALESCE({}, FALSE)", quote(d))
        });
        let seq = quote(&area.sequence_column);
        let sql = format!(
            "SELECT {select}, {draft}, CAST({seq} AS BIGINT), CAST({op} AS TEXT), {changed} FROM {j} \
             WHERE {seq} > {from} AND {seq} <= {to} ORDER BY {seq}",
            op = quote(&area.operation_column),
            changed = quote(&area.changed_at_column),
            j = quote(&area.journal),
        );
        let qerr = |source| SourceError::Query {
            table: area.journal.clone(),
            source,
        };
        let mut batcher = Batcher::new(arrow_schema(&all), &all, &area.journal);
        macro_rules! stream {
            ($pool:expr) => {{
                let mut rows = sqlx::query(AssertSqlSafe(sql.as_str())).fetch($pool);
                while let Some(row) = rows.try_next().await.map_err(qerr)? {
                    append_row!(batcher, row);
                    if batcher.len() >= BATCH_ROWS {
                        out.send(Extracted::Rows(batcher.finish()))
                            .await
                            .map_err(|_| SourceError::ConsumerGone)?;
                    }
                }
            }};
        }
        match self {
            Source::Sqlite(p) => stream!(p),
            Source::Postgres(p) => stream!(p),
        }
        let rows = batcher.total;
        if batcher.len() > 0 {
            out.send(Extracted::Rows(batcher.finish()))
                .await
                .map_err(|_| SourceError::ConsumerGone)?;
        }
        Ok(rows)
    }
}

/// The query of a full extract: published columns, drafts left out, in key order.
pub fn full_extract_sql(area: &Area, columns: &[Column]) -> String {
    let select = columns
        .iter()
        .map(|c| quote(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let filter = match &area.draft_column {
        Some(d) => format!(" WHERE NOT COALESCE({}, FALSE)", quote(d)),
        None => String::new(),
    };
    let order = area
        .key
        .iter()
        .map(|k| quote(k))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT {select} FROM {}{filter} ORDER BY {order}",
        quote(&area.table)
    )
}

/// Hides a password in a URL before it reaches an error message or a log.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

pub fn quote(ident: &str) -> String {
    // Config validation allows only [A-Za-z0-9_] names; quoting keeps case in PostgreSQL.
    format!("\"{ident}\"")
}

pub fn arrow_schema(columns: &[Column]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(&c.name, c.ty.arrow(), true))
            .collect::<Vec<_>>(),
    ))
}

enum ColBuilder {
    Bool(BooleanBuilder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Text(text::TextBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
}

/// Accumulates rows into Arrow columns and cuts record batches.
pub struct Batcher {
    schema: SchemaRef,
    table: String,
    names: Vec<String>,
    types: Vec<ColumnType>,
    builders: Vec<ColBuilder>,
    len: usize,
    pub total: u64,
}

impl Batcher {
    pub fn new(schema: SchemaRef, columns: &[Column], table: &str) -> Self {
        let types: Vec<ColumnType> = columns.iter().map(|c| c.ty).collect();
        Batcher {
            builders: types.iter().map(|t| new_builder(*t)).collect(),
            names: columns.iter().map(|c| c.name.clone()).collect(),
            types,
            schema,
            table: table.to_string(),
            len: 0,
            total: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    pub fn finish(&mut self) -> RecordBatch {
        let arrays = self
            .builders
            .iter_mut()
            .map(|b| -> arrow_array::ArrayRef {
                match b {
                    ColBuilder::Bool(b) => Arc::new(b.finish()),
                    ColBuilder::Int16(b) => Arc::new(b.finish()),
                    ColBuilder::Int32(b) => Arc::new(b.finish()),
                    ColBuilder::Int64(b) => Arc::new(b.finish()),
                    ColBuilder::Float64(b) => Arc::new(b.finish()),
                    ColBuilder::Text(b) => Arc::new(b.finish()),
                    ColBuilder::Date(b) => Arc::new(b.finish()),
                    ColBuilder::Timestamp(b) => Arc::new(b.finish().with_timezone("UTC")),
                }
            })
            .collect();
        self.len = 0;
        RecordBatch::try_new(self.schema.clone(), arrays).expect("builders follow the schema")
    }

    /// An empty batcher of the same columns.
    fn empty_like(&self) -> Batcher {
        Batcher {
            schema: self.schema.clone(),
            table: self.table.clone(),
            names: self.names.clone(),
            types: self.types.clone(),
            builders: self.types.iter().map(|t| new_builder(*t)).collect(),
            len: 0,
            total: 0,
        }
    }

    fn bad(&self, col: usize, source: sqlx::Error) -> SourceError {
        self.bad_at(col, self.total + 1, source)
    }

    /// A bad value in column `col` of source row `row` (counted from 1).
    fn bad_at(&self, col: usize, row: u64, source: sqlx::Error) -> SourceError {
        SourceError::BadValue {
            table: self.table.clone(),
            column: self.names[col].clone(),
            row,
            expected: self.types[col].expected(),
            source,
        }
    }
}

fn new_builder(t: ColumnType) -> ColBuilder {
    match t {
        ColumnType::Bool => ColBuilder::Bool(BooleanBuilder::new()),
        ColumnType::Int16 => ColBuilder::Int16(Int16Builder::new()),
        ColumnType::Int32 => ColBuilder::Int32(Int32Builder::new()),
        ColumnType::Int64 => ColBuilder::Int64(Int64Builder::new()),
        ColumnType::Float64 => ColBuilder::Float64(Float64Builder::new()),
        ColumnType::Text => ColBuilder::Text(text::TextBuilder::default()),
        ColumnType::Date => ColBuilder::Date(Date32Builder::new()),
        ColumnType::Timestamp => ColBuilder::Timestamp(TimestampMicrosecondBuilder::new()),
    }
}

const EPOCH: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();

#[cfg(test)]
mod tests {
    use super::*;

    /// Routes on column 1: "101" goes to parts 101 and 7, "147" to 147, anything else nowhere.
    struct ByCode {
        columns: Vec<usize>,
    }

    impl Partition for ByCode {
        fn columns(&self) -> &[usize] {
            &self.columns
        }
        fn parts(&mut self, values: &[Option<&str>], out: &mut Vec<usize>) {
            match values[0] {
                Some("101") => out.extend([101, 7]),
                Some("147") => out.push(147),
                _ => {}
            }
        }
        fn part_rows(&self) -> usize {
            50
        }
        fn budget_bytes(&self) -> usize {
            1500
        }
    }

    fn tuple_bytes(id: i64, code: Option<&str>) -> Vec<u8> {
        let mut t = 2i16.to_be_bytes().to_vec();
        t.extend_from_slice(&8i32.to_be_bytes());
        t.extend_from_slice(&id.to_be_bytes());
        match code {
            None => t.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(c) => {
                t.extend_from_slice(&(c.len() as i32).to_be_bytes());
                t.extend_from_slice(c.as_bytes());
            }
        }
        t
    }

    #[test]
    fn a_partitioned_copy_gives_each_part_exactly_its_rows_in_order_within_budget() {
        let columns: Vec<Column> = [("id", ColumnType::Int64), ("code", ColumnType::Text)]
            .into_iter()
            .map(|(n, ty)| Column {
                name: n.into(),
                ty,
                sql_type: String::new(),
            })
            .collect();
        let batcher = Batcher::new(arrow_schema(&columns), &columns, "t");
        let codes = [Some("101"), Some("147"), Some("147"), Some("999"), None];
        let mut partition = ByCode { columns: vec![1] };
        let mut parts = Parts::new(&mut partition, &batcher);
        let mut decoder = pgcopy::CopyDecoder::new(2);
        let mut stream = b"PGCOPY\n\xff\r\n\0".to_vec();
        stream.extend_from_slice(&[0; 8]);
        decoder.feed(&stream, &mut |_| unreachable!()).unwrap();
        let mut ready = Vec::new();
        let mut expected: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
        let rows = 1000i64;
        for id in 0..rows {
            let code = codes[id as usize % codes.len()];
            for part in match code {
                Some("101") => vec![101, 7],
                Some("147") => vec![147],
                _ => vec![],
            } {
                expected.entry(part).or_default().push(id);
            }
            decoder
                .feed(&tuple_bytes(id, code), &mut |t| parts.append(t, &mut ready))
                .unwrap();
            assert!(parts.bytes <= 1500, "unsent bytes stay within the budget");
        }
        decoder
            .feed(&(-1i16).to_be_bytes(), &mut |_| unreachable!())
            .unwrap();
        decoder.finish().unwrap();
        parts.finish(&mut ready);
        assert_eq!(parts.read, rows as u64);
        let mut got: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
        let mut read = 0;
        let mut small = 0;
        for item in &ready {
            let Extracted::Part {
                part,
                batch,
                read: r,
            } = item
            else {
                panic!("a partitioned extract sends parts");
            };
            read += r;
            assert!(batch.num_rows() <= 50 && batch.num_rows() > 0);
            small += usize::from(batch.num_rows() < 50);
            let ids = batch
                .column(0)
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .unwrap();
            got.entry(*part).or_default().extend(ids.values().iter());
        }
        assert_eq!(got, expected);
        // The parts left at the end are sent after the last row was read.
        assert_eq!(read, rows as u64);
        // The budget, not only the row count, sent parts.
        assert!(small > 3, "{small} parts sent below 50 rows");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:///x.db"), "sqlite:///x.db");
    }

    #[test]
    fn maps_declared_types() {
        assert_eq!(ColumnType::from_sqlite("BIGINT"), Some(ColumnType::Int64));
        assert_eq!(
            ColumnType::from_sqlite("TIMESTAMPTZ"),
            Some(ColumnType::Timestamp)
        );
        assert_eq!(ColumnType::from_sqlite("DATE"), Some(ColumnType::Date));
        assert_eq!(ColumnType::from_sqlite("BLOB"), None);
        assert_eq!(ColumnType::from_postgres("numeric"), None);
        assert_eq!(
            ColumnType::from_postgres("integer"),
            Some(ColumnType::Int32)
        );
    }
}
