//! The archive: records evicted from the replicated state, kept on this member's disk.
//!
//! Every member evicts the same records at the same log index ([`Evicted`]); after applying,
//! the state machine hands them to this member's writer ([`spawn_writer`]), a thread of its
//! own, so a slow disk delays the archive, never the log: apply does not wait for it (a writer
//! [`QUEUE`] batches behind loses the next batches, logged and counted in
//! `warmpool_archive_dropped_total`). A write that fails is logged and counted
//! (`warmpool_archive_errors_total`) and the records are lost to this member's archive; the
//! replicated state is never affected.
//!
//! Layout, under `<data dir>/archive/`, one directory per kind (`events`, `containers`,
//! `allocations`):
//!
//! - `active.jsonl`: the segment being written, one JSON line per record
//!   (`{"index":…,"at":…,"tenant":…,"record":{…}}`), flushed after every batch;
//! - `<min ms>-<max ms>-<last index>.jsonl.gz`: closed segments, gzip-compressed, named by the
//!   earliest and latest record time they hold (so a time-range read opens only the files
//!   that overlap it) and the last log index they hold. A segment is closed after
//!   [`Rotation::records`] records or [`Rotation::bytes`] bytes: written whole to a
//!   temporary file, synced, renamed, then the active file is emptied.
//!
//! Pruning: after a segment closes (and at least once a minute while records come), the
//! writer deletes the oldest closed segments, of all kinds together, while the archive is
//! over [`Rotation::max_bytes`] on disk or their newest record is older than
//! [`Rotation::max_age`] ([`plan_prune`] decides; counted in
//! `warmpool_archive_pruned_segments_total` and `warmpool_archive_pruned_bytes_total`). The
//! newest closed segment of each kind is always kept: its name holds the highest index
//! archived, which a restart needs to write nothing twice. A read of a pruned range answers
//! what is left; a read that runs while the writer prunes skips a file deleted under it.
//!
//! Restart: the state is rebuilt from the last snapshot and the log after it, so entries are
//! applied again and evict again. Records carry the log index that evicted them; a batch at
//! or below the highest index already archived for its kind is skipped, so nothing is
//! written twice. A line cut off by a crash is dropped at start.
//!
//! Not covered: a member that catches up by installing a snapshot never applies the entries
//! the snapshot covers, so its archive lacks what they evicted (the other members have it).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use warmpool_proto::{Allocation, Container, Event, TenantId, Timestamp};

use crate::state::Evicted;

/// Batches the writer may fall behind before what apply evicts is dropped from the archive.
pub const QUEUE: usize = 4096;
/// The name of the segment being written.
const ACTIVE: &str = "active.jsonl";

/// How often, at most, the writer prunes when no segment closed meanwhile.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// When a segment is closed, and when closed segments are deleted.
#[derive(Clone, Copy, Debug)]
pub struct Rotation {
    /// Records in a segment at most.
    pub records: usize,
    /// Uncompressed bytes in a segment at most.
    pub bytes: u64,
    /// Bytes on disk of the whole archive at most (closed segments as compressed, active ones
    /// as written); the oldest closed segments are deleted beyond it.
    pub max_bytes: u64,
    /// Closed segments whose newest record is older than this are deleted; `None` keeps them.
    pub max_age: Option<Duration>,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            records: 50_000,
            bytes: 32 << 20,
            max_bytes: 1 << 30,
            max_age: Some(Duration::from_secs(30 * 86_400)),
        }
    }
}

/// A closed segment as pruning sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentFacts {
    /// Its kind.
    pub kind: Kind,
    /// The time of its newest record.
    pub max: Timestamp,
    /// The last log index it holds.
    pub last_index: u64,
    /// Its size on disk.
    pub bytes: u64,
}

