//! The cluster as the rest of the control plane sees it: write a command and get its answer,
//! wherever the leader is; read with the freshness a caller needs.
//!
//! Any member takes any request. A write on a follower is forwarded over NATS to the leader
//! (`pool.v1.cp.<leader>.forward`), which proposes it and answers with what applying it
//! returned. Writes retry across leader changes until a deadline; a retried command is the same
//! command (same allocation id, same container ids), and the state machine answers a repeat
//! with what the first one made, so a retry never doubles anything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use warmpool_proto::{subjects, Timestamp};

use crate::raft::state_machine::Shared;
use crate::raft::{MemberId, Raft};
use crate::state::{Command, Request, Response};

/// How long a write may take, retries across a leader change included.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// How long adding a member may take (it catches up first, perhaps by snapshot).
pub const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(60);
/// Time a new member has to replicate the log before it is refused as a voter.
pub const LEARNER_DEADLINE: Duration = Duration::from_secs(20);
/// How long a joining member waits for an answer to one request to join. Only the leader
/// answers, so a request sent while there is none (a member started with the cluster, before
/// the first election) has no answer at all; a join the leader works on longer (a learner
/// catching up) is finished in the background, and the member sees itself a voter.
const JOIN_ATTEMPT: Duration = Duration::from_millis(500);
/// The longest pause between a joining member's requests to join.
const JOIN_PAUSE_MAX: Duration = Duration::from_secs(1);

/// Why a write or a consistent read did not happen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClusterError {
    /// No leader could be found or reached before the deadline: fewer than a quorum of
    /// members are up, or an election did not finish.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// The member asked is not the leader (retried internally).
    #[error("member is not the leader")]
    NotLeader,
    /// A membership change was refused.
    #[error("{0}")]
    Membership(String),
    /// Raft stopped.
    #[error("raft stopped: {0}")]
    Fatal(String),
    /// The leader's queue of writes to propose is full: try again shortly.
    #[error("too many writes waiting to be proposed ({0}); try again shortly")]
    Overloaded(usize),
}

impl ClusterError {
    fn retryable(&self) -> bool {
        matches!(self, ClusterError::NotLeader | ClusterError::NoQuorum(_))
    }
}

/// What followers ask the leader. Short-lived and sent once; no need to box the write.
#[derive(Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
enum Forward {
    Write(Request),
    ReadIndex,
    AddMember { id: MemberId, addr: String },
    RemoveMember { id: MemberId },
}

/// Proposes the writes queued on this member: each alone when it comes alone, and those that
/// queue up while earlier entries are in flight together in one [`Command::Batch`] entry, so
/// that under load many writes share one append, replication round and flush. At most
/// [`MAX_IN_FLIGHT`] entries are in flight; the rest wait and grow the next batch.
async fn propose_batches(
    id: MemberId,
    raft: Raft,
    mut queue: tokio::sync::mpsc::Receiver<Proposal>,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut carried: Option<Proposal> = None;
    // Every request is stamped with this member's clock as it is proposed (never going back),
    // not with the clock of the member that took it: see `Request::restamp`.
    let mut stamp = Timestamp(0);
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match queue.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = json_len(&first.0);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            let Ok(p) = queue.try_recv() else { break };
            let len = json_len(&p.0);
            if bytes + len > MAX_BATCH_BYTES {
                carried = Some(p);
                break;
            }
            bytes += len;
            batch.push(p);
        }
        stamp = Timestamp::now().max(stamp);
        for (req, _) in &mut batch {
            req.restamp(stamp);
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            propose(id, &raft, batch).await;
        });
    }
}

