//! Traces go in from the request path through a bounded queue that never blocks it: when the
//! queue is full the trace is counted and dropped; when the store fails, the batch is counted and
//! dropped, the writer says it is unhealthy, and serving goes on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use stopwise_core::trace::Trace;
use tokio::sync::{mpsc, oneshot};

use crate::Store;

/// Traces written in one transaction at most.
const BATCH: usize = 256;

enum Message {
    Trace(Box<Trace>),
    /// Answered once everything queued before it is written (or dropped).
    Flush(oneshot::Sender<()>),
}

/// What the writer did, for metrics and `/readyz`.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub written: AtomicU64,
    /// Dropped because the queue was full.
    pub dropped_full: AtomicU64,
    /// Dropped because the store failed to take them.
    pub dropped_error: AtomicU64,
    failing: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl WriterStats {
    /// The last write's error, while writes fail.
    pub fn failing(&self) -> Option<String> {
        if !self.failing.load(Ordering::Relaxed) {
            return None;
        }
        self.last_error.lock().map(|e| e.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }
}

/// The request path's handle on the store's writer task. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Message>,
    capacity: usize,
    stats: Arc<WriterStats>,
}

impl Writer {
    /// Starts the writer task on the current tokio runtime, with room for `capacity` traces.
    pub fn start(store: Store, capacity: usize) -> Writer {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let stats = Arc::new(WriterStats::default());
        tokio::spawn(drain(store, rx, stats.clone()));
        Writer { tx, capacity, stats }
    }

    /// Queues a trace; never waits. `false` when it was dropped (queue full or writer gone).
    pub fn submit(&self, trace: Trace) -> bool {
        match self.tx.try_send(Message::Trace(Box::new(trace))) {
            Ok(()) => true,
            Err(_) => {
                self.stats.dropped_full.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("stopwise_store_traces_dropped_total", "reason" => "queue_full").increment(1);
                false
            }
        }
    }

    /// Waits until every trace queued so far is written or dropped (shutdown, tests).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Traces waiting in the queue.
    pub fn depth(&self) -> usize {
        self.capacity - self.tx.capacity()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }
}

async fn drain(store: Store, mut rx: mpsc::Receiver<Message>, stats: Arc<WriterStats>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Trace(trace) => batch.push(*trace),
                Message::Flush(done) => flushes.push(done),
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            write(&store, &batch, &stats).await;
            batch.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

async fn write(store: &Store, batch: &[Trace], stats: &WriterStats) {
    let n = batch.len() as u64;
    match store.put_traces(batch).await {
        Ok(()) => {
            stats.written.fetch_add(n, Ordering::Relaxed);
            stats.failing.store(false, Ordering::Relaxed);
            metrics::counter!("stopwise_store_traces_written_total").increment(n);
        }
        Err(e) => {
            tracing::warn!("trace store: {n} traces dropped: {e}");
            stats.dropped_error.fetch_add(n, Ordering::Relaxed);
            if let Ok(mut last) = stats.last_error.lock() {
                *last = Some(e.to_string());
            }
            stats.failing.store(true, Ordering::Relaxed);
            metrics::counter!("stopwise_store_traces_dropped_total", "reason" => "store_error").increment(n);
        }
    }
}
