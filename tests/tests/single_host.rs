//! Issue 2's promises on one host: a warm pool with routed IPv6, allocation without Docker on
//! the path, refill, release, adoption after an agent restart, fast reaction to a killed
//! container, a control-plane restart, bad input and idempotency.

use std::time::{Duration, Instant};

use warmpool_proto::api::{CreateAllocation, EventQuery};
use warmpool_proto::records::{AllocationState, ReleaseReason};
use warmpool_proto::{ContainerState, EventKind, Health};
use warmpool_tests::{
    docker, docker_containers_of, http_get, in_prefix, unique, wait_until, TestCluster,
};

const WARM_TIMEOUT: Duration = Duration::from_secs(60);

fn alloc(pool: &str) -> CreateAllocation {
    warmpool_tests::allocation(pool, 10_000)
}

async fn demo_cluster(min_warm: u32) -> TestCluster {
    let c = TestCluster::single().await;
    c.client
        .create_pool(&TestCluster::demo_spec("demo", min_warm))
        .await
        .expect("create pool");
    c.wait_warm("demo", min_warm, WARM_TIMEOUT).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_reaches_min_warm_with_routed_ipv6_that_answers() {
    let c = demo_cluster(3).await;
    let prefix = c.agents[0].prefix.clone();
    let warm = c.client.list_containers(&Default::default()).await.unwrap();
    let warm: Vec<_> = warm
        .into_iter()
        .filter(|w| w.state == ContainerState::Warm)
        .collect();
    assert_eq!(warm.len(), 3);
    for w in &warm {
        assert_eq!(w.health, Health::Healthy);
        let ip = w.ipv6.expect("a warm container has an address");
        assert!(
            in_prefix(&ip, &prefix),
            "{ip} is not in the node's {prefix}"
        );
        let (status, _) = http_get(ip, w.port, "/")
            .await
            .expect("the container answers over IPv6 from the host");
        assert_eq!(status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_hands_out_a_live_container_and_the_pool_refills() {
    let c = demo_cluster(3).await;
    // The wire answer itself: 201 Created, with the allocation and where to reach it.
    let resp = warmpool_tests::http_client()
        .post(format!("{}/v1/allocations", c.members[0].url()))
        .body(r#"{"pool":"demo"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let a: warmpool_proto::Allocation = resp.json().await.unwrap();
    assert_eq!(a.port, 8080, "the pool's service port");
    assert_eq!(a.state, AllocationState::Active);
    assert_eq!(a.node.as_str(), c.agents[0].node);
    assert!(a.expires_at > a.created_at);
    let ip = a.ipv6.expect("address");
    assert!(a.url.as_deref().unwrap().contains(&ip.to_string()));
    let (status, body) = http_get(ip, a.port, "/")
        .await
        .expect("allocated container answers");
    assert_eq!(status, 200, "{body}");
    let c2 = c.client.get_container(a.container_id).await.unwrap();
    assert_eq!(c2.state, ContainerState::Allocated);
    assert_eq!(c2.session.as_ref(), Some(&a.session_id));

    let s = c.wait_warm("demo", 3, WARM_TIMEOUT).await;
    let p = &s.pools[0];
    assert_eq!(
        (p.counts.warm, p.counts.allocated),
        (3, 1),
        "refilled to 3 warm beside the allocated one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_destroys_the_container_and_the_log_tells_its_life_in_order() {
    let c = demo_cluster(2).await;
    let a = c.client.allocate(&alloc("demo")).await.unwrap();
    let released = c.client.release(a.id).await.unwrap();
    assert_eq!(released.state, AllocationState::Released);
    assert_eq!(released.release_reason, Some(ReleaseReason::Client));

    let client = c.client.clone();
    wait_until(
        Duration::from_secs(20),
        "the released container to terminate",
        || {
            let client = client.clone();
            async move {
                (client.get_container(a.container_id).await.ok()?.state
                    == ContainerState::Terminated)
                    .then_some(())
            }
        },
    )
    .await;
    let in_docker = docker_containers_of(&c.agents[0].node);
    assert!(
        !in_docker.contains(&a.container_id.to_string()),
        "destroyed in Docker, not reused"
    );

    let q = EventQuery {
        container: Some(a.container_id.to_string()),
        ..Default::default()
    };
    let kinds: Vec<EventKind> = c
        .client
        .events(&q)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::ContainerCreated,
            EventKind::ContainerWarm,
            EventKind::ContainerAllocated,
            EventKind::ContainerReleased,
            EventKind::ContainerTerminated,
        ]
    );
    // Releasing again is harmless and says the same.
    assert_eq!(c.client.release(a.id).await.unwrap(), released);
}

/// The next heartbeat on `beats` (within 10 s).
async fn next_beat(beats: &mut async_nats::Subscriber) -> warmpool_proto::agent::Heartbeat {
    let msg = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(beats))
        .await
        .expect("a heartbeat")
        .expect("the subscription");
    serde_json::from_slice(&msg.payload).expect("a heartbeat that decodes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_restarts_and_adopts_its_containers() {
    let mut c = demo_cluster(3).await;
    let node = c.agents[0].node.clone();
    let before = docker_containers_of(&node);
    assert_eq!(before.len(), 3);
    let last_seq = c
        .client
        .events(&EventQuery {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap()
        .last()
        .unwrap()
        .seq;

    // The agent's own heartbeats tell its processes apart (a boot id per process).
    let nats = async_nats::connect(c.nats.url()).await.unwrap();
    let node_id = warmpool_proto::NodeId::new(&node).unwrap();
    let mut beats = nats
        .subscribe(warmpool_proto::subjects::heartbeat(&node_id))
        .await
        .unwrap();
    let old_boot = next_beat(&mut beats).await.boot_id;

    c.agents[0].kill();
    c.agents[0].start();
    // The new process must come back, re-adopt the three containers, and report them.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let adopted = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no heartbeat from a new agent process"
        );
        let beat = next_beat(&mut beats).await;
        if beat.boot_id != old_boot && beat.containers == 3 {
            break beat;
        }
    };
    // Give reconciliation a few of the new process's heartbeats to do anything it would
    // wrongly do (it runs on every one the leader hears).
    for _ in 0..6 {
        let beat = next_beat(&mut beats).await;
        assert_eq!(beat.boot_id, adopted.boot_id, "one agent process");
    }
    let after = docker_containers_of(&node);
    assert_eq!(
        after, before,
        "same containers: no duplicates, no orphans, none lost"
    );
    let s = c.client.status().await.unwrap();
    assert_eq!(s.pools[0].counts.warm, 3);
    let since = c
        .client
        .events(&EventQuery {
            after: Some(last_seq),
            ..Default::default()
        })
        .await
        .unwrap();
    let churn: Vec<_> = since
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::ContainerCreated | EventKind::ContainerTerminated | EventKind::NodeDown
            )
        })
        .collect();
    assert!(
        churn.is_empty(),
        "an agent restart must not churn containers: {churn:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_killed_container_is_reported_at_once_and_replaced() {
    let c = demo_cluster(3).await;
    let victim = c
        .client
        .list_containers(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .find(|x| x.state == ContainerState::Warm)
        .unwrap();
    let killed_at = Instant::now();
    docker(&["kill", victim.docker_id.as_deref().unwrap()]);
    let client = c.client.clone();
    wait_until(
        Duration::from_secs(5),
        "the killed container to leave the pool",
        || {
            let client = client.clone();
            async move {
                (client.get_container(victim.id).await.ok()?.state != ContainerState::Warm)
                    .then_some(())
            }
        },
    )
    .await;
    let noticed = killed_at.elapsed();
    // The agent's periodic resync is 10 s; this must come from the Docker event.
    assert!(
        noticed < Duration::from_secs(5),
        "noticed after {noticed:?}"
    );
    let s = c.wait_warm("demo", 3, WARM_TIMEOUT).await;
    assert_eq!(s.pools[0].counts.warm, 3);
    let now = c.client.list_containers(&Default::default()).await.unwrap();
    assert!(!now
        .iter()
        .any(|x| x.id == victim.id && x.state == ContainerState::Warm));
    eprintln!("killed container left the pool after {noticed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_keeps_pools_allocations_and_events() {
    let mut c = demo_cluster(2).await;
    let a = c.client.allocate(&alloc("demo")).await.unwrap();
    let pools = c.client.list_pools().await.unwrap();
    let events = c
        .client
        .events(&EventQuery {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();

    c.members[0].kill();
    c.members[0].start();
    c.wait_ready().await;

    let after = c
        .client
        .get_allocation(a.id)
        .await
        .expect("allocation survives");
    // The gateway token is in the answer that granted it, never in a read.
    assert_eq!(after, warmpool_proto::Allocation { access: None, ..a });
    let pools_after = c.client.list_pools().await.unwrap();
    assert_eq!(
        pools_after.iter().map(|p| &p.pool).collect::<Vec<_>>(),
        pools.iter().map(|p| &p.pool).collect::<Vec<_>>()
    );
    let events_after = c
        .client
        .events(&EventQuery {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(events_after.len() >= events.len());
    assert_eq!(
        events_after[..events.len()],
        events[..],
        "the event log is kept, in order"
    );
    // And it still works.
    c.wait_warm("demo", 2, WARM_TIMEOUT).await;
    c.client
        .allocate(&alloc("demo"))
        .await
        .expect("allocate after restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_yields_the_same_allocation() {
    let c = demo_cluster(2).await;
    let req = CreateAllocation {
        idempotency_key: Some("retry-me".into()),
        ..alloc("demo")
    };
    let a = c.client.allocate(&req).await.unwrap();
    let b = c.client.allocate(&req).await.unwrap();
    // The same allocation; the gateway token only in the answer that granted it (the state
    // keeps its hash, so a replay cannot say it again).
    assert!(a.access.as_ref().is_some_and(|x| x.token.is_some()));
    assert_eq!(b, warmpool_proto::Allocation { access: None, ..a });
    let s = c.client.status().await.unwrap();
    assert_eq!(s.pools[0].counts.allocated, 1, "one allocation, not two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_answers_clearly_and_changes_nothing() {
    let c = demo_cluster(1).await;
    let url = c.members[0].url();
    let http = warmpool_tests::http_client();
    let pools_before = c.client.list_pools().await.unwrap();
    let allocs_before = c
        .client
        .list_allocations(&Default::default())
        .await
        .unwrap();

    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "POST",
            "/v1/allocations",
            r#"{"pool":"nope"}"#.into(),
            404,
            "not_found",
        ),
        (
            "POST",
            "/v1/allocations",
            r#"{"pool":"demo""#.into(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/allocations",
            r#"{}"#.into(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/allocations",
            r#"{"pool":"demo","surprise":1}"#.into(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/allocations",
            r#"{"pool":"demo","wait_ms":999999999}"#.into(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/allocations",
            format!(r#"{{"pool":"{}"}}"#, "x".repeat(100_000)),
            413,
            "payload_too_large",
        ),
        (
            "POST",
            "/v1/pools",
            r#"{"name":"Bad Name","image":"x"}"#.into(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/pools",
            r#"{"name":"demo2","image":"x","min_warm":5,"max_warm":1}"#.into(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/pools",
            r#"{"name":"demo","image":"x"}"#.into(),
            409,
            "conflict",
        ),
        (
            "PUT",
            "/v1/pools/other",
            r#"{"name":"demo","image":"x"}"#.into(),
            400,
            "bad_request",
        ),
        ("GET", "/v1/pools/nope", String::new(), 404, "not_found"),
        (
            "GET",
            "/v1/allocations/not-a-uuid",
            String::new(),
            404,
            "not_found",
        ),
        (
            "DELETE",
            "/v1/allocations/0194f0a0-0000-7000-8000-000000000000",
            String::new(),
            404,
            "not_found",
        ),
        (
            "GET",
            "/v1/events?after=banana",
            String::new(),
            400,
            "bad_request",
        ),
        (
            "GET",
            "/v1/events?kind=exploded",
            String::new(),
            400,
            "bad_request",
        ),
        (
            "GET",
            "/v1/containers?state=sleepy",
            String::new(),
            400,
            "bad_request",
        ),
        ("GET", "/v1/nowhere", String::new(), 404, "not_found"),
        (
            "PATCH",
            "/v1/pools",
            String::new(),
            405,
            "method_not_allowed",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let req = http
            .request(method.parse().unwrap(), format!("{url}{path}"))
            .body(body);
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        let err: warmpool_proto::api::ErrorBody = resp
            .json()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: not an error body: {e}"));
        assert_eq!(
            err.error.code, code,
            "{method} {path}: {}",
            err.error.message
        );
        assert!(!err.error.message.is_empty());
    }

    // Garbled NATS messages on the agents' subjects are logged and dropped.
    let nats = async_nats::connect(c.nats.url()).await.unwrap();
    let node = &c.agents[0].node;
    for (subject, payload) in [
        (format!("pool.v1.node.{node}.heartbeat"), b"\xff\xfe not json".to_vec()),
        (format!("pool.v1.node.{node}.facts"), br#"{"fact":"exploded"}"#.to_vec()),
        (format!("pool.v1.node.{node}.facts"), br#"{"fact":"gone","node":"someone-else","seq":1,"id":"0194f0a0-0000-7000-8000-000000000000","reason":"x"}"#.to_vec()),
        ("pool.v1.raft.1.append".to_string(), b"garbage".to_vec()),
    ] {
        nats.publish(subject, payload.into()).await.unwrap();
    }
    // A well-formed heartbeat of a new node whose labels are too many for one: refused, the
    // node never joins.
    let big = warmpool_proto::NodeId::new(unique("biglabels")).unwrap();
    let heartbeat = warmpool_proto::agent::Heartbeat {
        node: big.clone(),
        boot_id: uuid::Uuid::now_v7(),
        seq: 1,
        sent_at: warmpool_proto::Timestamp::now(),
        agent_version: "test".into(),
        ipv6_prefix: "fd36:ffff::/64".into(),
        labels: (0..500)
            .map(|i| (format!("k{i}"), "v".repeat(200)))
            .collect(),
        capacity: Default::default(),
        usage: Default::default(),
        containers: 0,
        inventory_digest: 0,
        create_slots: None,
        runtime_unavailable: None,
        images: Vec::new(),
    };
    nats.publish(
        warmpool_proto::subjects::heartbeat(&big),
        serde_json::to_vec(&heartbeat).unwrap().into(),
    )
    .await
    .unwrap();
    // A forwarded write is a request: garbage with somewhere to answer.
    nats.publish_with_reply("pool.v1.cp.1.forward", nats.new_inbox(), "garbage".into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let health = c.client.health().await.expect("still up after garbage");
    assert_eq!(health.status, "ok");
    // Each was logged as rejected, with its subject.
    let member = &c.members[0];
    wait_until(Duration::from_secs(10), "the rejections in the log", || {
        let log = member.log_tail(100_000);
        let agent = log.matches("agent message rejected").count();
        let forward = log.contains("malformed forwarded request; dropped");
        let labels = log.contains("labels refused: 500 labels; at most 64");
        async move { (agent >= 4 && forward && labels).then_some(()) }
    })
    .await;

    assert_eq!(
        c.client
            .list_pools()
            .await
            .unwrap()
            .iter()
            .map(|p| &p.pool)
            .collect::<Vec<_>>(),
        pools_before.iter().map(|p| &p.pool).collect::<Vec<_>>()
    );
    assert_eq!(
        c.client
            .list_allocations(&Default::default())
            .await
            .unwrap(),
        allocs_before
    );
    assert!(
        c.client
            .nodes()
            .await
            .unwrap()
            .iter()
            .all(|n| n.node.id != big),
        "a node whose heartbeat was refused joined"
    );
    // The pool still works.
    c.wait_warm("demo", 1, WARM_TIMEOUT).await;
    c.client
        .allocate(&alloc("demo"))
        .await
        .expect("allocation after bad input");
}

/// Not a benchmark (that is `poolctl bench`): a simple loop that shows the hot path has no
/// Docker call on it, printed for the README. Nothing is asserted about time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_latency_loop() {
    let c = demo_cluster(10).await;
    let mut took = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        c.client
            .allocate(&CreateAllocation {
                wait_ms: None,
                ..alloc("demo")
            })
            .await
            .expect("a warm container");
        took.push(t.elapsed());
    }
    took.sort();
    eprintln!(
        "allocation latency over {} sequential allocations from a warm pool: p50 {:?}, max {:?}",
        took.len(),
        took[took.len() / 2],
        took[took.len() - 1]
    );
}