/// Proposes `batch` as one entry and answers each request.
async fn propose(id: MemberId, raft: &Raft, batch: Vec<Proposal>) {
    let n = batch.len();
    metrics::histogram!("warmpool_raft_proposal_requests").record(n as f64);
    let (requests, answers): (Vec<Request>, Vec<_>) = batch.into_iter().unzip();
    let entry = if n == 1 {
        requests.into_iter().next().expect("one request")
    } else {
        Request::now(Command::Batch { requests })
    };
    let proposed = std::time::Instant::now();
    let written = tokio::time::timeout(WRITE_DEADLINE, raft.client_write(entry)).await;
    metrics::histogram!("warmpool_raft_write_seconds").record(proposed.elapsed().as_secs_f64());
    let written = match written {
        Err(_) => Err(no_commit(id)),
        Ok(Ok(resp)) => Ok(resp.data),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
            Err(ClusterError::NotLeader)
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(ClusterError::Membership(e.to_string()))
        }
        Ok(Err(RaftError::Fatal(e))) => Err(ClusterError::Fatal(e.to_string())),
    };
    match written {
        Ok(Response::Batch { responses }) if n > 1 && responses.len() == n => {
            for (answer, response) in answers.into_iter().zip(responses) {
                let _ = answer.send(Ok(response));
            }
        }
        Ok(response) if n == 1 => {
            let _ = answers.into_iter().next().map(|a| a.send(Ok(response)));
        }
        Ok(other) => {
            let e = ClusterError::Fatal(format!(
                "a batch of {n} requests was answered with {other:?}"
            ));
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
    }
}

/// Length of `req` as JSON, without keeping the bytes.
fn json_len(req: &Request) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, req);
    count.0
}

fn no_commit(id: MemberId) -> ClusterError {
    ClusterError::NoQuorum(format!(
        "leader {id} could not commit within {WRITE_DEADLINE:?}: a quorum is not reachable"
    ))
}

/// The leader's answer.
#[derive(Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
enum ForwardReply {
    Written(Response),
    ReadIndex(u64),
    Done,
    Failed(ClusterError),
}

/// Handle on the local member and, through it, the cluster.
#[derive(Clone)]
pub struct Cluster {
    id: MemberId,
    raft: Raft,
    shared: Arc<Shared>,
    nats: async_nats::Client,
    proposals: tokio::sync::mpsc::Sender<Proposal>,
    /// The commit index the log store last saved ([`crate::raft::LogStore::commit_index`]).
    commit_index: Arc<std::sync::atomic::AtomicU64>,
    /// How long [`Cluster::write`] tries before it gives up.
    write_deadline: Duration,
}

/// A write waiting to be proposed by [`propose_batches`], and where its answer goes.
type Proposal = (
    Request,
    tokio::sync::oneshot::Sender<Result<Response, ClusterError>>,
);

/// Most requests in one log entry.
const MAX_BATCH: usize = 128;
/// Most bytes of requests in one log entry (well under NATS's payload limit for the
/// replication of a single entry); a larger request goes alone.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Most log entries of grouped writes in flight at once.
const MAX_IN_FLIGHT: usize = 2;

impl Cluster {
    /// The local member `id`. Starts the task that proposes this member's writes (it ends
    /// when the last handle is dropped), so it must be called within a Tokio runtime.
    pub fn new(
        id: MemberId,
        raft: Raft,
        shared: Arc<Shared>,
        nats: async_nats::Client,
        commit_index: Arc<std::sync::atomic::AtomicU64>,
        max_queued: usize,
        write_deadline: Duration,
    ) -> Self {
        let (proposals, queue) = tokio::sync::mpsc::channel(max_queued.max(1));
        tokio::spawn(propose_batches(id, raft.clone(), queue));
        Cluster {
            id,
            raft,
            shared,
            nats,
            proposals,
            commit_index,
            write_deadline,
        }
    }

    /// The highest log index this member knows to be committed (0 before the first).
    pub fn commit_index(&self) -> u64 {
        self.commit_index.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This member's id.
    pub fn id(&self) -> MemberId {
        self.id
    }

    /// The Raft handle.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The replicated state, as applied on this member.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The leader this member knows of.
    pub fn leader(&self) -> Option<MemberId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Whether this member leads.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// Proposes `req` and answers what applying it returned, forwarding to the leader when
    /// this member is not it and retrying across leader changes until this member's write
    /// deadline (`--write-timeout-ms`, [`WRITE_DEADLINE`] by default).
    pub async fn write(&self, req: Request) -> Result<Response, ClusterError> {
        self.write_within(req, self.write_deadline).await
    }

    /// [`Cluster::write`] with its own time limit.
    pub async fn write_within(
        &self,
        req: Request,
        limit: Duration,
    ) -> Result<Response, ClusterError> {
        let deadline = Instant::now() + limit;
        self.retry(deadline, |leader| {
            let req = req.clone();
            async move {
                if leader == self.id {
                    self.write_local(req, deadline).await
                } else {
                    match self.forward(leader, &Forward::Write(req), deadline).await? {
                        ForwardReply::Written(r) => Ok(r),
                        ForwardReply::Failed(e) => Err(e),
                        _ => Err(ClusterError::NotLeader),
                    }
                }
            }
        })
        .await
    }

    /// Waits until this member has applied everything committed when the call began, as
    /// confirmed by a quorum: a read after this sees every write acknowledged before it.
    pub async fn read_barrier(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + WRITE_DEADLINE;
        let index = self
            .retry(deadline, |leader| async move {
                if leader == self.id {
                    self.read_index_local().await
                } else {
                    match self.forward(leader, &Forward::ReadIndex, deadline).await? {
                        ForwardReply::ReadIndex(i) => Ok(i),
                        ForwardReply::Failed(e) => Err(e),
                        _ => Err(ClusterError::NotLeader),
                    }
                }
            })
            .await?;
        let mut applied = self.shared.subscribe();
        let caught_up = tokio::time::timeout_at(deadline, applied.wait_for(|a| *a >= index)).await;
        match caught_up {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ClusterError::NoQuorum(format!(
                "member {} did not catch up to index {index} in time",
                self.id
            ))),
        }
    }

