//! The Raft state machine: [`PoolState`] in memory, snapshots on sled.
//!
//! ### To ensure correctness
//!
//! - `apply` only calls the pure [`PoolState::apply`]; a refused command is a [`Response`]
//!   value, never a `StorageError` (which would stop Raft).
//! - Installing a snapshot *replaces* the whole state; nothing of the old one survives.
//! - On start the state is loaded from the last snapshot; openraft then re-applies the log
//!   from the snapshot's last index up to the saved committed index.
//! - Snapshots are written to disk (one batch, flushed) before they are reported built.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, StorageIOError,
};
use tokio::sync::watch;

use super::typ::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership};
use super::TypeConfig;
use crate::state::{Evicted, PoolState, Response};

const SNAPSHOT_META: &[u8] = b"meta";
const SNAPSHOT_DATA: &[u8] = b"data";

/// The state every reader shares: the API, the leader loop and the event stream.
pub struct Shared {
    data: RwLock<SmData>,
    applied: watch::Sender<u64>,
}

struct SmData {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: PoolState,
}

impl Shared {
    fn read_data(&self) -> RwLockReadGuard<'_, SmData> {
        // A panic while applying would already have stopped Raft; reading what is there is
        // the most useful thing left to do.
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_data(&self) -> RwLockWriteGuard<'_, SmData> {
        self.data.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the current state. Keep `f` short: appliers wait for it.
    pub fn read<R>(&self, f: impl FnOnce(&PoolState) -> R) -> R {
        f(&self.read_data().state)
    }

    /// The last applied log index; changes wake receivers.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The last applied log index.
    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }
}

/// openraft's handle on the state machine.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
    db: sled::Db,
    snapshots: sled::Tree,
    /// This member's archive writer, which takes what each applied entry evicted.
    archive: Option<tokio::sync::mpsc::Sender<Evicted>>,
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

impl StateMachineStore {
    /// Opens the state machine in `db`, loading the last snapshot if there is one.
    pub fn open(db: &sled::Db) -> Result<Self, StorageError> {
        let snapshots = db
            .open_tree("snapshot")
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        let (applied, _) = watch::channel(0);
        let store = StateMachineStore {
            shared: Arc::new(Shared {
                data: RwLock::new(SmData {
                    last_applied: None,
                    membership: StoredMembership::default(),
                    state: PoolState::default(),
                }),
                applied,
            }),
            db: db.clone(),
            snapshots,
            archive: None,
        };
        if let Some((meta, bytes)) = store.load_snapshot()? {
            store.replace(&meta, &bytes)?;
        }
        Ok(store)
    }

    /// Hands what each applied entry evicts to `writer` (see [`crate::archive`]).
    pub fn with_archive(mut self, writer: tokio::sync::mpsc::Sender<Evicted>) -> Self {
        self.shared.write_data().state.collect_evicted(true);
        self.archive = Some(writer);
        self
    }

    /// The shared read handle.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn load_snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
        let read = |k| {
            self.snapshots
                .get(k)
                .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))
        };
        let (Some(meta), Some(data)) = (read(SNAPSHOT_META)?, read(SNAPSHOT_DATA)?) else {
            return Ok(None);
        };
        let meta: SnapshotMeta = serde_json::from_slice(&meta)
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(Some((meta, data.to_vec())))
    }

    async fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let meta_bytes =
            serde_json::to_vec(meta).map_err(|e| io_err(subject(), ErrorVerb::Write, e))?;
        let mut batch = sled::Batch::default();
        batch.insert(SNAPSHOT_META, meta_bytes);
        batch.insert(SNAPSHOT_DATA, data);
        // A snapshot of a large fleet is tens of MB: write and flush it on a blocking thread,
        // not on one of the runtime's few workers (which serve the API and Raft meanwhile).
        let (tree, db) = (self.snapshots.clone(), self.db.clone());
        tokio::task::spawn_blocking(move || {
            tree.apply_batch(batch)?;
            db.flush().map(|_| ())
        })
        .await
        .map_err(|e| io_err(subject(), ErrorVerb::Write, e))?
        .map_err(|e| io_err(subject(), ErrorVerb::Write, e))?;
        Ok(())
    }

    /// Replaces the whole state with the snapshot's.
    fn replace(&self, meta: &SnapshotMeta, bytes: &[u8]) -> Result<(), StorageError> {
        let state = parse_snapshot(meta, bytes)?;
        self.install_state(meta, state);
        Ok(())
    }

    /// Replaces the whole state with `state`, parsed from the snapshot `meta` describes.
    fn install_state(&self, meta: &SnapshotMeta, mut state: PoolState) {
        state.collect_evicted(self.archive.is_some());
        let index = meta.last_log_id.map_or(0, |l| l.index);
        {
            let mut d = self.shared.write_data();
            d.last_applied = meta.last_log_id;
            d.membership = meta.last_membership.clone();
            d.state = state;
        }
        self.shared.applied.send_replace(index);
    }
}

/// A state as snapshot bytes: its JSON, gzip-compressed (a fleet's records compress about
/// tenfold, and the bytes are written to sled and sent to members that fall behind).
pub(crate) fn encode_snapshot(state: &PoolState) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    // serde_json writes token by token; the buffer hands the encoder large blocks.
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, gz);
    serde_json::to_writer(&mut out, state)?;
    out.flush()?;
    out.into_inner().map_err(|e| e.into_error())?.finish()
}

