//! The daemon's Prometheus metrics, through the Prometheus project's own
//! Rust client. One process-wide set (`get()`), as the events it counts
//! happen deep in `sftp`, `load` and `audit`, which should not pass a
//! handle around for it; `http` encodes it at `/metrics`.
//!
//! Labels are bounded: `area` comes from the config, `kind`, `outcome` and
//! `reason` from fixed sets in the code. No label ever carries a CPR number,
//! a row's contents, a client path or a user name a client sent; suppliers
//! appear only where noted (the config's own list, so bounded too).

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AreaLabel {
    pub area: String,
}

/// A supplier of the config (so bounded by it); never a name a client sent.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SupplierLabel {
    pub supplier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Download {
    pub area: String,
    /// `complete` or `partial`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoadLabels {
    pub area: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoadOutcome {
    pub area: String,
    pub kind: &'static str,
    /// `published` or `failed`.
    pub outcome: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every instrument, registered once.
pub struct Metrics {
    registry: Registry,
    /// Logins by outcome: `accepted`, `refused`, `no_session` (the supplier's cap).
    pub logins: Family<Outcome, Counter>,
    /// Refused logins and requests by reason (a fixed set, see `sftp`).
    pub refusals: Family<Reason, Counter>,
    /// Addresses banned after repeated failed logins.
    pub bans: Counter,
    /// SFTP sessions open now.
    pub sessions: Gauge,
    pub bytes_served: Family<AreaLabel, Counter>,
    pub downloads: Family<Download, Counter>,
    pub loads: Family<LoadOutcome, Counter>,
    pub load_seconds: Family<LoadLabels, Histogram>,
    /// Rows written by published loads, a row counted once per authority.
    pub load_rows: Family<LoadLabels, Counter>,
    pub load_bytes: Family<LoadLabels, Counter>,
    /// The watermark of the area's newest published load.
    pub watermark: Family<AreaLabel, Gauge>,
    /// When the area's newest load was made (Unix seconds).
    pub last_load: Family<AreaLabel, FloatGauge>,
    /// Seconds since then, as of the scrape.
    pub data_age: Family<AreaLabel, FloatGauge>,
    /// The longest wait between two scheduled loads of the area: the age
    /// its data may reach before a load is late.
    pub schedule_gap: Family<AreaLabel, FloatGauge>,
    /// Per supplier, kept loads its replay lacks (the delivery ledger's
    /// `not_fetched`, summed over its authorities and areas).
    pub loads_behind: Family<SupplierLabel, Gauge>,
    /// 1 if the last attempt to reach DFDG succeeded (see `set_source_up`).
    pub source_up: Gauge,
    /// Whether DFDG has been tried at all since the start.
    source_checked: std::sync::atomic::AtomicBool,
    pub reloads: Family<Outcome, Counter>,
    /// Audit events waiting to be written.
    pub audit_backlog: Gauge,
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("udstil");
        let m = Metrics {
            logins: Family::default(),
            refusals: Family::default(),
            bans: Counter::default(),
            sessions: Gauge::default(),
            bytes_served: Family::default(),
            downloads: Family::default(),
            loads: Family::default(),
            // 0.5 s .. about 4.5 h.
            load_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.5, 2.0, 15))
            }),
            load_rows: Family::default(),
            load_bytes: Family::default(),
            watermark: Family::default(),
            last_load: Family::default(),
            data_age: Family::default(),
            schedule_gap: Family::default(),
            loads_behind: Family::default(),
            source_up: Gauge::default(),
            source_checked: Default::default(),
            reloads: Family::default(),
            audit_backlog: Gauge::default(),
            registry: Registry::default(),
        };
        m.register_serving(&mut r);
        m.register_loads(&mut r);
        Metrics { registry: r, ..m }
    }

    fn register_serving(&self, r: &mut Registry) {
        let m = self;
        r.register("sftp_logins", "SSH logins by outcome", m.logins.clone());
        r.register(
            "refusals",
            "Refused logins and requests by reason",
            m.refusals.clone(),
        );
        r.register(
            "sftp_bans",
            "Addresses banned after repeated failed logins",
            m.bans.clone(),
        );
        r.register("sftp_sessions", "SFTP sessions open", m.sessions.clone());
        r.register(
            "sftp_served_bytes",
            "File bytes served over SFTP by data area",
            m.bytes_served.clone(),
        );
        r.register(
            "sftp_downloads",
            "File downloads ended, by data area and whether the whole file was sent",
            m.downloads.clone(),
        );
    }

    fn register_loads(&self, r: &mut Registry) {
        let m = self;
        r.register(
            "loads",
            "Loads run by data area, kind and outcome",
            m.loads.clone(),
        );
        r.register(
            "load_duration_seconds",
            "Duration of published loads",
            m.load_seconds.clone(),
        );
        r.register(
            "load_rows",
            "Rows written by published loads (once per authority)",
            m.load_rows.clone(),
        );
        r.register(
            "load_bytes",
            "Bytes written by published loads",
            m.load_bytes.clone(),
        );
        r.register(
            "area_watermark",
            "Change-journal watermark of the data area's newest published load",
            m.watermark.clone(),
        );
        r.register(
            "area_last_load_timestamp_seconds",
            "When the data area's newest load was made",
            m.last_load.clone(),
        );
        r.register(
            "area_data_age_seconds",
            "Seconds since the data area's newest load was made",
            m.data_age.clone(),
        );
        r.register(
            "area_schedule_gap_seconds",
            "Longest wait between two scheduled loads of the data area",
            m.schedule_gap.clone(),
        );
        r.register(
            "supplier_loads_behind",
            "Kept loads a supplier's replay lacks, over its authorities and areas",
            m.loads_behind.clone(),
        );
        r.register(
            "source_up",
            "1 if the last attempt to reach DFDG succeeded, else 0",
            m.source_up.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads by outcome",
            m.reloads.clone(),
        );
        r.register(
            "audit_backlog_events",
            "Audit events waiting to be written",
            m.audit_backlog.clone(),
        );
    }

    /// The Prometheus text exposition (format 0.0.4) of every instrument.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Records whether DFDG answered at the last attempt.
    pub fn set_source_up(&self, up: bool) {
        self.source_up.set(up as i64);
        self.source_checked
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether DFDG answered at the last attempt; `None` before the first.
    pub fn source_is_up(&self) -> Option<bool> {
        self.source_checked
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| self.source_up.get() == 1)
    }

    /// Counts a load that ended.
    pub fn load_ended(&self, area: &str, kind: &'static str, published: bool) {
        self.loads
            .get_or_create(&LoadOutcome {
                area: area.to_string(),
                kind,
                outcome: if published { "published" } else { "failed" },
            })
            .inc();
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_family_with_the_prefix() {
        let m = get();
        m.load_ended("joblog", "full", true);
        m.load_seconds
            .get_or_create(&LoadLabels {
                area: "joblog".into(),
                kind: "full",
            })
            .observe(1.5);
        m.refusals
            .get_or_create(&Reason {
                reason: "unknown_key",
            })
            .inc();
        let text = m.encode();
        assert!(
            text.contains(
                "udstil_loads_total{area=\"joblog\",kind=\"full\",outcome=\"published\"}"
            ),
            "{text}"
        );
        assert!(text.contains("udstil_refusals_total{reason=\"unknown_key\"}"));
        assert!(text.contains("# TYPE udstil_load_duration_seconds histogram"));
        assert!(
            !text.contains("# EOF"),
            "classic text format, not OpenMetrics"
        );
    }
}
