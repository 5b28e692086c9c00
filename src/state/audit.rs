//! The audit tables: appending to the hash chain, reading it back a page at
//! a time, retention, and the person index. The chain itself is computed in
//! `crate::audit`.

use super::{State, StateError};
use crate::audit::{self, Anchor, Event, PersonId, Record};

/// Columns of `audit` in the order `Record` reads them.
const COLUMNS: &str = "id, at, action, outcome, supplier, authority, area, load_id, file, address, \
                       key_fingerprint, bytes, detail, prev_hash, hash";

type Row = (
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    String,
    String,
);

fn record(r: Row) -> Record {
    Record {
        id: r.0,
        event: Event {
            at: r.1,
            action: r.2,
            outcome: r.3,
            supplier: r.4,
            authority: r.5,
            area: r.6,
            load_id: r.7,
            file: r.8,
            address: r.9,
            key_fingerprint: r.10,
            bytes: r.11,
            detail: r.12,
        },
        prev_hash: r.13,
        hash: r.14,
    }
}

/// What `udstil audit query` filters on; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub supplier: Option<String>,
    pub authority: Option<String>,
    pub area: Option<String>,
    pub action: Option<String>,
    /// RFC 3339 UTC bounds, `from` inclusive, `to` exclusive.
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: i64,
}

impl AuditFilter {
    /// The filter as ` supplier=bi-alpha area=joblog` (empty when unfiltered).
    pub fn describe(&self) -> String {
        [
            ("supplier", &self.supplier),
            ("authority", &self.authority),
            ("area", &self.area),
            ("action", &self.action),
            ("from", &self.from),
            ("to", &self.to),
        ]
        .iter()
        .filter_map(|(name, v)| v.as_ref().map(|v| format!(" {name}={v}")))
        .collect()
    }
}

/// A download of a file holding the person asked about.
pub type PersonDownload = Record;

