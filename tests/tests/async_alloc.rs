//! Asynchronous allocations and per-request placement, against a real control plane, real
//! nats-server, real dockerd and real agents (two, labelled `region=us` and `region=eu`, where
//! placement matters): `async: true` answers 202 at once and the allocation becomes active
//! when a container is warm, with an event for each step; a pending one is cancelled by
//! DELETE and a retry with its idempotency key answers it again; `location` is served only
//! from matching nodes or refused with `no_matching_node`; `max_lifetime_secs` longer than the
//! pool's is a 400.

use std::time::{Duration, Instant};

use futures::StreamExt;
use poolctl::{Client, NodeAction};
use reqwest::StatusCode;
use serde_json::{json, Value};
use warmpool_proto::records::AllocationState;
use warmpool_proto::{Allocation, Event, EventKind, NodeId, PoolSpec};
use warmpool_tests::{
    ensure_demo_image, http_client, run_poolctl, unique, wait_until, Agent, Member, Nats,
    TestCluster,
};

/// A member and real agents, one per label set given; stopped and cleaned up on drop
/// (agents remove their containers and networks), logs printed if the test failed.
struct Fleet {
    agents: Vec<Agent>,
    member: Member,
    _nats: Nats,
    client: Client,
    _dir: tempfile::TempDir,
}

impl Fleet {
    async fn start(labels: &[&[&str]]) -> Fleet {
        ensure_demo_image();
        let dir = tempfile::tempdir().expect("temp dir");
        let nats = Nats::start(dir.path());
        let mut member = Member::new(1, &nats.url(), dir.path(), true);
        member.start();
        let agents = labels
            .iter()
            .map(|l| {
                let mut a = Agent::new(&nats.url(), dir.path()).with_labels(l);
                a.start();
                a
            })
            .collect::<Vec<_>>();
        let client = Client::new(vec![member.url()], None).expect("client");
        let f = Fleet {
            agents,
            member,
            _nats: nats,
            client,
            _dir: dir,
        };
        let client = f.client.clone();
        let n = f.agents.len();
        wait_until(Duration::from_secs(60), "every agent to join", || {
            let client = client.clone();
            async move {
                let nodes = client.nodes().await.ok()?;
                (nodes.len() >= n).then_some(())
            }
        })
        .await;
        f
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.member.url())
    }

    async fn pool(&self, spec: &PoolSpec) {
        self.client.create_pool(spec).await.expect("create pool");
    }

    async fn get(&self, id: &str) -> (StatusCode, Value) {
        let r = http_client()
            .get(self.url(&format!("/v1/allocations/{id}")))
            .send()
            .await
            .expect("get");
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- control plane -----\n{}", self.member.log_tail(80));
            for a in &self.agents {
                eprintln!("----- agent {} -----\n{}", a.node, a.log_tail(40));
            }
        }
    }
}

/// POSTs an allocation request: status, body, headers, and how long the answer took.
async fn post(
    http: &reqwest::Client,
    f: &Fleet,
    body: Value,
) -> (StatusCode, Value, reqwest::header::HeaderMap, Duration) {
    let start = Instant::now();
    let r = http
        .post(f.url("/v1/allocations"))
        .json(&body)
        .send()
        .await
        .expect("post");
    let took = start.elapsed();
    let status = r.status();
    let headers = r.headers().clone();
    (status, r.json().await.unwrap_or(Value::Null), headers, took)
}