/// The state in snapshot bytes: gzip-compressed JSON, or plain JSON as versions before
/// compression wrote them.
fn decode_snapshot(bytes: &[u8]) -> std::io::Result<PoolState> {
    const GZIP: [u8; 2] = [0x1f, 0x8b];
    if bytes.starts_with(&GZIP) {
        let gz = flate2::read::GzDecoder::new(bytes);
        Ok(serde_json::from_reader(std::io::BufReader::new(gz))?)
    } else {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// A snapshot's state, with its derived indexes rebuilt.
fn parse_snapshot(meta: &SnapshotMeta, bytes: &[u8]) -> Result<PoolState, StorageError> {
    let mut state: PoolState = decode_snapshot(bytes).map_err(|e| {
        io_err(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Read,
            e,
        )
    })?;
    state.rebuild_indexes();
    Ok(state)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // Copy the state under the lock and serialize the copy outside it, on a blocking
        // thread: with 100,000 containers, serializing takes far longer than copying, and
        // every apply (every allocation) waits while the lock is held.
        let started = std::time::Instant::now();
        let (last_log_id, last_membership, state) = {
            let d = self.shared.read_data();
            (d.last_applied, d.membership.clone(), d.state.clone())
        };
        let copied = started.elapsed();
        let bytes = tokio::task::spawn_blocking(move || encode_snapshot(&state))
            .await
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        let serialized = started.elapsed();
        let snapshot_id = match last_log_id {
            Some(l) => format!(
                "{}-{}-{}",
                l.leader_id,
                l.index,
                warmpool_proto::Timestamp::now().0
            ),
            None => format!("none-{}", warmpool_proto::Timestamp::now().0),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        self.save_snapshot(&meta, &bytes).await?;
        metrics::gauge!("warmpool_raft_snapshot_bytes").set(bytes.len() as f64);
        tracing::info!(
            index = last_log_id.map_or(0, |l| l.index),
            bytes = bytes.len(),
            copy_ms = copied.as_millis() as u64,
            serialize_ms = (serialized - copied).as_millis() as u64,
            write_ms = (started.elapsed() - serialized).as_millis() as u64,
            "snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let d = self.shared.read_data();
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        let (last, evicted) = {
            let mut d = self.shared.write_data();
            for entry in entries {
                d.last_applied = Some(entry.log_id);
                let reply = match entry.payload {
                    EntryPayload::Blank => Response::Ok,
                    EntryPayload::Normal(req) => d.state.apply(entry.log_id.index, req),
                    EntryPayload::Membership(m) => {
                        d.membership = StoredMembership::new(Some(entry.log_id), m);
                        Response::Ok
                    }
                };
                replies.push(reply);
            }
            (
                d.last_applied.map_or(0, |l| l.index),
                d.state.take_evicted(),
            )
        };
        self.shared.applied.send_replace(last);
        // Outside the lock, and never waiting: the answers to this entry's clients go out
        // now. A writer a whole queue behind (its disk far slower than the log's) loses
        // the batch from this member's archive, logged and counted; the state has it evicted
        // either way.
        if let Some(writer) = &self.archive {
            for batch in evicted {
                match writer.try_send(batch) {
                    Ok(()) => {}
                    Err(tokio::sync::mpsc::error::TrySendError::Full(lost)) => {
                        metrics::counter!("warmpool_archive_dropped_total").increment(1);
                        tracing::warn!(
                            index = lost.index,
                            "the archive writer is {} batches behind: the records this entry evicted are not archived here",
                            crate::archive::QUEUE
                        );
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        // Parse before touching anything, so a bad snapshot leaves the old state whole; on a
        // blocking thread, since a large fleet's snapshot takes a while.
        let started = std::time::Instant::now();
        let parse_meta = meta.clone();
        let (state, bytes) = tokio::task::spawn_blocking(move || {
            let state = parse_snapshot(&parse_meta, &bytes);
            (state, bytes)
        })
        .await
        .map_err(|e| {
            io_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                e,
            )
        })?;
        self.install_state(meta, state?);
        let parsed = started.elapsed();
        self.save_snapshot(meta, &bytes).await?;
        tracing::info!(
            index = meta.last_log_id.map_or(0, |l| l.index),
            bytes = bytes.len(),
            parse_ms = parsed.as_millis() as u64,
            write_ms = (started.elapsed() - parsed).as_millis() as u64,
            "snapshot installed"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.load_snapshot()?.map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::super::log_store::LogStore;
    use super::*;

    struct SledBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
            let dir = tempfile::tempdir()
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
            let db = sled::open(dir.path())
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
            let log = LogStore::open(&db)
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
            let sm = StateMachineStore::open(&db)?;
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn snapshots_are_compressed_and_plain_json_ones_still_read() {
        let mut state = PoolState::default();
        let spec: warmpool_proto::PoolSpec =
            serde_json::from_str(r#"{"name":"demo","image":"busybox"}"#).unwrap();
        state.apply(
            1,
            crate::state::Request {
                at: warmpool_proto::Timestamp(1),
                cmd: crate::state::Command::CreatePool { spec },
            },
        );
        let json = serde_json::to_vec(&state).unwrap();
        let packed = encode_snapshot(&state).unwrap();
        assert_eq!(&packed[..2], &[0x1f, 0x8b], "gzip");
        for bytes in [&packed, &json] {
            let back = decode_snapshot(bytes).unwrap();
            assert_eq!(serde_json::to_vec(&back).unwrap(), json);
        }
        assert!(decode_snapshot(b"\x1f\x8bgarbage").is_err());
        assert!(decode_snapshot(b"not json").is_err());
    }

    /// openraft's own conformance suite for log and state-machine storage.
    #[test]
    fn openraft_storage_suite() -> Result<(), StorageError> {
        Suite::test_all(SledBuilder)
    }
}