/// Which closed segments to delete (indices into `closed`, ascending): oldest first (by their
/// newest record, then index), every one older than `max_age` before `now`, then more while
/// the archive (`closed` plus `active_bytes`) is over `max_bytes`. The newest segment of each
/// kind is never deleted.
pub fn plan_prune(
    closed: &[SegmentFacts],
    active_bytes: u64,
    now: Timestamp,
    max_bytes: u64,
    max_age: Option<Duration>,
) -> Vec<usize> {
    let newest = |k: Kind| {
        closed
            .iter()
            .enumerate()
            .filter(|(_, c)| c.kind == k)
            .max_by_key(|(_, c)| c.last_index)
            .map(|(i, _)| i)
    };
    let kept: Vec<usize> = Kind::ALL.iter().filter_map(|k| newest(*k)).collect();
    let mut order: Vec<usize> = (0..closed.len()).filter(|i| !kept.contains(i)).collect();
    order.sort_by_key(|&i| (closed[i].max, closed[i].last_index));
    let cutoff = max_age.map(|a| Timestamp(now.0.saturating_sub(a.as_millis() as u64)));
    let mut total = closed
        .iter()
        .fold(active_bytes, |t, c| t.saturating_add(c.bytes));
    let mut out = Vec::new();
    for i in order {
        let too_old = cutoff.is_some_and(|c| closed[i].max < c);
        if !too_old && total <= max_bytes {
            // The rest are newer still.
            break;
        }
        total = total.saturating_sub(closed[i].bytes);
        out.push(i);
    }
    out.sort_unstable();
    out
}

/// What one pruning pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Segments deleted.
    pub segments: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// What an archive directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Events.
    Events,
    /// Ended containers.
    Containers,
    /// Released allocations.
    Allocations,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Events, Kind::Containers, Kind::Allocations];

    fn dir(self) -> &'static str {
        match self {
            Kind::Events => "events",
            Kind::Containers => "containers",
            Kind::Allocations => "allocations",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// One archived record as written: the log index that evicted it, its time (an event's
/// time, a container's end, an allocation's release), the tenant it belongs to, the record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Line<T> {
    /// The log index whose apply evicted it.
    pub index: u64,
    /// Its time.
    pub at: Timestamp,
    /// Its tenant, when it belongs to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    /// The record as the API showed it.
    pub record: T,
}

/// Where a read of the archive resumes: after the `n`th record (counting from 1) evicted at
/// log `index`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// The log index.
    pub index: u64,
    /// Records of that index before it, plus one.
    pub n: u32,
}

impl Position {
    /// As an opaque cursor.
    pub fn to_cursor(self) -> String {
        format!("z{}.{}", self.index, self.n)
    }

    /// From a cursor [`Position::to_cursor`] made.
    pub fn from_cursor(s: &str) -> Option<Position> {
        let (index, n) = s.strip_prefix('z')?.split_once('.')?;
        Some(Position {
            index: index.parse().ok()?,
            n: n.parse().ok()?,
        })
    }
}

/// A time-range read.
#[derive(Clone, Copy, Debug)]
pub struct Range {
    /// Records at or after this time.
    pub since: Option<Timestamp>,
    /// Records at or before this time.
    pub until: Option<Timestamp>,
    /// Records after this position.
    pub after: Option<Position>,
    /// At most this many.
    pub limit: usize,
}

impl Range {
    fn overlaps(&self, min: Timestamp, max: Timestamp) -> bool {
        self.since.is_none_or(|s| max >= s) && self.until.is_none_or(|u| min <= u)
    }

    fn holds(&self, at: Timestamp) -> bool {
        self.since.is_none_or(|s| at >= s) && self.until.is_none_or(|u| at <= u)
    }
}

/// A page read from the archive: the records and, when more may follow, where to go on.
#[derive(Debug)]
pub struct ReadPage<T> {
    /// Matching records, in the order they were archived.
    pub lines: Vec<Line<T>>,
    /// Where the next page starts, when this one is full.
    pub next: Option<Position>,
}

/// A closed segment, from its file name.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Closed {
    min: Timestamp,
    max: Timestamp,
    last_index: u64,
    path: PathBuf,
}

fn closed_name(min: Timestamp, max: Timestamp, last_index: u64) -> String {
    format!("{:013}-{:013}-{:012}.jsonl.gz", min.0, max.0, last_index)
}

