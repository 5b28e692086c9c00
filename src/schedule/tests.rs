use super::*;
use std::str::FromStr;
use std::sync::Mutex;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn every(expr: &str) -> cron::Schedule {
    cron::Schedule::from_str(expr).unwrap()
}

#[test]
fn ticks_are_danish_time_across_daylight_saving() {
    let daily_2am = every("0 30 2 * * *");
    // Winter: 02:30 CET is 01:30 UTC.
    assert_eq!(
        next_tick(&daily_2am, t("2026-01-10T00:00:00Z")),
        Some(t("2026-01-10T01:30:00Z"))
    );
    // Summer: 02:30 CEST is 00:30 UTC.
    assert_eq!(
        next_tick(&daily_2am, t("2026-07-10T00:00:00Z")),
        Some(t("2026-07-10T00:30:00Z"))
    );
    // 29 March 2026 has no 02:30 (clocks jump 02:00 -> 03:00): the run is not lost forever.
    let after_gap = next_tick(&daily_2am, t("2026-03-28T23:00:00Z")).unwrap();
    assert!(after_gap <= t("2026-03-30T00:30:00Z"), "{after_gap}");
    // 25 October 2026 has 02:30 twice; the next tick after the first is not minutes later.
    let first = next_tick(&daily_2am, t("2026-10-24T23:00:00Z")).unwrap();
    let second = next_tick(&daily_2am, first).unwrap();
    assert!(
        second - first >= chrono::Duration::hours(23),
        "{first} {second}"
    );
}

#[test]
fn one_catch_up_only_when_a_tick_was_missed() {
    let hourly = every("0 0 * * * *");
    let now = t("2026-11-22T12:30:00Z");
    assert!(catch_up_due(&hourly, Some(t("2026-11-22T09:00:00Z")), now));
    assert!(!catch_up_due(&hourly, Some(t("2026-11-22T12:05:00Z")), now));
    assert!(!catch_up_due(&hourly, None, now));
}

