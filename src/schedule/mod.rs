//! Schedules: cron expressions (in Danish time) -> runs of a job. No job
//! logic here. Per data area one lock is shared by all its schedules, so two
//! runs of the same area never overlap; ticks missed while a run or the daemon
//! was busy or down are coalesced into one run.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Europe::Copenhagen;

/// Wall-clock time advanced by tokio's clock, so tests can pause and advance it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl Clock {
    pub fn starting_at(base: DateTime<Utc>) -> Clock {
        Clock {
            base,
            start: tokio::time::Instant::now(),
        }
    }

    pub fn system() -> Clock {
        Clock::starting_at(Utc::now())
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.base + chrono::Duration::from_std(self.start.elapsed()).unwrap_or_default()
    }
}

/// The first tick strictly after `after`, evaluated in Europe/Copenhagen.
pub fn next_tick(schedule: &cron::Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    schedule
        .after(&after.with_timezone(&Copenhagen))
        .next()
        .map(|t| t.with_timezone(&Utc))
}

/// The last tick at or before `now`.
pub fn last_tick(schedule: &cron::Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    schedule
        .after(&(now + chrono::Duration::seconds(1)).with_timezone(&Copenhagen))
        .next_back()
        .map(|t| t.with_timezone(&Utc))
}

/// The longest wait between two runs of any of `schedules` (together) in
/// the eight days after `from`: how old an area's data may get before a
/// run is late (a weekday schedule waits over the weekend).
pub fn longest_gap(schedules: &[&cron::Schedule], from: DateTime<Utc>) -> Option<Duration> {
    let until = from + chrono::Duration::days(8);
    let mut ticks: Vec<DateTime<Utc>> = Vec::new();
    for s in schedules {
        // Bounded: a schedule every second would otherwise list 700,000 ticks.
        ticks.extend(
            s.after(&from.with_timezone(&Copenhagen))
                .take(20_000)
                .map(|t| t.with_timezone(&Utc))
                .take_while(|t| *t <= until),
        );
    }
    ticks.sort();
    ticks.dedup();
    ticks
        .windows(2)
        .filter_map(|w| (w[1] - w[0]).to_std().ok())
        .max()
}

/// After downtime: is a run owed because a tick passed since the last run?
pub fn catch_up_due(
    schedule: &cron::Schedule,
    last_run: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    match (last_run, last_tick(schedule, now)) {
        (Some(last), Some(tick)) => tick > last,
        // Never ran: the first scheduled tick will do; an operator can load now.
        _ => false,
    }
}

/// Retry delays after a failed run, before waiting for the next tick.
pub const RETRY_DELAYS: [Duration; 3] = [
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
];

/// Runs `job` on every tick of `schedule` until `shutdown` resolves, giving
/// it the tick it runs for (replicas running the same schedule agree on it).
/// `last_run` (from the published tree) decides one catch-up run at start,
/// for the last tick missed; so is a tick that passed during a run.
/// A failed run is retried after each of [`RETRY_DELAYS`], then left to the next tick.
pub async fn run<F, Fut, E>(
    name: String,
    schedule: cron::Schedule,
    clock: Clock,
    lock: Arc<tokio::sync::Mutex<()>>,
    last_run: Option<DateTime<Utc>>,
    mut job: F,
    shutdown: impl Future<Output = ()>,
) where
    F: FnMut(DateTime<Utc>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(shutdown);
    let mut due_now = catch_up_due(&schedule, last_run, clock.now());
    loop {
        let tick = if due_now {
            last_tick(&schedule, clock.now()).unwrap_or_else(|| clock.now())
        } else {
            let Some(next) = next_tick(&schedule, clock.now()) else {
                tracing::warn!(%name, "schedule has no future tick; stopping it");
                return;
            };
            let wait = (next - clock.now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut shutdown => return,
            }
            next
        };
        let _running = tokio::select! {
            guard = lock.lock() => guard,
            _ = &mut shutdown => return,
        };
        for (attempt, delay) in std::iter::once(None)
            .chain(RETRY_DELAYS.iter().map(Some))
            .enumerate()
        {
            if let Some(delay) = delay {
                tokio::select! {
                    _ = tokio::time::sleep(*delay) => {}
                    _ = &mut shutdown => return,
                }
            }
            match job(tick).await {
                Ok(()) => break,
                Err(e) => match RETRY_DELAYS.get(attempt) {
                    Some(retry) => {
                        let at =
                            clock.now() + chrono::Duration::from_std(*retry).unwrap_or_default();
                        tracing::warn!(%name, attempt = attempt + 1, error = %e,
                            next_try = %at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            "scheduled run failed; trying again")
                    }
                    None => {
                        let next = next_tick(&schedule, clock.now()).map_or_else(
                            || "never".to_string(),
                            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        );
                        tracing::warn!(%name, attempt = attempt + 1, error = %e, next_try = %next,
                            "scheduled run failed; no retries left, waiting for the next tick")
                    }
                },
            }
        }
        // A tick that passed while this one ran (or waited for another
        // replica's run) is run at once, once: with replicas, the replica
        // that ran the load past the next tick may be the only one left.
        due_now = next_tick(&schedule, tick).is_some_and(|t| t <= clock.now());
    }
}

#[cfg(test)]
mod tests;
