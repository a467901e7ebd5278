//! An in-process Raft network for tests: members of one process call each other's openraft
//! handles directly, and links can be cut and healed. Everything else is real: openraft, the
//! log store and state machine on sled, the state machine's rules. Tests of consensus itself
//! (elections, partitions, catching up, snapshots) run here in milliseconds, without NATS.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, SnapshotPolicy};

use super::log_store::LogStore;
use super::state_machine::{Shared, StateMachineStore};
use super::{MemberId, Raft, TypeConfig};

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<MemberId, BasicNode, RaftError<MemberId, E>>>;

#[derive(Default)]
struct Links {
    members: HashMap<MemberId, Raft>,
    /// Directed links that drop every message.
    cut: HashSet<(MemberId, MemberId)>,
}

/// The network between the members of one process.
#[derive(Clone, Default)]
pub struct Router {
    links: Arc<Mutex<Links>>,
}

impl Router {
    fn lock(&self) -> std::sync::MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts both directions between `a` and every member in `others`.
    pub fn isolate(&self, a: MemberId, others: &[MemberId]) {
        let mut l = self.lock();
        for b in others {
            l.cut.insert((a, *b));
            l.cut.insert((*b, a));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// Takes `id` off the network (it was shut down, or is about to restart).
    pub fn remove(&self, id: MemberId) {
        self.lock().members.remove(&id);
    }

    fn target(&self, from: MemberId, to: MemberId) -> Result<Raft, String> {
        let l = self.lock();
        if l.cut.contains(&(from, to)) {
            return Err(format!("link {from} -> {to} is cut"));
        }
        l.members
            .get(&to)
            .cloned()
            .ok_or_else(|| format!("member {to} is not on the network"))
    }
}

/// One member's end of the [`Router`].
pub struct Link {
    router: Router,
    from: MemberId,
}

impl RaftNetworkFactory<TypeConfig> for Link {
    type Network = Connection;

    async fn new_client(&mut self, target: MemberId, _node: &BasicNode) -> Connection {
        Connection {
            router: self.router.clone(),
            from: self.from,
            to: target,
        }
    }
}

/// A connection from one member to another.
pub struct Connection {
    router: Router,
    from: MemberId,
    to: MemberId,
}

fn unreachable<E: std::error::Error>(
    msg: String,
) -> RPCError<MemberId, BasicNode, RaftError<MemberId, E>> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(msg)))
}

impl Connection {
    fn target<E: std::error::Error>(&self) -> RpcResult<Raft, E> {
        self.router.target(self.from, self.to).map_err(unreachable)
    }

    fn remote<T, E: std::error::Error>(
        &self,
        r: Result<T, RaftError<MemberId, E>>,
    ) -> RpcResult<T, E> {
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<MemberId>> {
        let raft = self.target()?;
        self.remote(raft.append_entries(req).await)
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<MemberId>, InstallSnapshotError> {
        let raft = self.target()?;
        self.remote(raft.install_snapshot(req).await)
    }

    async fn vote(
        &mut self,
        req: VoteRequest<MemberId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<MemberId>> {
        let raft = self.target()?;
        self.remote(raft.vote(req).await)
    }
}

/// A member running in this process on a sled database in `dir`.
pub struct Member {
    /// Its id.
    pub id: MemberId,
    /// Its Raft handle.
    pub raft: Raft,
    /// Its applied state.
    pub shared: Arc<Shared>,
    db: sled::Db,
}

impl Member {
    /// Opens (or reopens) member `id` on `dir`, on `router`, snapshotting every
    /// `snapshot_every` entries.
    pub async fn start(
        id: MemberId,
        dir: &Path,
        router: &Router,
        snapshot_every: u64,
    ) -> Result<Member, String> {
        let db = sled::open(dir.join(format!("member-{id}"))).map_err(|e| e.to_string())?;
        let log = LogStore::open(&db).map_err(|e| e.to_string())?;
        let sm = StateMachineStore::open(&db).map_err(|e| e.to_string())?;
        let shared = sm.shared();
        let config = openraft::Config {
            cluster_name: "warmpool-test".into(),
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
            max_in_snapshot_log_to_keep: 0,
            ..Default::default()
        }
        .validate()
        .map_err(|e| e.to_string())?;
        let link = Link {
            router: router.clone(),
            from: id,
        };
        let raft = Raft::new(id, Arc::new(config), link, log, sm)
            .await
            .map_err(|e| e.to_string())?;
        router.lock().members.insert(id, raft.clone());
        Ok(Member {
            id,
            raft,
            shared,
            db,
        })
    }

    /// Stops it, as a crash would from the others' view (its disk is flushed).
    pub async fn stop(self, router: &Router) {
        router.remove(self.id);
        let _ = self.raft.shutdown().await;
        let _ = self.db.flush_async().await;
    }
}

/// The member set `ids`, for `Raft::initialize`.
pub fn members(ids: &[MemberId]) -> BTreeMap<MemberId, BasicNode> {
    ids.iter()
        .map(|id| (*id, BasicNode::new(format!("member-{id}"))))
        .collect()
}
