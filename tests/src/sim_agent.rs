//! A simulated node agent: it speaks the real agent protocol over a real NATS server but
//! "runs" containers only in memory, healthy at once, with made-up addresses from its /64.
//!
//! It stands in for Docker hosts in tests whose claims are about the control plane (Raft,
//! allocation histories, failover, fleet scale), never in tests about Docker behaviour.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::task::JoinHandle;
use uuid::Uuid;
use warmpool_proto::agent::{
    inventory_digest, AgentCommand, AgentReply, Fact, Heartbeat, Inventory, InventoryEntry,
    ObservedStatus, Usage,
};
use warmpool_proto::records::Resources;
use warmpool_proto::{subjects, ContainerId, Health, NodeId, Timestamp};

struct State {
    containers: BTreeMap<ContainerId, InventoryEntry>,
    seq: u64,
    next_host: u64,
    /// The inventory digest, while the containers have not changed since it was computed
    /// (a real agent recomputes it from a list it keeps anyway; 1,000 simulated agents in one
    /// process should not spend their CPU on it).
    digest: Option<u64>,
}

/// A running simulated agent; dropping it stops it (like a killed agent: no goodbye).
pub struct SimAgent {
    /// Its node id.
    pub node: NodeId,
    tasks: Vec<JoinHandle<()>>,
    state: Arc<Mutex<State>>,
}

impl SimAgent {
    /// Starts an agent for `node` against `nats_url`, heartbeating every `heartbeat`.
    pub async fn start(
        nats_url: &str,
        node: &str,
        prefix_index: u16,
        heartbeat: Duration,
    ) -> SimAgent {
        let client = async_nats::connect(nats_url)
            .await
            .expect("connect to nats");
        SimAgent::start_on(client, node, prefix_index, heartbeat).await
    }

