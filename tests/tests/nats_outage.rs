//! A NATS outage is not a node outage: with three members, two agents, warm containers on both
//! and an active allocation, NATS stops for 15 s and starts again. The control plane lost its
//! own link to the agents, so their missing heartbeats are no evidence against them: no node
//! is declared down, no container is destroyed, and the session keeps its container, which
//! answers throughout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use warmpool_proto::records::{AllocationState, NodeStatus};
use warmpool_proto::{ContainerState, EventKind};
use warmpool_tests::{http_get, wait_until, Agent, TestCluster};

const OUTAGE: Duration = Duration::from_secs(15);
const NODE_TIMEOUT_SECS: &str = "3";

/// Docker's ids of the running containers of `node`, by Warmpool's container id.
fn running_docker_ids(node: &str) -> BTreeMap<String, String> {
    let out = warmpool_tests::docker(&[
        "ps",
        "--filter",
        &format!("label=io.warmpool.node={node}"),
        "--format",
        "{{.Label \"io.warmpool.id\"}} {{.ID}}",
    ]);
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, docker)| (id.to_string(), docker.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_ends_no_session_and_destroys_no_container() {
    warmpool_tests::ensure_demo_image();
    let mut c = TestCluster::replicated(3, &["--node-timeout-secs", NODE_TIMEOUT_SECS]).await;
    for _ in 0..2 {
        let mut a = Agent::new(&c.nats.url(), c.dir());
        a.start();
        c.agents.push(a);
    }
    let nodes: Vec<String> = c.agents.iter().map(|a| a.node.clone()).collect();
    let mut spec = TestCluster::demo_spec("demo", 4);
    spec.max_warm = Some(4);
    c.client.create_pool(&spec).await.expect("create pool");
    c.wait_warm("demo", 4, Duration::from_secs(90)).await;
    let a = c
        .client
        .allocate(&warmpool_tests::allocation("demo", 10_000))
        .await
        .expect("allocate");
    c.wait_warm("demo", 4, Duration::from_secs(90)).await;
    // Warm containers on both agents, as the scenario asks (placement spreads them).
    let client = c.client.clone();
    let nodes_ref = &nodes;
    wait_until(
        Duration::from_secs(60),
        "warm containers on both nodes",
        || {
            let client = client.clone();
            async move {
                let all = client.list_containers(&Default::default()).await.ok()?;
                nodes_ref
                    .iter()
                    .all(|n| {
                        all.iter()
                            .any(|x| x.node.as_str() == n && x.state == ContainerState::Warm)
                    })
                    .then_some(())
            }
        },
    )
    .await;
    let ip = a.ipv6.expect("the allocation has an address");
    let before: BTreeMap<String, String> =
        nodes.iter().flat_map(|n| running_docker_ids(n)).collect();
    assert!(before.contains_key(&a.container_id.to_string()));
    let last_seq = warmpool_tests::events_after(&c.client, 0)
        .await
        .last()
        .map_or(0, |e| e.seq);

    // The outage. The container is asked every half second that it still answers: the data
    // path never needed NATS.
    c.nats.kill();
    let stopped = Instant::now();
    while stopped.elapsed() < OUTAGE {
        let (status, _) = http_get(ip, a.port, "/")
            .await
            .expect("the allocated container answers during the outage");
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    c.nats.restart();
    let back = Instant::now();
    c.wait_ready().await;

    // Every node heard again and taking grants, within the agents' reconnect and a heartbeat.
    let client = c.client.clone();
    wait_until(
        Duration::from_secs(30),
        "both nodes ready and reachable",
        || {
            let client = client.clone();
            async move {
                let views = client.nodes().await.ok()?;
                nodes_ref
                    .iter()
                    .all(|n| {
                        views.iter().any(|v| {
                            v.node.id.as_str() == n
                                && v.node.status == NodeStatus::Ready
                                && v.node.unreachable.is_none()
                        })
                    })
                    .then_some(())
            }
        },
    )
    .await;
    eprintln!(
        "nodes reachable again {:?} after NATS came back",
        back.elapsed()
    );
    // Watch past two node timeouts from NATS's return: a leader that blamed the nodes for its
    // own lost link would declare them down in this window.
    let window = Duration::from_secs(2 * NODE_TIMEOUT_SECS.parse::<u64>().unwrap() + 1);
    while back.elapsed() < window {
        let (status, _) = http_get(ip, a.port, "/")
            .await
            .expect("the allocated container answers after the outage");
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let after = warmpool_tests::events_after(&c.client, last_seq).await;
    let bad: Vec<_> = after
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::NodeDown
                    | EventKind::AllocationLost
                    | EventKind::ContainerTerminated
                    | EventKind::ContainerFailed
                    | EventKind::ContainerReleased
                    | EventKind::ContainerCreated
            )
        })
        .collect();
    assert!(bad.is_empty(), "the outage cost something: {bad:#?}");
    let now = c.client.get_allocation(a.id).await.expect("allocation");
    assert_eq!(now.state, AllocationState::Active, "{now:?}");
    assert_eq!(now.container_id, a.container_id);
    let (status, _) = http_get(ip, a.port, "/").await.expect("still answers");
    assert_eq!(status, 200);
    let after_ids: BTreeMap<String, String> =
        nodes.iter().flat_map(|n| running_docker_ids(n)).collect();
    assert_eq!(
        after_ids, before,
        "the same Docker containers run on both hosts: none destroyed, none made"
    );
}