fn parse_closed(dir: &Path, name: &str) -> Option<Closed> {
    let stem = name.strip_suffix(".jsonl.gz")?;
    let mut parts = stem.split('-');
    let min = parts.next()?.parse().ok()?;
    let max = parts.next()?.parse().ok()?;
    let last_index = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(Closed {
        min: Timestamp(min),
        max: Timestamp(max),
        last_index,
        path: dir.join(name),
    })
}

/// The closed segments of `dir`, in the order they were written.
fn list_closed(dir: &Path) -> io::Result<Vec<Closed>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(c) = entry
            .file_name()
            .to_str()
            .and_then(|n| parse_closed(dir, n))
        {
            out.push(c);
        }
    }
    out.sort_by_key(|c| c.last_index);
    Ok(out)
}

/// The segment of one kind being written.
struct Segment {
    dir: PathBuf,
    file: File,
    records: usize,
    bytes: u64,
    min: Timestamp,
    max: Timestamp,
    /// The highest log index archived for this kind (closed segments included).
    last_index: u64,
}

impl Segment {
    /// Opens the kind's directory: finds the last archived index, drops a line cut off by a
    /// crash, and drops active lines a closed segment already holds (a crash between closing
    /// a segment and emptying the active file).
    fn open(dir: PathBuf) -> io::Result<Segment> {
        fs::create_dir_all(&dir)?;
        let closed_last = list_closed(&dir)?.last().map_or(0, |c| c.last_index);
        let path = dir.join(ACTIVE);
        let mut keep = Vec::new();
        let mut torn = false;
        if let Ok(f) = File::open(&path) {
            let mut text = Vec::new();
            BufReader::new(f).read_to_end(&mut text)?;
            for raw in text.split_inclusive(|b| *b == b'\n') {
                if raw.last() != Some(&b'\n') {
                    torn = true;
                    break;
                }
                match serde_json::from_slice::<Line<serde_json::Value>>(raw) {
                    Ok(l) if l.index > closed_last => keep.push((l.index, l.at, raw.to_vec())),
                    Ok(_) => torn = true,
                    Err(_) => {
                        torn = true;
                        break;
                    }
                }
            }
        }
        if torn {
            let tmp = dir.join("active.jsonl.tmp");
            let mut f = File::create(&tmp)?;
            for (_, _, raw) in &keep {
                f.write_all(raw)?;
            }
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut seg = Segment {
            dir,
            file,
            records: keep.len(),
            bytes: keep.iter().map(|(_, _, r)| r.len() as u64).sum(),
            min: Timestamp(u64::MAX),
            max: Timestamp(0),
            last_index: closed_last,
        };
        for (index, at, _) in &keep {
            seg.min = seg.min.min(*at);
            seg.max = seg.max.max(*at);
            seg.last_index = seg.last_index.max(*index);
        }
        Ok(seg)
    }

    /// Appends `lines` (all evicted at `index`) unless that index is archived already; true
    /// when that closed the segment.
    fn append<T: Serialize>(
        &mut self,
        index: u64,
        lines: &[Line<T>],
        rotation: Rotation,
    ) -> io::Result<bool> {
        if lines.is_empty() || index <= self.last_index {
            return Ok(false);
        }
        let mut buf = Vec::new();
        for l in lines {
            serde_json::to_writer(&mut buf, l)?;
            buf.push(b'\n');
            self.min = self.min.min(l.at);
            self.max = self.max.max(l.at);
        }
        self.file.write_all(&buf)?;
        self.file.flush()?;
        self.records += lines.len();
        self.bytes += buf.len() as u64;
        self.last_index = index;
        if self.records >= rotation.records || self.bytes >= rotation.bytes {
            self.rotate()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Closes the active segment into a compressed file and starts an empty one.
    fn rotate(&mut self) -> io::Result<()> {
        if self.records == 0 {
            return Ok(());
        }
        let name = closed_name(self.min, self.max, self.last_index);
        let tmp = self.dir.join(format!("{name}.tmp"));
        {
            let mut src = File::open(self.dir.join(ACTIVE))?;
            let out = File::create(&tmp)?;
            let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            io::copy(&mut src, &mut gz)?;
            gz.finish()?.sync_all()?;
        }
        fs::rename(&tmp, self.dir.join(&name))?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.records = 0;
        self.bytes = 0;
        self.min = Timestamp(u64::MAX);
        self.max = Timestamp(0);
        Ok(())
    }
}

/// One member's archive.
pub struct Archive {
    dir: PathBuf,
    segments: [Mutex<Segment>; 3],
    rotation: Rotation,
}

impl Archive {
    /// Opens (creating) the archive in `dir`.
    pub fn open(dir: &Path, rotation: Rotation) -> io::Result<Archive> {
        let seg = |k: Kind| Segment::open(dir.join(k.dir())).map(Mutex::new);
        Ok(Archive {
            dir: dir.to_path_buf(),
            segments: [
                seg(Kind::Events)?,
                seg(Kind::Containers)?,
                seg(Kind::Allocations)?,
            ],
            rotation,
        })
    }

    /// Where it is.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn segment(&self, kind: Kind) -> std::sync::MutexGuard<'_, Segment> {
        self.segments[kind.slot()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The highest log index archived for `kind`.
    pub fn last_index(&self, kind: Kind) -> u64 {
        self.segment(kind).last_index
    }

    /// Appends what one applied entry evicted (skipping kinds that hold its index already);
    /// true when that closed a segment.
    pub fn append(&self, batch: &Evicted) -> io::Result<bool> {
        let at_of = |c: &Container| c.ended_at.or(c.released_at).unwrap_or(c.created_at);
        let events: Vec<Line<&Event>> = batch
            .events
            .iter()
            .map(|(e, t)| Line {
                index: batch.index,
                at: e.at,
                tenant: t.clone(),
                record: &**e,
            })
            .collect();
        let containers: Vec<Line<&Container>> = batch
            .containers
            .iter()
            .map(|(c, t)| Line {
                index: batch.index,
                at: at_of(c),
                tenant: t.clone(),
                record: &**c,
            })
            .collect();
        let allocations: Vec<Line<&Allocation>> = batch
            .allocations
            .iter()
            .map(|a| Line {
                index: batch.index,
                at: a.released_at.unwrap_or(a.created_at),
                tenant: Some(a.tenant.clone()),
                record: &**a,
            })
            .collect();
        let r = self.rotation;
        let mut closed = self.segment(Kind::Events).append(batch.index, &events, r)?;
        closed |= self
            .segment(Kind::Containers)
            .append(batch.index, &containers, r)?;
        closed |= self
            .segment(Kind::Allocations)
            .append(batch.index, &allocations, r)?;
        Ok(closed)
    }

    /// Deletes the closed segments [`plan_prune`] picks at `now` under this archive's limits.
    /// Runs on the writer's thread (nothing else closes segments meanwhile); a read that
    /// listed a deleted file skips it.
    pub fn prune(&self, now: Timestamp) -> io::Result<Pruned> {
        let mut facts = Vec::new();
        let mut paths = Vec::new();
        let mut active_bytes = 0u64;
        for k in Kind::ALL {
            active_bytes += self.segment(k).bytes;
            let dir = self.dir.join(k.dir());
            for c in list_closed(&dir)? {
                let bytes = match fs::metadata(&c.path) {
                    Ok(m) => m.len(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                facts.push(SegmentFacts {
                    kind: k,
                    max: c.max,
                    last_index: c.last_index,
                    bytes,
                });
                paths.push(c.path);
            }
        }
        let r = self.rotation;
        let mut pruned = Pruned::default();
        for i in plan_prune(&facts, active_bytes, now, r.max_bytes, r.max_age) {
            match fs::remove_file(&paths[i]) {
                Ok(()) => {
                    pruned.segments += 1;
                    pruned.bytes += facts[i].bytes;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(pruned)
    }

    /// [`Archive::prune`] with its logs and counters.
    fn prune_logged(&self) {
        match self.prune(Timestamp::now()) {
            Ok(p) if p.segments > 0 => {
                metrics::counter!("warmpool_archive_pruned_segments_total").increment(p.segments);
                metrics::counter!("warmpool_archive_pruned_bytes_total").increment(p.bytes);
                info!(segments = p.segments, bytes = p.bytes, dir = %self.dir.display(),
                    max_bytes = self.rotation.max_bytes,
                    max_age_secs = self.rotation.max_age.map(|a| a.as_secs()),
                    "archive pruned: oldest segments deleted");
            }
            Ok(_) => {}
            Err(e) => {
                metrics::counter!("warmpool_archive_errors_total").increment(1);
                warn!(error = %e, dir = %self.dir.display(), "archive pruning failed");
            }
        }
    }

    /// Closes every active segment (tests, and a clean stop).
    pub fn rotate_all(&self) -> io::Result<()> {
        for k in Kind::ALL {
            self.segment(k).rotate()?;
        }
        Ok(())
    }

    /// Records of `kind` in `range` that pass `keep`, in the order they were archived,
    /// opening only the closed segments whose times overlap the range.
    pub fn read<T: DeserializeOwned>(
        &self,
        kind: Kind,
        range: Range,
        mut keep: impl FnMut(&Line<T>) -> bool,
    ) -> io::Result<ReadPage<T>> {
        let dir = self.dir.join(kind.dir());
        // The listing and the active segment are read under the lock, so a rotation cannot
        // move records between them mid-read; closed files never change, so they are read
        // after it (one deleted by hand meanwhile is skipped).
        let (closed, active) = {
            let seg = self.segment(kind);
            let closed = list_closed(&dir)?;
            let active = if seg.records > 0 && range.overlaps(seg.min, seg.max) {
                let mut text = Vec::new();
                File::open(dir.join(ACTIVE))?.read_to_end(&mut text)?;
                text
            } else {
                Vec::new()
            };
            (closed, active)
        };
        let mut scan = Scan {
            range,
            after: range.after.unwrap_or_default(),
            last: Position::default(),
            page_last: Position::default(),
            out: Vec::new(),
        };
        let mut full = false;
        for c in &closed {
            // Segments wholly before the cursor, or outside the time range, stay closed.
            if c.last_index < scan.after.index || !range.overlaps(c.min, c.max) {
                continue;
            }
            let f = match File::open(&c.path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            // One entry's records never span two files (a segment closes between batches).
            let mut r = BufReader::new(flate2::read::GzDecoder::new(f));
            if scan.visit(&mut r, &mut keep)? {
                full = true;
                break;
            }
        }
        if !full && !active.is_empty() {
            full = scan.visit(&mut BufReader::new(&active[..]), &mut keep)?;
        }
        Ok(ReadPage {
            next: full.then_some(scan.page_last),
            lines: scan.out,
        })
    }
}

/// A read in progress: where it is and what it found.
struct Scan<T> {
    range: Range,
    after: Position,
    /// The position of the last line read.
    last: Position,
    /// The position of the last line put on the page.
    page_last: Position,
    out: Vec<Line<T>>,
}

impl<T: DeserializeOwned> Scan<T> {
    /// Reads lines into the page; true when the page is full and another record matches.
    fn visit(
        &mut self,
        reader: &mut dyn BufRead,
        keep: &mut impl FnMut(&Line<T>) -> bool,
    ) -> io::Result<bool> {
        let mut raw = String::new();
        loop {
            raw.clear();
            if reader.read_line(&mut raw)? == 0 || !raw.ends_with('\n') {
                return Ok(false);
            }
            // The index and time first, without parsing the record.
            let Ok(head) = serde_json::from_str::<Line<serde::de::IgnoredAny>>(&raw) else {
                continue;
            };
            let pos = Position {
                index: head.index,
                n: if head.index == self.last.index {
                    self.last.n + 1
                } else {
                    1
                },
            };
            self.last = pos;
            if pos <= self.after || !self.range.holds(head.at) {
                continue;
            }
            let Ok(line) = serde_json::from_str::<Line<T>>(&raw) else {
                continue;
            };
            if !keep(&line) {
                continue;
            }
            if self.out.len() == self.range.limit {
                return Ok(true);
            }
            self.out.push(line);
            self.page_last = pos;
        }
    }
}

/// Starts the writer thread; the state machine sends it what each applied entry evicted.
/// It ends when every sender is gone.
pub fn spawn_writer(archive: Arc<Archive>) -> tokio::sync::mpsc::Sender<Evicted> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Evicted>(QUEUE);
    let spawned = std::thread::Builder::new()
        .name("archive-writer".into())
        .spawn(move || {
            archive.prune_logged();
            let mut pruned_at = Instant::now();
            while let Some(batch) = rx.blocking_recv() {
                let n = batch.events.len() + batch.containers.len() + batch.allocations.len();
                match archive.append(&batch) {
                    Ok(closed) => {
                        metrics::counter!("warmpool_archive_records_total").increment(n as u64);
                        if closed || pruned_at.elapsed() >= PRUNE_EVERY {
                            archive.prune_logged();
                            pruned_at = Instant::now();
                        }
                    }
                    Err(e) => {
                        metrics::counter!("warmpool_archive_errors_total").increment(1);
                        warn!(error = %e, index = batch.index, records = n, dir = %archive.dir().display(),
                            "archive write failed; these records are not in this member's archive");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the archive writer; evicted records are dropped");
    }
    tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use warmpool_proto::EventKind;

    fn event(seq: u64, at: u64) -> Arc<Event> {
        Arc::new(Event {
            seq,
            log_index: seq,
            at: Timestamp(at),
            kind: EventKind::PoolCreated,
            pool: None,
            container: None,
            node: None,
            session: None,
            allocation: None,
            reason: None,
            detail: None,
        })
    }

    /// Entry `index` evicted the events `seqs`, each at time `seq * 1000`.
    fn batch(index: u64, seqs: std::ops::RangeInclusive<u64>) -> Evicted {
        Evicted {
            index,
            events: seqs.map(|s| (event(s, s * 1000), None)).collect(),
            ..Default::default()
        }
    }

    fn read_seqs(a: &Archive, range: Range) -> (Vec<u64>, Option<Position>) {
        let page = a.read::<Event>(Kind::Events, range, |_| true).unwrap();
        (page.lines.iter().map(|l| l.record.seq).collect(), page.next)
    }

    fn all() -> Range {
        Range {
            since: None,
            until: None,
            after: None,
            limit: 1000,
        }
    }

    #[test]
    fn records_are_read_by_time_range_across_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let rot = Rotation {
            records: 10,
            bytes: u64::MAX,
            ..Default::default()
        };
        let a = Archive::open(dir.path(), rot).unwrap();
        for i in 0..10u64 {
            a.append(&batch(100 + i, i * 5 + 1..=i * 5 + 5)).unwrap();
        }
        // 50 events in five closed files of ten, named by their times and last index.
        let names: Vec<String> = list_closed(&dir.path().join("events"))
            .unwrap()
            .iter()
            .map(|c| c.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 5, "{names:?}");
        assert_eq!(
            names[0],
            closed_name(Timestamp(1000), Timestamp(10_000), 101)
        );
        assert_eq!(read_seqs(&a, all()).0, (1..=50).collect::<Vec<_>>());
        let r = Range {
            since: Some(Timestamp(12_000)),
            until: Some(Timestamp(23_000)),
            ..all()
        };
        assert_eq!(read_seqs(&a, r).0, (12..=23).collect::<Vec<_>>());
        // Files outside the range are not opened: spoil one and read around it.
        let first = dir.path().join("events").join(&names[0]);
        std::fs::write(&first, b"not gzip").unwrap();
        assert_eq!(read_seqs(&a, r).0, (12..=23).collect::<Vec<_>>());
        assert!(a.read::<Event>(Kind::Events, all(), |_| true).is_err());
    }

    #[test]
    fn pages_follow_each_other_without_loss_or_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let rot = Rotation {
            records: 7,
            bytes: u64::MAX,
            ..Default::default()
        };
        let a = Archive::open(dir.path(), rot).unwrap();
        for i in 0..6u64 {
            a.append(&batch(10 + i, i * 4 + 1..=i * 4 + 4)).unwrap();
        }
        let mut got = Vec::new();
        let mut after = None;
        loop {
            let (seqs, next) = read_seqs(
                &a,
                Range {
                    after,
                    limit: 3,
                    ..all()
                },
            );
            assert!(seqs.len() <= 3);
            got.extend(seqs);
            match next {
                Some(p) => after = Some(p),
                None => break,
            }
        }
        assert_eq!(got, (1..=24).collect::<Vec<_>>());
    }

    #[test]
    fn a_reopened_archive_skips_what_it_holds_and_drops_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let rot = Rotation {
            records: 4,
            bytes: u64::MAX,
            ..Default::default()
        };
        {
            let a = Archive::open(dir.path(), rot).unwrap();
            a.append(&batch(5, 1..=3)).unwrap();
            a.append(&batch(6, 4..=5)).unwrap(); // closes a file of five
            a.append(&batch(7, 6..=6)).unwrap(); // active
            assert_eq!(a.last_index(Kind::Events), 7);
        }
        // A crash mid-line.
        let active = dir.path().join("events").join(ACTIVE);
        let mut f = OpenOptions::new().append(true).open(&active).unwrap();
        f.write_all(b"{\"index\":8,\"at\":\"2026").unwrap();
        drop(f);
        let a = Archive::open(dir.path(), rot).unwrap();
        assert_eq!(a.last_index(Kind::Events), 7);
        // After a restart the log is applied again from the snapshot: the same batches come
        // again and are skipped; new ones are written.
        a.append(&batch(6, 4..=5)).unwrap();
        a.append(&batch(7, 6..=6)).unwrap();
        a.append(&batch(8, 7..=7)).unwrap();
        assert_eq!(read_seqs(&a, all()).0, (1..=7).collect::<Vec<_>>());
    }

    #[test]
    fn a_crash_between_closing_a_file_and_emptying_the_active_one_writes_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let rot = Rotation {
            records: 100,
            bytes: u64::MAX,
            ..Default::default()
        };
        {
            let a = Archive::open(dir.path(), rot).unwrap();
            a.append(&batch(1, 1..=2)).unwrap();
            a.append(&batch(2, 3..=3)).unwrap();
            // Close a copy of the active file by hand, as a rotation would, but leave the
            // active file as it was (the crash).
            let d = dir.path().join("events");
            let mut gz = flate2::write::GzEncoder::new(
                File::create(d.join(closed_name(Timestamp(1000), Timestamp(3000), 2))).unwrap(),
                flate2::Compression::default(),
            );
            gz.write_all(&fs::read(d.join(ACTIVE)).unwrap()).unwrap();
            gz.finish().unwrap();
        }
        let a = Archive::open(dir.path(), rot).unwrap();
        assert_eq!(read_seqs(&a, all()).0, vec![1, 2, 3]);
        a.append(&batch(3, 4..=4)).unwrap();
        assert_eq!(read_seqs(&a, all()).0, vec![1, 2, 3, 4]);
    }

    fn seg(kind: Kind, max_secs: u64, last_index: u64, bytes: u64) -> SegmentFacts {
        SegmentFacts {
            kind,
            max: Timestamp(max_secs * 1000),
            last_index,
            bytes,
        }
    }

    const DAY: u64 = 86_400;

    #[test]
    fn pruning_deletes_the_oldest_segments_beyond_the_byte_cap() {
        let closed = [
            seg(Kind::Events, 10, 1, 100),
            seg(Kind::Events, 30, 3, 100),
            seg(Kind::Containers, 20, 2, 100),
            seg(Kind::Events, 50, 5, 100),
            seg(Kind::Containers, 40, 4, 100),
        ];
        let now = Timestamp(100_000);
        // Under the cap (active segments count): nothing.
        assert_eq!(plan_prune(&closed, 50, now, 550, None), Vec::<usize>::new());
        // 50 over: the oldest one goes.
        assert_eq!(plan_prune(&closed, 100, now, 550, None), vec![0]);
        // Oldest by their newest record, across kinds: t=10, then t=20, then t=30.
        assert_eq!(plan_prune(&closed, 0, now, 300, None), vec![0, 2]);
        assert_eq!(plan_prune(&closed, 0, now, 200, None), vec![0, 1, 2]);
        // A cap nothing fits: every kind's newest stays all the same.
        assert_eq!(plan_prune(&closed, 1000, now, 0, None), vec![0, 1, 2]);
        assert_eq!(plan_prune(&[], 1000, now, 0, None), Vec::<usize>::new());
    }

    #[test]
    fn pruning_deletes_segments_older_than_the_age_cap() {
        let now = Timestamp(100 * DAY * 1000);
        let closed = [
            seg(Kind::Allocations, 60 * DAY, 7, 10),
            seg(Kind::Allocations, 95 * DAY, 9, 10),
            seg(Kind::Allocations, 50 * DAY, 5, 10),
            seg(Kind::Allocations, 99 * DAY, 12, 10),
            seg(Kind::Events, 10 * DAY, 3, 10),
        ];
        let age = Some(Duration::from_secs(30 * DAY));
        // Older than 30 days: the ones at day 60 and 50; the events' only segment is kept
        // however old.
        assert_eq!(plan_prune(&closed, 0, now, u64::MAX, age), vec![0, 2]);
        // Without an age cap none is too old.
        assert_eq!(
            plan_prune(&closed, 0, now, u64::MAX, None),
            Vec::<usize>::new()
        );
        // Both caps: the old ones, then more by size.
        assert_eq!(plan_prune(&closed, 0, now, 20, age), vec![0, 1, 2]);
    }

    #[test]
    fn pruned_files_are_gone_and_reads_answer_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let rot = Rotation {
            records: 5,
            bytes: u64::MAX,
            max_bytes: u64::MAX,
            max_age: None,
        };
        let a = Archive::open(dir.path(), rot).unwrap();
        for i in 0..6u64 {
            a.append(&batch(10 + i, i * 5 + 1..=i * 5 + 5)).unwrap();
        }
        let d = dir.path().join("events");
        assert_eq!(list_closed(&d).unwrap().len(), 6);
        assert_eq!(a.prune(Timestamp::now()).unwrap(), Pruned::default());
        drop(a);
        // A byte cap of one: all but the newest file go.
        let a = Archive::open(
            dir.path(),
            Rotation {
                max_bytes: 1,
                ..rot
            },
        )
        .unwrap();
        let p = a.prune(Timestamp::now()).unwrap();
        assert_eq!(p.segments, 5);
        assert!(p.bytes > 0);
        let left = list_closed(&d).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].last_index, 15);
        assert_eq!(read_seqs(&a, all()).0, (26..=30).collect::<Vec<_>>());
        // A pruned range reads as empty, no error.
        let old = Range {
            since: Some(Timestamp(1000)),
            until: Some(Timestamp(10_000)),
            ..all()
        };
        assert_eq!(read_seqs(&a, old).0, Vec::<u64>::new());
        // Reopened, the archive still knows what it wrote: nothing written twice.
        a.append(&batch(15, 26..=30)).unwrap();
        a.append(&batch(16, 31..=31)).unwrap();
        assert_eq!(read_seqs(&a, all()).0, (26..=31).collect::<Vec<_>>());
    }

    #[test]
    fn positions_survive_as_cursors() {
        let p = Position { index: 9, n: 2 };
        assert_eq!(Position::from_cursor(&p.to_cursor()), Some(p));
        assert_eq!(Position::from_cursor("9.2"), None);
        assert_eq!(Position::from_cursor("z9"), None);
    }
}
