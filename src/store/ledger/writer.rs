//! The disclosure ledger's writer: deliveries hand their records over and wait for
//! them; one thread writes whatever queued up meanwhile as one store append (group
//! commit), which the store writes as one batch of frames. Knows the [`Store`] trait
//! only, not how the ledger is kept.

use std::sync::Arc;

use crate::store::{LedgerEntry, Store, StoreError};

/// Most ledger records written in one batch.
const LEDGER_GROUP_MAX: usize = 1024;

/// Why a delivery's ledger record was not written.
#[derive(Clone, Debug)]
pub struct LedgerRefused {
    /// The store's disk (or quota) is full.
    pub disk_full: bool,
    /// Why, for the refused caller.
    pub reason: String,
}

impl From<&StoreError> for LedgerRefused {
    fn from(error: &StoreError) -> Self {
        let reason = match error {
            StoreError::Unwritable { reason, .. } => reason.clone(),
            other if other.is_disk_full() => format!("the store's disk is full ({other})"),
            other => other.to_string(),
        };
        LedgerRefused {
            disk_full: error.is_disk_full(),
            reason,
        }
    }
}

/// A record to write (or, with `None`, a barrier) and who waits for it: the answer is
/// `Ok` once it (and, for a barrier, every record before it) is in the store.
type LedgerJob = (
    Option<LedgerEntry>,
    tokio::sync::oneshot::Sender<Result<(), LedgerRefused>>,
);

/// Records handed over and not yet taken by the writer.
#[derive(Default)]
struct LedgerQueue {
    jobs: Vec<LedgerJob>,
    /// No more jobs: the writer ends after the queued ones.
    closed: bool,
}

/// The queue and the writer's wake-up.
#[derive(Default)]
struct LedgerShared {
    queue: std::sync::Mutex<LedgerQueue>,
    wake: std::sync::Condvar,
}

impl LedgerShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The disclosure ledger's writer, with group commit: a delivery hands its record over
/// and waits until the record is in the store before anything is sent. One thread writes
/// whatever has queued up as one store batch, so records that arrive while a batch is
/// being written share the next one. Records reach the disk with the store's next
/// flush. While the store cannot write (a full disk), records are refused, and so are
/// the deliveries they would record: nothing leaves unrecorded. The writer is not
/// stopped by a failure: once the store writes again, so does the ledger.
pub struct LedgerWriter {
    shared: Arc<LedgerShared>,
    store: Arc<dyn Store>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A record handed to the writer; wait on it before sending what it records.
pub struct LedgerTicket(tokio::sync::oneshot::Receiver<Result<(), LedgerRefused>>);

impl LedgerTicket {
    /// Waits (from async code) until the record is written.
    pub async fn written(self) -> Result<(), LedgerRefused> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refused)) => Err(refused),
            Err(_) => Err(LedgerWriter::stopped()),
        }
    }

    /// Waits (from a blocking thread, never from async code) until the record is written.
    pub fn written_blocking(self) -> Result<(), LedgerRefused> {
        match self.0.blocking_recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refused)) => Err(refused),
            Err(_) => Err(LedgerWriter::stopped()),
        }
    }
}

impl LedgerWriter {
    /// Starts the writer thread over `store`.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let shared = Arc::new(LedgerShared::default());
        let queue = shared.clone();
        let writer_store = store.clone();
        let thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || Self::run(&queue, writer_store.as_ref()))
            .ok();
        Self {
            shared,
            store,
            thread,
        }
    }

    /// The writer thread: takes everything queued (at most a group), writes it in one
    /// batch, answers each waiter.
    fn run(shared: &LedgerShared, store: &dyn Store) {
        let mut failing = false;
        loop {
            let group = {
                let mut queue = shared.lock();
                while queue.jobs.is_empty() && !queue.closed {
                    queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
                }
                if queue.jobs.is_empty() {
                    return;
                }
                let take = queue.jobs.len().min(LEDGER_GROUP_MAX);
                let rest = queue.jobs.split_off(take);
                std::mem::replace(&mut queue.jobs, rest)
            };
            let (entries, waiters): (Vec<Option<LedgerEntry>>, Vec<_>) = group.into_iter().unzip();
            let entries: Vec<LedgerEntry> = entries.into_iter().flatten().collect();
            let answer = if entries.is_empty() {
                Ok(())
            } else {
                match store.append_ledger_many(&entries) {
                    Ok(_) => {
                        if std::mem::take(&mut failing) {
                            tracing::info!("disclosure ledger writes again; deliveries go on");
                        }
                        Ok(())
                    }
                    Err(problem) => {
                        if !std::mem::replace(&mut failing, true) {
                            tracing::error!(%problem, "disclosure ledger write failed; deliveries are refused until the store writes again");
                        }
                        Err(LedgerRefused::from(&problem))
                    }
                }
            };
            for waiter in waiters {
                let _ = waiter.send(answer.clone());
            }
        }
    }

    fn stopped() -> LedgerRefused {
        LedgerRefused {
            disk_full: false,
            reason: "the disclosure ledger's writer has stopped".into(),
        }
    }

    /// Hands `entry` to the writer; refuses at once while the store cannot write.
    pub fn append(&self, entry: LedgerEntry) -> Result<LedgerTicket, LedgerRefused> {
        if let Err(error) = self.store.writable() {
            return Err(LedgerRefused::from(&error));
        }
        self.push(Some(entry))
    }

    /// A ticket answered once every record handed over so far is in the store.
    pub fn barrier(&self) -> Result<LedgerTicket, LedgerRefused> {
        self.push(None)
    }

    fn push(&self, entry: Option<LedgerEntry>) -> Result<LedgerTicket, LedgerRefused> {
        if self.thread.is_none() {
            return Err(Self::stopped());
        }
        let (done, wait) = tokio::sync::oneshot::channel();
        let mut queue = self.shared.lock();
        if queue.closed {
            return Err(Self::stopped());
        }
        let was_empty = queue.jobs.is_empty();
        queue.jobs.push((entry, done));
        drop(queue);
        if was_empty {
            self.shared.wake.notify_one();
        }
        Ok(LedgerTicket(wait))
    }
}

impl Drop for LedgerWriter {
    fn drop(&mut self) {
        // Closing the queue ends the writer after the records already handed over.
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