    /// Starts an agent for `node` on an existing NATS connection (several simulated agents
    /// may share one; each still has its own subjects, heartbeats and replies).
    pub async fn start_on(
        client: async_nats::Client,
        node: &str,
        prefix_index: u16,
        heartbeat: Duration,
    ) -> SimAgent {
        let node = NodeId::new(node).expect("node id");
        let state = Arc::new(Mutex::new(State {
            containers: BTreeMap::new(),
            seq: 0,
            next_host: 2,
            digest: None,
        }));
        let boot_id = Uuid::now_v7();
        let prefix = format!("fd37:{prefix_index:x}::/64");
        let net: Ipv6Addr = format!("fd37:{prefix_index:x}::").parse().expect("prefix");

        let mut sub = client
            .subscribe(subjects::cmd(&node))
            .await
            .expect("subscribe");
        let cmd_task = {
            let (client, state, node) = (client.clone(), state.clone(), node.clone());
            tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    let Some(reply) = msg.reply.clone() else {
                        continue;
                    };
                    let (answer, fact) = match serde_json::from_slice::<AgentCommand>(&msg.payload)
                    {
                        Err(e) => (
                            AgentReply::Error {
                                message: e.to_string(),
                            },
                            None,
                        ),
                        Ok(cmd) => handle(&state, &node, boot_id, net, cmd),
                    };
                    let _ = client
                        .publish(reply, serde_json::to_vec(&answer).expect("json").into())
                        .await;
                    if let Some(f) = fact {
                        let _ = client
                            .publish(
                                subjects::facts(&node),
                                serde_json::to_vec(&f).expect("json").into(),
                            )
                            .await;
                    }
                }
            })
        };
        // Session requests (logs, exec, files, settings): a simulated host runs no process, so
        // it answers each as Docker would for a container that is not there.
        let mut session_sub = client
            .subscribe(subjects::session(&node))
            .await
            .expect("subscribe");
        let session_task = {
            let client = client.clone();
            tokio::spawn(async move {
                while let Some(msg) = session_sub.next().await {
                    let Some(reply) = msg.reply.clone() else {
                        continue;
                    };
                    let answer = warmpool_proto::session::SessionReply::error(
                        warmpool_proto::session::SessionErrorKind::NoSuchContainer,
                        "a simulated host runs no processes",
                    );
                    let _ = client
                        .publish(reply, serde_json::to_vec(&answer).expect("json").into())
                        .await;
                }
            })
        };
        let hb_task = {
            let (client, state, node) = (client.clone(), state.clone(), node.clone());
            tokio::spawn(async move {
                loop {
                    let hb = {
                        let mut s = state.lock().expect("lock");
                        s.seq += 1;
                        let digest = match s.digest {
                            Some(d) => d,
                            None => {
                                let entries: Vec<_> = s.containers.values().cloned().collect();
                                let d = inventory_digest(&entries);
                                s.digest = Some(d);
                                d
                            }
                        };
                        Heartbeat {
                            node: node.clone(),
                            boot_id,
                            seq: s.seq,
                            sent_at: Timestamp::now(),
                            agent_version: "sim".into(),
                            ipv6_prefix: prefix.clone(),
                            labels: BTreeMap::new(),
                            capacity: Resources {
                                cpu_millis: 10_000_000,
                                memory_mb: 64 * 1024 * 1024,
                            },
                            usage: Usage {
                                memory_used_mb: 1024,
                                memory_total_mb: 64 * 1024 * 1024,
                                load1: 0.1,
                            },
                            containers: s.containers.len() as u32,
                            inventory_digest: digest,
                            create_slots: None,
                            runtime_unavailable: None,
                            images: Vec::new(),
                        }
                    };
                    let _ = client
                        .publish(
                            subjects::heartbeat(&node),
                            serde_json::to_vec(&hb).expect("json").into(),
                        )
                        .await;
                    tokio::time::sleep(heartbeat).await;
                }
            })
        };
        SimAgent {
            node,
            tasks: vec![cmd_task, session_task, hb_task],
            state,
        }
    }

    /// Containers it runs.
    pub fn container_count(&self) -> usize {
        self.state.lock().expect("lock").containers.len()
    }

    /// Stops answering and heartbeating at once, like a killed process.
    pub fn kill(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for SimAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

fn handle(
    state: &Mutex<State>,
    node: &NodeId,
    boot_id: Uuid,
    net: Ipv6Addr,
    cmd: AgentCommand,
) -> (AgentReply, Option<Fact>) {
    let mut s = state.lock().expect("lock");
    s.seq += 1;
    let seq = s.seq;
    match cmd {
        AgentCommand::Create(spec) => {
            if s.containers.contains_key(&spec.id) {
                return (AgentReply::Accepted, None);
            }
            let host = s.next_host;
            s.next_host += 1;
            let mut seg = net.segments();
            seg[6] = (host >> 16) as u16;
            seg[7] = host as u16;
            let entry = InventoryEntry {
                id: spec.id,
                pool: spec.pool,
                generation: spec.generation,
                docker_id: format!("sim-{}", spec.id),
                ipv6: Some(Ipv6Addr::from(seg)),
                status: ObservedStatus::Running,
                health: Health::Healthy,
                exit_code: None,
                oom_killed: false,
                last_activity_at: None,
                paused: false,
            };
            s.containers.insert(spec.id, entry.clone());
            s.digest = None;
            (
                AgentReply::Accepted,
                Some(Fact::Observed {
                    node: node.clone(),
                    seq,
                    entry,
                }),
            )
        }
        AgentCommand::Destroy { id, .. } => {
            let existed = s.containers.remove(&id).is_some();
            s.digest = None;
            (AgentReply::Destroyed { existed }, None)
        }
        AgentCommand::Restart { id } => match s.containers.get_mut(&id) {
            Some(entry) => {
                entry.health = Health::Healthy;
                let entry = entry.clone();
                (
                    AgentReply::Restarted,
                    Some(Fact::Observed {
                        node: node.clone(),
                        seq,
                        entry,
                    }),
                )
            }
            None => (
                AgentReply::Error {
                    message: format!("no container {id}"),
                },
                None,
            ),
        },
        AgentCommand::Pause { id } => sim_pause(&mut s, node, seq, id, true),
        AgentCommand::Unpause { id } => sim_pause(&mut s, node, seq, id, false),
        AgentCommand::Inventory => {
            let containers = s.containers.values().cloned().collect();
            (
                AgentReply::Inventory(Inventory {
                    node: node.clone(),
                    boot_id,
                    seq,
                    taken_at: Timestamp::now(),
                    containers,
                }),
                None,
            )
        }
    }
}

/// Pauses (or unpauses) a simulated container: only its entry says so.
fn sim_pause(
    s: &mut State,
    node: &NodeId,
    seq: u64,
    id: warmpool_proto::ContainerId,
    pause: bool,
) -> (AgentReply, Option<Fact>) {
    let Some(entry) = s.containers.get_mut(&id) else {
        return (
            AgentReply::Error {
                message: format!("no container {id}"),
            },
            None,
        );
    };
    entry.paused = pause;
    let entry = entry.clone();
    s.digest = None;
    let reply = if pause {
        AgentReply::Paused
    } else {
        AgentReply::Unpaused
    };
    (
        reply,
        Some(Fact::Observed {
            node: node.clone(),
            seq,
            entry,
        }),
    )
}