    /// Adds a member: as a learner first, promoted to voter once it has caught up.
    pub async fn add_member(&self, id: MemberId, addr: String) -> Result<(), ClusterError> {
        let deadline = Instant::now() + MEMBERSHIP_DEADLINE;
        self.retry(deadline, |leader| {
            let addr = addr.clone();
            async move {
                if leader == self.id {
                    self.add_member_local(id, addr).await
                } else {
                    self.forward_done(leader, &Forward::AddMember { id, addr }, deadline)
                        .await
                }
            }
        })
        .await
    }

    /// Removes a member from the voters and the cluster.
    pub async fn remove_member(&self, id: MemberId) -> Result<(), ClusterError> {
        let deadline = Instant::now() + MEMBERSHIP_DEADLINE;
        self.retry(deadline, |leader| async move {
            if leader == self.id {
                self.remove_member_local(id).await
            } else {
                self.forward_done(leader, &Forward::RemoveMember { id }, deadline)
                    .await
            }
        })
        .await
    }

    async fn retry<T, F, Fut>(&self, deadline: Instant, mut attempt: F) -> Result<T, ClusterError>
    where
        F: FnMut(MemberId) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClusterError>>,
    {
        let mut metrics = self.raft.metrics();
        let mut last = ClusterError::NoQuorum("no leader elected".into());
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            if let Some(leader) = leader {
                match attempt(leader).await {
                    Ok(v) => return Ok(v),
                    Err(e) if e.retryable() => last = e,
                    Err(e) => return Err(e),
                }
            }
            if Instant::now() >= deadline {
                return Err(match last {
                    ClusterError::NotLeader => ClusterError::NoQuorum("no reachable leader".into()),
                    e => e,
                });
            }
            // Wait for news of a leader, but not forever: a forward may have failed while the
            // metrics did not change.
            let pause = Instant::now() + Duration::from_millis(100);
            let _ = tokio::time::timeout_at(pause.min(deadline), metrics.changed()).await;
        }
    }

    async fn write_local(&self, req: Request, deadline: Instant) -> Result<Response, ClusterError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.proposals.try_send((req, tx)).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => {
                metrics::counter!("warmpool_writes_refused_overloaded_total").increment(1);
                ClusterError::Overloaded(self.proposals.max_capacity())
            }
            tokio::sync::mpsc::error::TrySendError::Closed(_) => {
                ClusterError::Fatal("the proposer stopped".into())
            }
        })?;
        match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => Err(no_commit(self.id)),
            Ok(Err(_)) => Err(ClusterError::Fatal("the proposer stopped".into())),
            Ok(Ok(answer)) => answer,
        }
    }

    async fn read_index_local(&self) -> Result<u64, ClusterError> {
        let read = tokio::time::timeout(WRITE_DEADLINE, self.raft.ensure_linearizable()).await;
        match read {
            Err(_) => Err(ClusterError::NoQuorum(
                "leadership could not be confirmed by a quorum".into(),
            )),
            Ok(Ok(log_id)) => Ok(log_id.map_or(0, |l| l.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                Err(ClusterError::NotLeader)
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                Err(ClusterError::NoQuorum(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(e))) => Err(ClusterError::Fatal(e.to_string())),
        }
    }

    async fn add_member_local(&self, id: MemberId, addr: String) -> Result<(), ClusterError> {
        let map_err = |e: RaftError<MemberId, ClientWriteError<MemberId, BasicNode>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ClusterError::NotLeader,
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                ClusterError::Membership(e.to_string())
            }
            RaftError::Fatal(e) => ClusterError::Fatal(e.to_string()),
        };
        let voters = self.voters();
        if voters.contains(&id) {
            return Ok(());
        }
        let added = self
            .raft
            .add_learner(id, BasicNode::new(addr), false)
            .await
            .map_err(map_err)?;
        // Promote only a learner that answers. openraft's own blocking `add_learner` counts a
        // learner as caught up when it lags by less than `replication_lag_threshold` (5000
        // entries), which a member that does not exist does in a young cluster: promoting it
        // would add a voter nobody answers for, and a one-member cluster would lose its
        // quorum. Wait until the learner has the very entry that added it.
        let wanted = added.log_id.index;
        let caught_up = self
            .raft
            .wait(Some(LEARNER_DEADLINE))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id))
                        .is_some_and(|matched| matched.is_some_and(|l| l.index >= wanted))
                },
                "the new learner to replicate its own addition",
            )
            .await;
        if caught_up.is_err() {
            return Err(ClusterError::Membership(format!(
                "member {id} is a learner now but has not replicated the log within \
                 {LEARNER_DEADLINE:?}: start it (--join, same NATS) and ask again, or remove it \
                 (DELETE /v1/cluster/members/{id}); it was not made a voter"
            )));
        }
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn remove_member_local(&self, id: MemberId) -> Result<(), ClusterError> {
        let voters = self.voters();
        let learner = self.members().contains_key(&id) && !voters.contains(&id);
        let change = if learner {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(ClusterError::Membership(
                    "cannot remove the last voter".into(),
                ));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            return Err(ClusterError::Membership(format!(
                "member {id} is not in the cluster"
            )));
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(|e| match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
                    ClusterError::NotLeader
                }
                RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                    ClusterError::Membership(e.to_string())
                }
                RaftError::Fatal(e) => ClusterError::Fatal(e.to_string()),
            })?;
        Ok(())
    }

    /// Voter ids of the current membership.
    pub fn voters(&self) -> BTreeSet<MemberId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Every member (voters and learners) and its node data.
    pub fn members(&self) -> BTreeMap<MemberId, BasicNode> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect()
    }

    async fn forward_done(
        &self,
        leader: MemberId,
        fwd: &Forward,
        deadline: Instant,
    ) -> Result<(), ClusterError> {
        match self.forward(leader, fwd, deadline).await? {
            ForwardReply::Done => Ok(()),
            ForwardReply::Failed(e) => Err(e),
            _ => Err(ClusterError::NotLeader),
        }
    }

    async fn forward(
        &self,
        leader: MemberId,
        fwd: &Forward,
        deadline: Instant,
    ) -> Result<ForwardReply, ClusterError> {
        let payload = serde_json::to_vec(fwd).map_err(|e| ClusterError::Fatal(e.to_string()))?;
        let request = self
            .nats
            .request(subjects::forward(leader), Bytes::from(payload));
        match tokio::time::timeout_at(deadline, request).await {
            Err(_) => Err(ClusterError::NoQuorum(format!(
                "leader {leader} did not answer in time"
            ))),
            Ok(Err(e)) => {
                debug!(leader, error = %e, "forward to leader failed");
                Err(ClusterError::NotLeader)
            }
            Ok(Ok(msg)) => serde_json::from_slice(&msg.payload).map_err(|e| {
                ClusterError::Fatal(format!("bad forward reply from member {leader}: {e}"))
            }),
        }
    }

    /// Asks the cluster to take this member in, until it does or `shutdown`. A new member
    /// starts as a learner, catches up (by snapshot if the log was compacted) and is promoted
    /// to voter by the leader, which alone answers on [`subjects::JOIN`].
    pub async fn join(self, addr: String, shutdown: CancellationToken) {
        let payload = match serde_json::to_vec(&Forward::AddMember { id: self.id, addr }) {
            Ok(p) => Bytes::from(p),
            Err(_) => return,
        };
        let mut pause = Duration::from_millis(200);
        loop {
            if self.voters().contains(&self.id) {
                tracing::info!(member = self.id, "joined the cluster as a voter");
                return;
            }
            let req = self.nats.send_request(
                subjects::JOIN,
                async_nats::Request::new()
                    .payload(payload.clone())
                    .timeout(Some(JOIN_ATTEMPT)),
            );
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = req => r,
            };
            match outcome {
                Ok(msg) => match serde_json::from_slice::<ForwardReply>(&msg.payload) {
                    Ok(ForwardReply::Done) => continue,
                    Ok(ForwardReply::Failed(e)) => {
                        warn!(member = self.id, error = %e, "join refused; retrying")
                    }
                    _ => warn!(member = self.id, "unexpected join reply; retrying"),
                },
                Err(e) => {
                    debug!(member = self.id, error = %e, "no leader answered the join; retrying")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(JOIN_PAUSE_MAX);
        }
    }

    /// Answers forwarded requests addressed to this member, and join requests while it leads,
    /// until `shutdown`.
    pub async fn serve_forwards(
        self,
        shutdown: CancellationToken,
    ) -> Result<(), async_nats::SubscribeError> {
        let direct = self.nats.subscribe(subjects::forward(self.id)).await?;
        let joins = self.nats.subscribe(subjects::JOIN).await?;
        let mut sub = futures::stream::select(direct, joins);
        // Members the leader is adding on their own request: a request repeated meanwhile
        // (its asker timed out) is not answered, and the first one goes on.
        let joining = Arc::new(std::sync::Mutex::new(BTreeSet::<MemberId>::new()));
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = sub.next() => match m { Some(m) => m, None => break },
            };
            let Some(reply) = msg.reply.clone() else {
                continue;
            };
            // Only the leader answers joins; the others stay silent so the request reaches it.
            if msg.subject.as_str() == subjects::JOIN && !self.is_leader() {
                continue;
            }
            let this = self.clone();
            let joining = joining.clone();
            tokio::spawn(async move {
                let fwd = match serde_json::from_slice::<Forward>(&msg.payload) {
                    Err(e) => {
                        warn!(error = %e, "malformed forwarded request; dropped");
                        return;
                    }
                    Ok(fwd) => fwd,
                };
                let _joining = match &fwd {
                    Forward::AddMember { id, .. } if msg.subject.as_str() == subjects::JOIN => {
                        match JoinUnderWay::start(&joining, *id) {
                            Some(under_way) => Some(under_way),
                            None => return,
                        }
                    }
                    _ => None,
                };
                let answer = this.answer_forward(fwd).await;
                match serde_json::to_vec(&answer) {
                    Ok(bytes) => {
                        if let Err(e) = this.nats.publish(reply, Bytes::from(bytes)).await {
                            debug!(error = %e, "forward reply not sent");
                        }
                    }
                    Err(e) => warn!(error = %e, "cannot encode forward reply"),
                }
            });
        }
        Ok(())
    }

    async fn answer_forward(&self, fwd: Forward) -> ForwardReply {
        // Only ever act locally here: a forwarded request is never forwarded again, so two
        // members that disagree about the leader cannot bounce a request between them.
        let result = match fwd {
            Forward::Write(req) => self
                .write_local(req, Instant::now() + WRITE_DEADLINE)
                .await
                .map(ForwardReply::Written),
            Forward::ReadIndex => self.read_index_local().await.map(ForwardReply::ReadIndex),
            Forward::AddMember { id, addr } => self
                .add_member_local(id, addr)
                .await
                .map(|_| ForwardReply::Done),
            Forward::RemoveMember { id } => self
                .remove_member_local(id)
                .await
                .map(|_| ForwardReply::Done),
        };
        result.unwrap_or_else(ForwardReply::Failed)
    }
}

/// A join the leader is working on, in the set of those under way until dropped.
struct JoinUnderWay {
    set: Arc<std::sync::Mutex<BTreeSet<MemberId>>>,
    id: MemberId,
}

impl JoinUnderWay {
    /// `None` when a join of `id` is already under way.
    fn start(set: &Arc<std::sync::Mutex<BTreeSet<MemberId>>>, id: MemberId) -> Option<Self> {
        let fresh = set.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
        fresh.then(|| JoinUnderWay {
            set: set.clone(),
            id,
        })
    }
}

impl Drop for JoinUnderWay {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}
