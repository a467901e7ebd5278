//! The Raft log and vote on sled.
//!
//! ### To ensure correctness
//!
//! - The vote is flushed to disk before `save_vote` returns: a member that forgot its vote
//!   could vote twice in one term.
//! - Appended entries are flushed before the `LogFlushed` callback fires: openraft counts an
//!   entry towards a quorum once the callback says it is durable. The flush happens on a
//!   thread of its own ([`Flusher`]): `append` returns at once, so openraft goes on (sending
//!   the same entries to followers, taking more writes) while they reach the disk, and the
//!   appends that arrive during one flush share the next (group commit).
//! - Every flush goes through that thread in order, so when `save_vote`, `truncate` or `purge`
//!   return, every earlier append is durable and acknowledged too.
//! - Writes are serialized by openraft (one writer), so no write overtakes an earlier one.
//! - Keys are big-endian indexes, so sled's order is log order and ranges are cheap.
//! - `committed` is saved without a flush: losing it only means re-applying less on restart,
//!   and the leader re-commits the rest.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};

use super::typ::{Entry, LogId, StorageError, Vote};
use super::TypeConfig;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// Log store: tree `raft_log` (index → entry) and tree `raft_meta` (vote, committed, purged).
#[derive(Clone)]
pub struct LogStore {
    log: sled::Tree,
    meta: sled::Tree,
    flusher: Flusher,
    /// The last commit index openraft saved (openraft 0.9's metrics have none), for
    /// `GET /v1/cluster`; 0 before the first.
    committed: Arc<AtomicU64>,
}

/// What the flush thread is asked to do.
enum FlushJob {
    /// Entries were written: flush, then tell openraft.
    Appended(LogFlushed<TypeConfig>),
    /// Flush, then answer.
    Wait(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// The thread that flushes the database, for any number of writes at once. It ends when the
/// last [`LogStore`] clone is dropped.
#[derive(Clone)]
struct Flusher {
    jobs: std::sync::mpsc::Sender<FlushJob>,
}

impl Flusher {
    fn start(db: sled::Db) -> std::io::Result<Flusher> {
        let (jobs, rx) = std::sync::mpsc::channel::<FlushJob>();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let flushing = std::time::Instant::now();
                    let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
                    metrics::histogram!("warmpool_raft_log_flush_seconds")
                        .record(flushing.elapsed().as_secs_f64());
                    metrics::histogram!("warmpool_raft_log_flush_batch").record(batch.len() as f64);
                    for job in batch {
                        match job {
                            FlushJob::Appended(callback) => callback
                                .log_io_completed(result.clone().map_err(std::io::Error::other)),
                            FlushJob::Wait(done) => {
                                let _ = done.send(result.clone());
                            }
                        }
                    }
                }
            })?;
        Ok(Flusher { jobs })
    }

    fn appended(&self, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError> {
        self.jobs
            .send(FlushJob::Appended(callback))
            .map_err(|_| gone(ErrorSubject::Logs))
    }

    async fn flush(&self, subject: ErrorSubject<u64>) -> Result<(), StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(FlushJob::Wait(tx))
            .map_err(|_| gone(subject.clone()))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_err(subject, ErrorVerb::Write, std::io::Error::other(e))),
            Err(_) => Err(gone(subject)),
        }
    }
}

fn gone(subject: ErrorSubject<u64>) -> StorageError {
    io_err(
        subject,
        ErrorVerb::Write,
        std::io::Error::other("the log flush thread is gone"),
    )
}

fn io_err(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, openraft::AnyError::new(&e)),
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl LogStore {
    /// Opens the log store in `db`.
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(LogStore {
            log: db.open_tree("raft_log")?,
            meta: db.open_tree("raft_meta")?,
            flusher: Flusher::start(db.clone())?,
            committed: Arc::default(),
        })
    }

    /// The commit index as this store last saved it, shared with whoever reports it.
    pub fn commit_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        k: &[u8],
        subject: ErrorSubject<u64>,
    ) -> Result<Option<T>, StorageError> {
        let Some(bytes) = self
            .meta
            .get(k)
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io_err(subject, ErrorVerb::Read, e))
    }

    fn write_meta<T: serde::Serialize>(
        &self,
        k: &[u8],
        v: &T,
        subject: ErrorSubject<u64>,
    ) -> Result<(), StorageError> {
        let bytes =
            serde_json::to_vec(v).map_err(|e| io_err(subject.clone(), ErrorVerb::Write, e))?;
        self.meta
            .insert(k, bytes)
            .map_err(|e| io_err(subject, ErrorVerb::Write, e))?;
        Ok(())
    }

    async fn flush(&self, subject: ErrorSubject<u64>) -> Result<(), StorageError> {
        self.flusher.flush(subject).await
    }

    fn decode(bytes: &[u8]) -> Result<Entry, StorageError> {
        serde_json::from_slice(bytes).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))
    }

    /// Number of entries on disk (for metrics and tests).
    pub fn len(&self) -> usize {
        self.log.len()
    }

    /// True when no entry is on disk.
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for item in self.log.range(key(start)..) {
            let (k, v) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            let index = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| {
                io_err(
                    ErrorSubject::Logs,
                    ErrorVerb::Read,
                    std::io::Error::other("bad log key"),
                )
            })?);
            if !range.contains(&index) {
                break;
            }
            out.push(Self::decode(&v)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(LAST_PURGED, ErrorSubject::Store)?;
        let last = match self
            .log
            .last()
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?
        {
            Some((_, v)) => Some(Self::decode(&v)?.log_id),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(VOTE, vote, ErrorSubject::Vote)?;
        self.flush(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write_meta(COMMITTED, &committed, ErrorSubject::Store)?;
        // openraft 0.9's metrics have no commit index; this is where it is known.
        let index = committed.map_or(0, |l| l.index);
        self.committed.store(index, Ordering::Relaxed);
        metrics::gauge!("warmpool_raft_commit_index").set(index as f64);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed = self
            .read_meta::<Option<LogId>>(COMMITTED, ErrorSubject::Store)?
            .flatten();
        self.committed
            .store(committed.map_or(0, |l| l.index), Ordering::Relaxed);
        Ok(committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            batch.insert(&key(entry.log_id.index), bytes);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        // Durable first, acknowledged second: the flush thread calls back.
        self.flusher.appended(callback)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(key(log_id.index)..) {
            let (k, _) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.flush(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash in between leaves extra entries, never a hole.
        self.write_meta(LAST_PURGED, &log_id, ErrorSubject::Store)?;
        self.flush(ErrorSubject::Store).await?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=key(log_id.index)) {
            let (k, _) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        Ok(())
    }
}
