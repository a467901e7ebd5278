//! NATS run as a cluster of three servers joined by real routes: every member and the agent
//! are given all three URLs. Under a steady allocation load, the server that carries the Raft
//! leader's connection is SIGKILLed, then (after it is back) the one that carries the agent's.
//! Each time, the clients connected to it reconnect to another server; allocations keep
//! working, with errors (if any) only in the fault's first seconds; no acknowledged allocation
//! is lost, no key or container is answered twice, and no node is declared down.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use poolctl::Client;
use warmpool_proto::records::AllocationState;
use warmpool_proto::{AllocationId, ContainerId, EventKind};
use warmpool_tests::{unique, wait_until, Agent, Nats, TestCluster};

/// How long after a server dies clients may see errors.
const FAULT_WINDOW: Duration = Duration::from_secs(5);
/// Allocations answered after a fault's window, in each round, before the next.
const ANSWERED_AFTER: usize = 3;

/// Waits until [`ANSWERED_AFTER`] allocations of `history` were answered and over after `at`.
async fn answered_after(history: &Arc<Mutex<Vec<Op>>>, at: Instant, what: &str) {
    wait_until(Duration::from_secs(60), what, || {
        let history = history.clone();
        async move {
            let n = history
                .lock()
                .unwrap()
                .iter()
                .filter(|o| o.answer.is_some() && o.done >= at)
                .count();
            (n >= ANSWERED_AFTER).then_some(())
        }
    })
    .await;
}

/// One client's allocation, with every attempt it took.
#[derive(Clone, Debug)]
struct Op {
    key: String,
    /// When each failed attempt was made, and what it answered.
    failures: Vec<(Instant, String)>,
    answer: Option<(AllocationId, ContainerId)>,
    /// When it was over (answered and released, or given up).
    done: Instant,
}

/// The index of the NATS server that `client` (a connection name) is connected to.
async fn server_of(nats: &Nats, servers: usize, client: &str) -> usize {
    wait_until(
        Duration::from_secs(20),
        &format!("{client} connected to a NATS server"),
        || async move { (0..servers).find(|&i| nats.client_names(i).iter().any(|n| n == client)) },
    )
    .await
}

