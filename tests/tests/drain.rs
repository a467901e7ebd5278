//! Draining a node through `poolctl`, against a real member and simulated hosts (the real
//! agent protocol over a real nats-server): warm capacity moves, allocations are waited for
//! until the drain's deadline and then released with reason `drained`, and `node_drained` says
//! when the node holds nothing. (Draining hosts with real Docker is in `multi_host.rs`.)

use std::time::Duration;

use warmpool_proto::api::EventQuery;
use warmpool_proto::records::{AllocationState, NodeStatus, ReleaseReason};
use warmpool_tests::sim_agent::SimAgent;
use warmpool_tests::{run_poolctl, unique, wait_until, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_waits_for_allocations_until_its_deadline_and_then_says_drained() {
    let c = TestCluster::replicated(1, &[]).await;
    let url = c.members[0].url();
    let x = SimAgent::start(&c.nats.url(), &unique("x"), 21, Duration::from_millis(300)).await;
    let pool = unique("d").replace('-', "");
    let mut spec = TestCluster::demo_spec(&pool, 2);
    spec.lease_seconds = 3600;
    c.client.create_pool(&spec).await.unwrap();
    c.wait_warm(&pool, 2, Duration::from_secs(30)).await;
    let held = c
        .client
        .allocate(&warmpool_tests::allocation(&pool, 5_000))
        .await
        .unwrap();
    assert_eq!(held.node, x.node, "the only node");
    let y = SimAgent::start(&c.nats.url(), &unique("y"), 22, Duration::from_millis(300)).await;

    // Bad input first: a deadline for another action, one out of range, a node nobody has.
    let xs = x.node.as_str();
    let (code, _, err) = run_poolctl(
        &url,
        None,
        &["node", "drain", xs, "--deadline-secs", "99999999"],
    );
    assert_eq!(code, 2, "{err}");
    let http = warmpool_tests::http_client();
    let r = http
        .post(format!("{url}/v1/nodes/{xs}/cordon"))
        .body(r#"{"deadline_secs":5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (code, _, err) = run_poolctl(&url, None, &["node", "drain", "no-such-node"]);
    assert_eq!(code, 1);
    assert!(err.contains("not_found"), "{err}");
    assert_eq!(
        c.client
            .nodes()
            .await
            .unwrap()
            .iter()
            .find(|n| n.node.id == x.node)
            .unwrap()
            .node
            .status,
        NodeStatus::Ready,
        "bad requests changed nothing"
    );

    let (code, out, err) = run_poolctl(&url, None, &["node", "drain", xs, "--deadline-secs", "3"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("draining") && out.contains("released at"),
        "{out}"
    );
    let nodes = c.client.nodes().await.unwrap();
    let deadline = nodes
        .iter()
        .find(|n| n.node.id == x.node)
        .unwrap()
        .node
        .drain_deadline;
    let deadline = deadline.expect("the node shows its drain deadline");

    // The warm containers move to y; the allocation stays until the deadline.
    let client = c.client.clone();
    let y_node = y.node.to_string();
    wait_until(Duration::from_secs(20), "two warm containers on y", || {
        let client = client.clone();
        let y_node = y_node.clone();
        async move {
            let s = client.status().await.ok()?;
            let on_y = s.nodes.iter().find(|n| n.node.as_str() == y_node)?;
            (on_y.counts.warm >= 2).then_some(())
        }
    })
    .await;
    let a = c.client.get_allocation(held.id).await.unwrap();
    assert_eq!(
        a.state,
        AllocationState::Active,
        "released before its deadline"
    );

    let client = c.client.clone();
    let released = wait_until(Duration::from_secs(15), "the drain's deadline", || {
        let client = client.clone();
        async move {
            let a = client.get_allocation(held.id).await.ok()?;
            (a.state == AllocationState::Released).then_some(a)
        }
    })
    .await;
    assert_eq!(released.release_reason, Some(ReleaseReason::Drained));
    let at = released.released_at.unwrap();
    assert!(
        at >= deadline,
        "released at {at}, before the deadline {deadline}"
    );

    let client = c.client.clone();
    let xn = x.node.to_string();
    let drained = wait_until(Duration::from_secs(15), "node_drained", || {
        let client = client.clone();
        let xn = xn.clone();
        async move {
            let q = EventQuery {
                kind: Some("node_drained".into()),
                node: Some(xn),
                ..Default::default()
            };
            let e = client.events(&q).await.ok()?;
            (!e.is_empty()).then_some(e)
        }
    })
    .await;
    assert_eq!(drained.len(), 1);
    let s = c.client.status().await.unwrap();
    let on_x = s.nodes.iter().find(|n| n.node == x.node).unwrap();
    assert_eq!(on_x.counts.total, 0, "nothing left on x");
    drop((x, y));
}