fn pool_name(prefix: &str) -> String {
    unique(prefix).replace('_', "-").to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_alloc_on_an_empty_pool_answers_202_at_once_and_becomes_active_with_both_events() {
    let f = Fleet::start(&[&[]]).await;
    let pool = pool_name("async");
    let mut spec = TestCluster::demo_spec(&pool, 0);
    spec.max_lifetime_secs = Some(600);
    f.pool(&spec).await;
    // Watch the event stream from now on.
    let after = f
        .client
        .events(&Default::default())
        .await
        .map(|e| e.last().map_or(0, |e| e.seq))
        .unwrap_or(0);
    let stream = http_client()
        .get(f.url(&format!("/v1/events/stream?after={after}")))
        .send()
        .await
        .expect("event stream");
    assert_eq!(stream.status(), StatusCode::OK);
    let mut stream = stream.bytes_stream();

    // One client, its connection opened first, so the measure is the request's own time.
    let http = http_client();
    http.get(f.url("/v1/health")).send().await.expect("health");
    let session = unique("s");
    let (status, body, headers, took) = post(
        &http,
        &f,
        json!({"pool": pool, "async": true, "session_id": session, "max_lifetime_secs": 30}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(took <= Duration::from_millis(50), "answered in {took:?}");
    assert_eq!(body["state"], "pending", "{body}");
    assert!(
        body.get("container_id").is_none() && body.get("node").is_none(),
        "{body}"
    );
    let id = body["id"].as_str().expect("id").to_string();
    assert_eq!(
        headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("/v1/allocations/{id}").as_str())
    );
    let token = body["access"]["token"].as_str().map(str::to_string);
    assert!(
        token.is_some(),
        "the token is answered with the pending allocation: {body}"
    );
    // Lists show it (pending, or active already if the fleet was that quick).
    let listed: Vec<Allocation> = http_client()
        .get(f.url(&format!("/v1/allocations?pool={pool}")))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("list body");
    assert!(listed.iter().any(|a| a.id.to_string() == id), "{listed:?}");

    // It becomes active once the pool has a warm container for it.
    let active = wait_until(
        Duration::from_secs(60),
        "the allocation to be active",
        || {
            let f = &f;
            let id = id.clone();
            async move {
                let (s, a) = f.get(&id).await;
                (s == StatusCode::OK && a["state"] == "active").then_some(a)
            }
        },
    )
    .await;
    let a: Allocation = serde_json::from_value(active.clone()).expect("allocation");
    assert!(
        !a.container_id.is_nil() && !a.node.is_unassigned(),
        "{active}"
    );
    assert!(a.url.is_some());
    assert_eq!(
        a.max_expires_at,
        Some(a.created_at.plus_millis(30_000)),
        "its own max_lifetime_secs caps it"
    );

    // The event stream showed both steps, pending first.
    let mut kinds = Vec::new();
    let mut buf = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !kinds.contains(&EventKind::ContainerAllocated) {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("both events within 30 s")
            .expect("stream open")
            .expect("chunk");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find('\n') {
            let line = buf[..end].trim_end().to_string();
            buf.drain(..=end);
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let Ok(e) = serde_json::from_str::<Event>(data.trim()) else {
                continue;
            };
            if e.allocation.map(|x| x.to_string()) == Some(id.clone()) {
                kinds.push(e.kind);
            }
        }
    }
    assert_eq!(
        kinds,
        [EventKind::AllocationPending, EventKind::ContainerAllocated]
    );
    f.client.release(a.id).await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_alloc_pending_is_retried_by_its_key_and_cancelled_by_delete() {
    let f = Fleet::start(&[&["region=us"]]).await;
    // No node may host this pool: what is asked of it stays pending.
    let pool = pool_name("stuck");
    let mut spec = TestCluster::demo_spec(&pool, 0);
    spec.constraints.insert("region".into(), "mars".into());
    f.pool(&spec).await;
    let http = http_client();
    let key = unique("k");
    let ask = json!({"pool": pool, "async": true, "idempotency_key": key});
    let (status, first, headers, _) = post(&http, &f, ask.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert!(headers.get("idempotent-replayed").is_none());
    let id = first["id"].as_str().expect("id").to_string();
    let (status, again, headers, _) = post(&http, &f, ask.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["id"], first["id"], "the same allocation");
    assert_eq!(again["state"], "pending");
    assert_eq!(
        headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let (status, got) = f.get(&id).await;
    assert_eq!(
        (status, got["state"].as_str()),
        (StatusCode::OK, Some("pending"))
    );
    let pending: Vec<Value> = http_client()
        .get(f.url("/v1/allocations?state=pending"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("list body");
    assert!(
        pending.iter().any(|a| a["id"] == first["id"]),
        "{pending:?}"
    );
    // Renewing it is a conflict: its lease has not started.
    let r = http
        .post(f.url(&format!("/v1/allocations/{id}/renew")))
        .send()
        .await
        .expect("renew");
    assert_eq!(r.status(), StatusCode::CONFLICT);

    // DELETE cancels it; it is gone after.
    let r = http
        .delete(f.url(&format!("/v1/allocations/{id}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::OK);
    let cancelled: Value = r.json().await.expect("body");
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let (status, _) = f.get(&id).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let events = f
        .client
        .events(&warmpool_proto::api::EventQuery {
            kind: Some("allocation_cancelled".into()),
            ..Default::default()
        })
        .await
        .expect("events");
    assert!(events
        .iter()
        .any(|e| e.allocation.map(|a| a.to_string()) == Some(id.clone())));
    // The key is free again: a new request with it is a new allocation.
    let (status, third, _, _) = post(&http, &f, ask).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_ne!(third["id"], first["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_alloc_location_eu_is_served_only_from_eu_or_refused() {
    let f = Fleet::start(&[&["region=us"], &["region=eu"]]).await;
    let eu = f.agents[1].node.clone();
    let pool = pool_name("loc");
    let mut spec = TestCluster::demo_spec(&pool, 2);
    spec.lease_seconds = 600;
    f.pool(&spec).await;
    let client = f.client.clone();
    let p = pool.clone();
    // Both nodes hold warm containers (the pool spreads).
    wait_until(
        Duration::from_secs(60),
        "warm containers on both nodes",
        || {
            let client = client.clone();
            let p = p.clone();
            async move {
                let cs = client
                    .list_containers(&warmpool_proto::api::ContainerQuery {
                        pool: Some(p),
                        state: Some("warm".into()),
                        ..Default::default()
                    })
                    .await
                    .ok()?;
                let nodes: std::collections::BTreeSet<_> =
                    cs.iter().map(|c| c.node.clone()).collect();
                (nodes.len() == 2).then_some(())
            }
        },
    )
    .await;
    let http = http_client();
    // Three in a row from eu: the first from its warm container, the others wait for eu
    // containers made for them, while us holds warm ones.
    let mut held = Vec::new();
    for i in 0..3 {
        let (status, body, _, _) = post(
            &http,
            &f,
            json!({"pool": pool, "location": {"region": "eu"}, "wait_ms": 30000}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "request {i}: {body}");
        assert_eq!(body["node"], eu, "request {i} served from eu: {body}");
        assert_eq!(body["location"], json!({"region": "eu"}));
        held.push(body["id"].as_str().expect("id").to_string());
    }
    // An async one too: pending (or granted, if eu made one already) until eu has one.
    let (status, body, _, _) = post(
        &http,
        &f,
        json!({"pool": pool, "location": {"region": "eu"}, "async": true}),
    )
    .await;
    assert!(
        status == StatusCode::ACCEPTED || status == StatusCode::CREATED,
        "{body}"
    );
    let id = body["id"].as_str().expect("id").to_string();
    let active = wait_until(
        Duration::from_secs(60),
        "the async one to be active",
        || {
            let f = &f;
            let id = id.clone();
            async move {
                let (_, a) = f.get(&id).await;
                (a["state"] == "active").then_some(a)
            }
        },
    )
    .await;
    assert_eq!(active["node"], eu, "only eu serves it: {active}");

    // No node in ap: refused at once, with its own code.
    let (status, body, _, took) = post(
        &http,
        &f,
        json!({"pool": pool, "location": {"region": "ap"}, "async": true}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "no_matching_node");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("ap"),
        "{body}"
    );
    assert!(took < Duration::from_secs(2), "refused at once: {took:?}");

    // eu drained: its warm containers are not offered and it makes none, so eu is refused.
    f.client
        .node_action(
            &NodeId::new(eu.clone()).expect("node id"),
            NodeAction::Drain,
        )
        .await
        .expect("drain");
    let (status, body, _, _) = post(
        &http,
        &f,
        json!({"pool": pool, "location": {"region": "eu"}, "wait_ms": 1000}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "no_matching_node");
    // With us as the fallback, us serves it.
    let (status, body, _, _) = post(
        &http,
        &f,
        json!({"pool": pool, "location": {"region": ["eu", "us"]}, "wait_ms": 30000}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["node"], f.agents[0].node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_alloc_bad_lifetime_and_location_are_400() {
    let f = Fleet::start(&[&[]]).await;
    let pool = pool_name("life");
    let mut spec = TestCluster::demo_spec(&pool, 0);
    spec.max_lifetime_secs = Some(60);
    f.pool(&spec).await;
    let http = http_client();
    for bad in [
        json!({"pool": pool, "max_lifetime_secs": 61, "async": true}),
        json!({"pool": pool, "max_lifetime_secs": 0, "async": true}),
        json!({"pool": pool, "location": {}, "async": true}),
        json!({"pool": pool, "location": {"region": []}, "async": true}),
        json!({"pool": pool, "async": true, "env": {"A": "1"}}),
    ] {
        let (status, body, _, _) = post(&http, &f, bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} -> {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
    let (status, body, _, _) = post(
        &http,
        &f,
        json!({"pool": pool, "max_lifetime_secs": 61, "async": true}),
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("longer than pool"),
        "{status} {body}"
    );

    // poolctl: --async --wait answers once the pending allocation is active; a bad location
    // is refused by poolctl itself.
    let url = f.member.url();
    let (code, out, err) = run_poolctl(
        &url,
        None,
        &[
            "-o",
            "json",
            "alloc",
            &pool,
            "--async",
            "--wait",
            "--max-lifetime-secs",
            "30",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let a: Allocation = serde_json::from_str(&out).expect("allocation json");
    assert_eq!(a.state, AllocationState::Active, "{out}");
    assert!(!a.container_id.is_nil());
    let (code, _, err) = run_poolctl(&url, None, &["alloc", &pool, "--location", "region"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run_poolctl(
        &url,
        None,
        &["alloc", &pool, "--location", "region=ap", "--async"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("no_matching_node"), "{err}");
    f.client.release(a.id).await.expect("release");
}