type Log = Arc<Mutex<Vec<(DateTime<Utc>, &'static str)>>>;

/// One run of a test job.
type Run = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A job that records its start and end and takes `takes` of (paused) time.
fn job(
    log: Log,
    clock: Clock,
    name: &'static str,
    takes: Duration,
) -> impl FnMut(DateTime<Utc>) -> Run {
    move |_tick| {
        let log = log.clone();
        Box::pin(async move {
            log.lock().unwrap().push((clock.now(), name));
            tokio::time::sleep(takes).await;
            log.lock().unwrap().push((clock.now(), "end"));
            Ok(())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn runs_on_every_tick() {
    let clock = Clock::starting_at(t("2026-11-22T12:00:00Z"));
    let log: Log = Default::default();
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    let task = tokio::spawn(run(
        "delta".into(),
        every("0 */10 * * * *"),
        clock,
        lock,
        Some(clock.now()),
        job(log.clone(), clock, "delta", Duration::from_secs(5)),
        std::future::pending(),
    ));
    tokio::time::sleep(Duration::from_secs(3600 + 30)).await;
    task.abort();
    let starts: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.1 == "delta")
        .map(|e| e.0.format("%H:%M").to_string())
        .collect();
    assert_eq!(
        starts,
        ["12:10", "12:20", "12:30", "12:40", "12:50", "13:00"]
    );
}

#[tokio::test(start_paused = true)]
async fn runs_of_one_area_never_overlap_and_missed_ticks_coalesce() {
    let clock = Clock::starting_at(t("2026-11-22T12:00:00Z"));
    let log: Log = Default::default();
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    // A delta every 10 minutes that takes 25, and a full every 15 minutes that takes 1.
    let d = tokio::spawn(run(
        "delta".into(),
        every("0 */10 * * * *"),
        clock,
        lock.clone(),
        Some(clock.now()),
        job(log.clone(), clock, "delta", Duration::from_secs(25 * 60)),
        std::future::pending(),
    ));
    let f = tokio::spawn(run(
        "full".into(),
        every("0 */15 * * * *"),
        clock,
        lock.clone(),
        Some(clock.now()),
        job(log.clone(), clock, "full", Duration::from_secs(60)),
        std::future::pending(),
    ));
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    d.abort();
    f.abort();
    let log = log.lock().unwrap().clone();
    // Starts and ends strictly alternate: never two runs at once.
    for pair in log.chunks(2) {
        assert_ne!(pair[0].1, "end", "{log:?}");
        if pair.len() == 2 {
            assert_eq!(pair[1].1, "end", "{log:?}");
        }
    }
    // A 25-minute delta on a 10-minute schedule runs about every 30 minutes, not 12 times an hour.
    let deltas = log.iter().filter(|e| e.1 == "delta").count();
    assert!((3..=5).contains(&deltas), "{deltas} deltas: {log:?}");
    assert!(log.iter().any(|e| e.1 == "full"));
}

#[tokio::test(start_paused = true)]
async fn after_downtime_one_catch_up_run_not_one_per_missed_tick() {
    let clock = Clock::starting_at(t("2026-11-22T12:05:00Z"));
    let log: Log = Default::default();
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    // Last run five hours ago on an hourly schedule.
    let task = tokio::spawn(run(
        "delta".into(),
        every("0 0 * * * *"),
        clock,
        lock,
        Some(t("2026-11-22T07:00:00Z")),
        job(log.clone(), clock, "delta", Duration::from_secs(1)),
        std::future::pending(),
    ));
    tokio::time::sleep(Duration::from_secs(56 * 60)).await;
    task.abort();
    let starts: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.1 == "delta")
        .map(|e| e.0.format("%H:%M").to_string())
        .collect();
    assert_eq!(starts, ["12:05", "13:00"]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_run_is_retried_with_backoff() {
    let clock = Clock::starting_at(t("2026-11-22T12:00:00Z"));
    let attempts: Arc<Mutex<Vec<DateTime<Utc>>>> = Default::default();
    let ticks: Arc<Mutex<Vec<DateTime<Utc>>>> = Default::default();
    let a = attempts.clone();
    let k = ticks.clone();
    let task = tokio::spawn(run(
        "delta".into(),
        every("0 0 * * * *"),
        clock,
        Arc::new(tokio::sync::Mutex::new(())),
        Some(clock.now()),
        move |tick| {
            let a = a.clone();
            k.lock().unwrap().push(tick);
            async move {
                let mut v = a.lock().unwrap();
                v.push(clock.now());
                if v.len() < 3 {
                    Err("source down".to_string())
                } else {
                    Ok(())
                }
            }
        },
        std::future::pending(),
    ));
    tokio::time::sleep(Duration::from_secs(3600 + 200)).await;
    task.abort();
    let at: Vec<String> = attempts
        .lock()
        .unwrap()
        .iter()
        .map(|t| t.format("%H:%M:%S").to_string())
        .collect();
    assert_eq!(at, ["13:00:00", "13:00:30", "13:02:30"]);
    // Every retry is for the same tick, the one a replica would agree on.
    assert_eq!(*ticks.lock().unwrap(), vec![t("2026-11-22T13:00:00Z"); 3]);
}

#[test]
fn the_longest_gap_spans_a_weekend_and_joins_schedules() {
    let from = t("2026-12-02T12:00:00Z"); // a Wednesday
    let weekdays = every("0 0 2 * * Mon-Fri");
    let hourly = every("0 0 * * * *");
    let weekly = every("0 0 3 * * Sun");
    let day = Duration::from_secs(86_400);
    assert_eq!(longest_gap(&[&weekdays], from), Some(3 * day));
    assert_eq!(
        longest_gap(&[&hourly], from),
        Some(Duration::from_secs(3600))
    );
    // A weekly full on Sunday shortens the weekend gap of the weekday deltas.
    let joined = longest_gap(&[&weekdays, &weekly], from).unwrap();
    assert!(joined < 3 * day && joined > day, "{joined:?}");
    assert_eq!(longest_gap(&[], from), None);
}

#[tokio::test(start_paused = true)]
async fn ticks_that_pass_during_a_run_get_one_run_right_after_it() {
    let clock = Clock::starting_at(t("2026-11-22T12:00:00Z"));
    let runs: Arc<Mutex<Vec<(String, String)>>> = Default::default();
    let r = runs.clone();
    // Every 10 minutes, each run taking 25: ticks 12:20 and 12:30 pass
    // during the 12:10 run; the last of them runs when it ends.
    let task = tokio::spawn(run(
        "delta".into(),
        every("0 */10 * * * *"),
        clock,
        Arc::new(tokio::sync::Mutex::new(())),
        Some(clock.now()),
        move |tick: DateTime<Utc>| {
            r.lock().unwrap().push((
                clock.now().format("%H:%M").to_string(),
                tick.format("%H:%M").to_string(),
            ));
            async move {
                tokio::time::sleep(Duration::from_secs(25 * 60)).await;
                Ok::<(), String>(())
            }
        },
        std::future::pending(),
    ));
    tokio::time::sleep(Duration::from_secs(61 * 60)).await;
    task.abort();
    let runs = runs.lock().unwrap().clone();
    let want: Vec<(String, String)> = [("12:10", "12:10"), ("12:35", "12:30"), ("13:00", "13:00")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(runs, want);
}