/// Appends `events` in the open transaction `$tx`, linked onto the chain's
/// last row (or the anchor, or the genesis hash).
macro_rules! append_in {
    ($tx:expr, $events:expr) => {{
        let head: Option<(i64, String)> =
            sqlx::query_as("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")
                .fetch_optional(&mut *$tx)
                .await?;
        let head = match head {
            Some(h) => h,
            None => sqlx::query_as::<_, (i64, String)>(
                "SELECT last_removed_id, last_removed_hash FROM audit_anchor",
            )
            .fetch_optional(&mut *$tx)
            .await?
            .unwrap_or((0, audit::GENESIS.to_string())),
        };
        let records = audit::link(head.0, &head.1, $events);
        for r in &records {
            let e = &r.event;
            // A concurrent writer that took the same id makes this fail on the
            // primary key; the caller retries on the new head.
            sqlx::query(
                "INSERT INTO audit (id, at, action, outcome, supplier, authority, area, load_id, file, \
                 address, key_fingerprint, bytes, detail, prev_hash, hash) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            )
            .bind(r.id)
            .bind(&e.at)
            .bind(&e.action)
            .bind(&e.outcome)
            .bind(&e.supplier)
            .bind(&e.authority)
            .bind(&e.area)
            .bind(&e.load_id)
            .bind(&e.file)
            .bind(&e.address)
            .bind(&e.key_fingerprint)
            .bind(e.bytes)
            .bind(&e.detail)
            .bind(&r.prev_hash)
            .bind(&r.hash)
            .execute(&mut *$tx)
            .await?;
        }
        records
    }};
}

impl State {
    /// Appends events to the chain in one transaction.
    pub async fn audit_append(&self, events: &[Event]) -> Result<Vec<Record>, StateError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        Ok(on!(self, p => {
            let mut tx = p.begin().await?;
            let records = append_in!(tx, events);
            tx.commit().await?;
            records
        }))
    }

    /// Up to `limit` rows after `after_id`, in chain order.
    pub async fn audit_page(&self, after_id: i64, limit: i64) -> Result<Vec<Record>, StateError> {
        let sql = format!("SELECT {COLUMNS} FROM audit WHERE id > $1 ORDER BY id LIMIT $2");
        let rows: Vec<Row> = on!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(after_id)
            .bind(limit)
            .fetch_all(p)
            .await?);
        Ok(rows.into_iter().map(record).collect())
    }

    pub async fn audit_anchor(&self) -> Result<Option<Anchor>, StateError> {
        let sql = "SELECT last_removed_id, last_removed_hash FROM audit_anchor";
        let row: Option<(i64, String)> =
            on!(self, p => sqlx::query_as(sql).fetch_optional(p).await?);
        Ok(row.map(|(id, hash)| Anchor {
            last_removed_id: id,
            last_removed_hash: hash,
        }))
    }

    /// Rows matching `f`, oldest first.
    pub async fn audit_query(&self, f: &AuditFilter) -> Result<Vec<Record>, StateError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM audit WHERE ($1 IS NULL OR supplier = $1) AND ($2 IS NULL OR authority = $2) \
             AND ($3 IS NULL OR area = $3) AND ($4 IS NULL OR action = $4) AND ($5 IS NULL OR at >= $5) \
             AND ($6 IS NULL OR at < $6) ORDER BY id LIMIT $7"
        );
        let rows: Vec<Row> = on!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&f.supplier)
            .bind(&f.authority)
            .bind(&f.area)
            .bind(&f.action)
            .bind(&f.from)
            .bind(&f.to)
            .bind(f.limit)
            .fetch_all(p)
            .await?);
        Ok(rows.into_iter().map(record).collect())
    }

    /// Complete downloads, `(supplier, authority, area, load id, file)`,
    /// of one supplier and authority or of all, for the delivery ledger.
    #[allow(clippy::type_complexity)]
    pub async fn complete_downloads(
        &self,
        supplier: Option<&str>,
        authority: Option<&str>,
    ) -> Result<Vec<(String, String, String, String, String)>, StateError> {
        let sql = "SELECT DISTINCT supplier, authority, area, load_id, file FROM audit \
                   WHERE action = 'download' AND outcome = 'complete' AND supplier IS NOT NULL \
                   AND authority IS NOT NULL AND area IS NOT NULL AND load_id IS NOT NULL \
                   AND file IS NOT NULL AND ($1 IS NULL OR supplier = $1) AND ($2 IS NULL OR authority = $2)";
        Ok(on!(self, p => sqlx::query_as(sql)
            .bind(supplier)
            .bind(authority)
            .fetch_all(p)
            .await?))
    }

    /// Downloads (bytes served) of data files from loads whose index holds
    /// `person`, oldest first.
    pub async fn audit_person(&self, person: &PersonId) -> Result<Vec<PersonDownload>, StateError> {
        let cols = COLUMNS
            .split(", ")
            .map(|c| format!("a.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {cols} FROM audit_persons p JOIN audit_loads l ON l.load_ref = p.load_ref \
             JOIN audit a ON a.authority = l.authority AND a.area = l.area AND a.load_id = l.load_id \
             WHERE p.person = $1 AND a.action = 'download' AND a.bytes > 0 \
             AND a.file NOT LIKE '%/MANIFEST.json' AND a.file NOT LIKE '%/SHA256SUMS' ORDER BY a.id"
        );
        let rows: Vec<Row> = on!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&person[..])
            .fetch_all(p)
            .await?);
        Ok(rows.into_iter().map(record).collect())
    }

    /// Removes events older than `cutoff` (RFC 3339 UTC) and the person index
    /// of loads removed from the tree before it, moving the anchor and
    /// recording the run in the chain, all in one transaction. Returns the
    /// number of events removed.
    pub async fn audit_prune(&self, cutoff: &str) -> Result<u64, StateError> {
        Ok(on!(self, p => {
            let mut tx = p.begin().await?;
            let last: Option<(i64, String)> = sqlx::query_as(
                "SELECT id, hash FROM audit WHERE id = (SELECT MAX(id) FROM audit WHERE at < $1)",
            )
            .bind(cutoff)
            .fetch_optional(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM audit_persons WHERE load_ref IN \
                 (SELECT load_ref FROM audit_loads WHERE removed_at IS NOT NULL AND removed_at < $1)",
            )
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
            let loads = sqlx::query("DELETE FROM audit_loads WHERE removed_at IS NOT NULL AND removed_at < $1")
                .bind(cutoff)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let removed = match last {
                None => 0,
                Some((id, hash)) => {
                    let n = sqlx::query("DELETE FROM audit WHERE id <= $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    sqlx::query(
                        "INSERT INTO audit_anchor (one, last_removed_id, last_removed_hash) VALUES (1, $1, $2) \
                         ON CONFLICT (one) DO UPDATE SET last_removed_id = excluded.last_removed_id, \
                         last_removed_hash = excluded.last_removed_hash",
                    )
                    .bind(id)
                    .bind(&hash)
                    .execute(&mut *tx)
                    .await?;
                    let anchor = Anchor { last_removed_id: id, last_removed_hash: hash };
                    let event = Event::new(audit::Action::AuditPruned, "ok")
                        .detail(&anchor.detail())
                        .bytes(n);
                    append_in!(tx, &[event]);
                    n
                }
            };
            tx.commit().await?;
            if loads > 0 {
                tracing::info!(loads, "audit: person index of removed loads pruned");
            }
            removed
        }))
    }

    /// The (authority, area, load id) of every load whose person index is complete.
    pub async fn audit_indexed(&self) -> Result<Vec<(String, String, String)>, StateError> {
        let sql = "SELECT authority, area, load_id FROM audit_loads WHERE complete";
        Ok(on!(self, p => sqlx::query_as(sql).fetch_all(p).await?))
    }

    /// Starts (or restarts, after a crash) the person index of one load of
    /// one authority; returns its reference.
    pub async fn audit_index_begin(
        &self,
        authority: &str,
        area: &str,
        load_id: &str,
    ) -> Result<i64, StateError> {
        let now = audit::timestamp(chrono::Utc::now());
        Ok(on!(self, p => {
            let mut tx = p.begin().await?;
            let existing: Option<(i64,)> = sqlx::query_as(
                "SELECT load_ref FROM audit_loads WHERE authority = $1 AND area = $2 AND load_id = $3",
            )
            .bind(authority)
            .bind(area)
            .bind(load_id)
            .fetch_optional(&mut *tx)
            .await?;
            let r = match existing {
                Some((r,)) => {
                    sqlx::query("DELETE FROM audit_persons WHERE load_ref = $1")
                        .bind(r)
                        .execute(&mut *tx)
                        .await?;
                    r
                }
                None => {
                    let (r,): (i64,) = sqlx::query_as(
                        "INSERT INTO audit_loads (authority, area, load_id, complete, indexed_at) \
                         VALUES ($1, $2, $3, FALSE, $4) RETURNING load_ref",
                    )
                    .bind(authority)
                    .bind(area)
                    .bind(load_id)
                    .bind(&now)
                    .fetch_one(&mut *tx)
                    .await?;
                    r
                }
            };
            tx.commit().await?;
            r
        }))
    }

    /// Adds persons to a load's index; duplicates are ignored.
    pub async fn audit_index_persons(
        &self,
        load_ref: i64,
        persons: &[PersonId],
    ) -> Result<(), StateError> {
        // One transaction per call rather than a commit per 1,000 rows. (It
        // did not visibly shorten indexing a 2.5M-row load on SQLite, which
        // perf shows is b-tree page I/O, not commits.)
        on!(self, p => {
            let mut tx = p.begin().await?;
            for chunk in persons.chunks(1000) {
                let mut q = sqlx::QueryBuilder::new("INSERT INTO audit_persons (person, load_ref) ");
                q.push_values(chunk, |mut b, person| {
                    b.push_bind(&person[..]).push_bind(load_ref);
                });
                q.push(" ON CONFLICT DO NOTHING");
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn audit_index_complete(&self, load_ref: i64) -> Result<(), StateError> {
        let sql = "UPDATE audit_loads SET complete = TRUE WHERE load_ref = $1";
        on!(self, p => sqlx::query(sql).bind(load_ref).execute(p).await.map(|_| ())?);
        Ok(())
    }

    /// Marks indexed loads that are no longer in the tree as removed now,
    /// which starts their retention.
    pub async fn audit_index_removed(
        &self,
        gone: &[(String, String, String)],
    ) -> Result<(), StateError> {
        let now = audit::timestamp(chrono::Utc::now());
        let sql = "UPDATE audit_loads SET removed_at = $4 \
                   WHERE authority = $1 AND area = $2 AND load_id = $3 AND removed_at IS NULL";
        for (authority, area, load_id) in gone {
            on!(self, p => sqlx::query(sql)
                .bind(authority)
                .bind(area)
                .bind(load_id)
                .bind(&now)
                .execute(p)
                .await
                .map(|_| ())?);
        }
        Ok(())
    }

    /// Whether a load's index lists `person` (for tests and checks).
    pub async fn audit_index_holds(
        &self,
        person: &PersonId,
        authority: &str,
        load_id: &str,
    ) -> Result<bool, StateError> {
        let sql = "SELECT COUNT(*) FROM audit_persons p JOIN audit_loads l ON l.load_ref = p.load_ref \
                   WHERE p.person = $1 AND l.authority = $2 AND l.load_id = $3";
        let (n,): (i64,) = on!(self, p => sqlx::query_as(sql)
            .bind(&person[..])
            .bind(authority)
            .bind(load_id)
            .fetch_one(p)
            .await?);
        Ok(n > 0)
    }
}