/// Waits until every one of `clients` is connected to some running server other than `dead`.
async fn reconnected(nats: &Nats, servers: usize, dead: usize, clients: &[String]) -> Duration {
    let t = Instant::now();
    wait_until(
        Duration::from_secs(20),
        "every client reconnected to a live server",
        || async move {
            let live: BTreeSet<String> = (0..servers)
                .filter(|&i| i != dead)
                .flat_map(|i| nats.client_names(i))
                .collect();
            clients.iter().all(|c| live.contains(c)).then_some(())
        },
    )
    .await;
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_nats_server_of_three_under_load_keeps_allocations_working() {
    warmpool_tests::ensure_demo_image();
    let dir = tempfile::tempdir().expect("temp dir");
    let nats = Nats::cluster(dir.path(), 3);
    let mut c = TestCluster::replicated_on(dir, nats, 3, &["--node-timeout-secs", "3"]).await;
    let mut agent = Agent::new(&c.nats.url(), c.dir());
    agent.start();
    let node = agent.node.clone();
    c.agents.push(agent);
    let pool = unique("natsc").replace('-', "");
    let mut spec = TestCluster::demo_spec(&pool, 4);
    spec.max_warm = Some(6);
    c.client.create_pool(&spec).await.expect("create pool");
    c.wait_warm(&pool, 4, Duration::from_secs(90)).await;
    let first_seq = warmpool_tests::events_after(&c.client, 0)
        .await
        .last()
        .map_or(0, |e| e.seq);

    // Two clients allocate and release in a loop, each retrying an allocation with its key
    // until it is answered.
    let history: Arc<Mutex<Vec<Op>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..2 {
        let mut urls: Vec<String> = c.members.iter().map(|m| m.url()).collect();
        urls.rotate_left(i);
        let client = Client::new(urls, None).unwrap();
        let (history, pool, stop) = (history.clone(), pool.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let mut op = Op {
                    key: format!("client{i}-op{n}"),
                    failures: vec![],
                    answer: None,
                    done: Instant::now(),
                };
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline && op.answer.is_none() {
                    let mut req = warmpool_tests::allocation(&pool, 5_000);
                    req.idempotency_key = Some(op.key.clone());
                    let t = Instant::now();
                    match client.allocate(&req).await {
                        Ok(a) => op.answer = Some((a.id, a.container_id)),
                        Err(e) => {
                            op.failures.push((t, e.to_string()));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                if let Some((id, _)) = op.answer {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while Instant::now() < deadline && client.release(id).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                op.done = Instant::now();
                history.lock().unwrap().push(op);
            }
        }));
    }
    // The load runs before the first fault.
    answered_after(&history, Instant::now(), "the clients' first allocations").await;

    let leader = wait_until(Duration::from_secs(20), "a leader", || {
        let client = c.client.clone();
        async move { client.cluster().await.ok()?.leader }
    })
    .await;
    let mut names: Vec<String> = c
        .members
        .iter()
        .map(|m| format!("warmpool-control-plane-{}", m.id))
        .collect();
    names.push(format!("warmpool-agent {node}"));
    let victims = [
        format!("warmpool-control-plane-{leader}"),
        format!("warmpool-agent {node}"),
    ];
    let mut kills = Vec::new();
    for (round, victim) in victims.iter().enumerate() {
        let server = server_of(&c.nats, 3, victim).await;
        let carried: Vec<String> = c.nats.client_names(server);
        c.nats.kill_server(server);
        let killed = Instant::now();
        eprintln!("round {round}: killed NATS server {server}, which carried {carried:?}");
        let took = reconnected(&c.nats, 3, server, &names).await;
        eprintln!("round {round}: every client on a live server {took:?} after the kill");
        // The load goes on past the fault's window, where no allocation may fail.
        let what = format!("round {round}: allocations after the fault's window");
        answered_after(&history, killed + FAULT_WINDOW, &what).await;
        kills.push(killed);
        c.nats.restart_server(server);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in clients {
        t.await.unwrap();
    }

    let history = history.lock().unwrap().clone();
    let answered: Vec<&Op> = history.iter().filter(|o| o.answer.is_some()).collect();
    let failures: Vec<&(Instant, String)> = history.iter().flat_map(|o| &o.failures).collect();
    eprintln!(
        "{} allocations answered, {} failed attempts in all",
        answered.len(),
        failures.len()
    );
    // Errors only within the first seconds of a fault.
    for (at, what) in &failures {
        let in_window = kills
            .iter()
            .any(|k| *at >= *k && at.duration_since(*k) < FAULT_WINDOW);
        assert!(
            in_window,
            "an allocation failed outside a fault's first {FAULT_WINDOW:?}: {what}"
        );
    }
    // Allocation kept working after each fault (`answered_after` waited for it); the history
    // says so too.
    for (round, k) in kills.iter().enumerate() {
        let late = history
            .iter()
            .filter(|o| o.answer.is_some() && o.done >= *k + FAULT_WINDOW)
            .count();
        assert!(
            late >= ANSWERED_AFTER,
            "round {round}: {late} allocations after the fault's window"
        );
    }
    assert!(
        answered.len() >= 10,
        "the load was served: only {} allocations",
        answered.len()
    );

    // Nothing acknowledged lost, nothing doubled.
    let all = c
        .client
        .list_allocations(&Default::default())
        .await
        .expect("list");
    let state: BTreeMap<AllocationId, _> = all.iter().map(|a| (a.id, a.clone())).collect();
    let mut containers = BTreeSet::new();
    for op in &answered {
        let (id, container) = op.answer.unwrap();
        let a = state
            .get(&id)
            .unwrap_or_else(|| panic!("acknowledged allocation {id} ({}) is lost", op.key));
        assert_eq!(a.idempotency_key.as_deref(), Some(op.key.as_str()));
        assert_eq!(a.container_id, container, "{id}: the container told");
        assert!(
            containers.insert(container),
            "container {container} was handed out twice"
        );
    }
    let mut keys = BTreeSet::new();
    for a in all.iter().filter(|a| a.pool.as_str() == pool) {
        if let Some(k) = &a.idempotency_key {
            assert!(keys.insert(k.clone()), "key {k} made two allocations");
        }
        assert_ne!(
            a.state,
            AllocationState::Active,
            "{}: still active after its client released it",
            a.id
        );
    }
    // The node never looked down: losing one NATS server is not losing the node.
    let events = warmpool_tests::events_after(&c.client, first_seq).await;
    let bad: Vec<_> = events
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::NodeDown | EventKind::NodeUnreachable | EventKind::AllocationLost
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "the node or a session was given up: {bad:?}"
    );
}
