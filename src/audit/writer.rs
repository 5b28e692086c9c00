//! One task appends the serving side's audit events to the state database.
//! Connections hand events over a bounded channel: when the database cannot
//! keep up or is down, new requests wait rather than go unaudited.

use std::time::Duration;

use tokio::sync::mpsc;

use super::Event;
use crate::state::State;

/// Events in flight before senders wait.
const QUEUE: usize = 4096;
/// Events appended in one transaction.
const BATCH: usize = 256;

/// Where the serving side records audit events. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Trail {
    tx: Option<mpsc::Sender<Msg>>,
}

#[derive(Debug)]
enum Msg {
    Event(Box<Event>),
    /// Answered once every event sent before it is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl Trail {
    /// A trail that records nothing (no state database configured).
    pub fn disabled() -> Trail {
        Trail { tx: None }
    }

    /// Records an event; waits while the queue is full.
    pub async fn record(&self, event: Event) {
        let Some(tx) = &self.tx else { return };
        let backlog = &crate::metrics::get().audit_backlog;
        backlog.inc();
        if tx.send(Msg::Event(Box::new(event))).await.is_err() {
            backlog.dec();
            tracing::error!("audit writer has stopped; an audit event was lost");
        }
    }

    /// Records from a context that cannot wait (a `Drop`).
    pub fn record_detached(&self, event: Event) {
        let Some(tx) = &self.tx else { return };
        let backlog = &crate::metrics::get().audit_backlog;
        backlog.inc();
        match tx.try_send(Msg::Event(Box::new(event))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                let tx = tx.clone();
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let _ = tx.send(event).await;
                    });
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                backlog.dec();
                tracing::error!("audit writer has stopped; an audit event was lost");
            }
        }
    }

    /// Waits until every event recorded before this call is written.
    pub async fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (done, wait) = tokio::sync::oneshot::channel();
        if tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Starts the writer on `state`. It ends once every `Trail` clone is dropped
/// and the queue is written.
pub fn spawn(state: State) -> (Trail, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let task = tokio::spawn(write_all(state, rx));
    (Trail { tx: Some(tx) }, task)
}

async fn write_all(state: State, mut rx: mpsc::Receiver<Msg>) {
    let mut msgs = Vec::with_capacity(BATCH);
    let mut events = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut msgs, BATCH).await > 0 {
        let mut flushed = Vec::new();
        for m in msgs.drain(..) {
            match m {
                Msg::Event(e) => events.push(*e),
                Msg::Flush(done) => flushed.push(done),
            }
        }
        append_retrying(&state, &events, u32::MAX).await;
        crate::metrics::get()
            .audit_backlog
            .dec_by(events.len() as i64);
        events.clear();
        for done in flushed {
            let _ = done.send(());
        }
    }
}

/// Appends, retrying with backoff up to `limit` attempts: a conflict with
/// another writer process or a database that is briefly away must not lose
/// events. Returns whether the events were written.
pub async fn append_retrying(state: &State, events: &[Event], limit: u32) -> bool {
    let mut wait = Duration::from_millis(20);
    let mut attempts = 0u32;
    loop {
        match state.audit_append(events).await {
            Ok(_) => return true,
            Err(e) => {
                attempts += 1;
                if attempts >= limit {
                    tracing::error!(error = %e, events = events.len(), "could not write the audit trail; events lost");
                    return false;
                }
                // Conflicts with a concurrent writer resolve at once; say
                // something only when it looks like an outage.
                if attempts == 5 || attempts.is_multiple_of(50) {
                    tracing::error!(error = %e, events = events.len(), attempts, "cannot write the audit trail; retrying");
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}
