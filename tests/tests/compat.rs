//! Must-hold 4 of issue 14: a data directory written by the version before the typed reasons
//! is read by the version after, and serves the same records in the same wire form.
//!
//! `tests/fixtures/v0-state.tar.gz` is the data directory (sled: Raft log, vote, snapshot) of
//! a single-member control plane run by the binaries of commit 3efd23f (the last with reasons
//! as strings) through [`write_fixture`]: pools (one changed, one deleted, one whose creates
//! fail), allocations (released by the client, expired, lost to a killed container, ended by
//! failing health, one still active, one of a tenant), containers ended for every reason that
//! run could produce, a node condition, keys and tenants, then a node that went down. The
//! member took snapshots as it went (every 40 entries), so the directory holds a snapshot
//! and log entries past it. `tests/fixtures/v0-expected.json` is what that version's API
//! answered just before it stopped, taken as raw JSON.
//!
//! To write them again (with the binaries of the version to be read later):
//!
//! ```text
//! WARMPOOL_BIN_DIR=<dir of old binaries> WARMPOOL_WRITE_FIXTURE=1 \
//!   cargo test -p warmpool-tests --test suite compat::write_fixture -- --ignored --nocapture
//! ```

use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::time::Duration;

use serde_json::Value;
use warmpool_proto::api::{ContainerQuery, CreateKey, DrainNode, Role, TenantQuota};
use warmpool_proto::{ContainerEndReason, ContainerState, NodeId, PoolName, TenantId};
use warmpool_tests::poolctl::client::NodeAction;
use warmpool_tests::{
    allocation as alloc, docker, ensure_demo_image, http_client, http_get, wait_until, Agent,
    Member, Nats, TestCluster,
};

fn fixtures() -> PathBuf {
    warmpool_tests::root().join("tests/fixtures")
}

/// Unpacks the fixture's data directory into `into` (as `into/cp1`).
fn unpack(into: &Path) {
    let status = Proc::new("tar")
        .arg("-C")
        .arg(into)
        .arg("-xzf")
        .arg(fixtures().join("v0-state.tar.gz"))
        .status()
        .expect("run tar");
    assert!(status.success(), "unpacking the fixture failed");
}

/// `list`'s items by their `key` field.
fn by<'a>(list: &'a Value, key: &str) -> std::collections::BTreeMap<String, &'a Value> {
    list.as_array()
        .expect("an array")
        .iter()
        .map(|v| (v[key].to_string(), v))
        .collect()
}

/// The old data directory is opened by this version: the member becomes leader of it, and
/// everything the old version answered is answered the same, byte for byte in JSON: every
/// event (with its reason), ended container (with its reason), released allocation (with its
/// release reason), pool, key, tenant and the node; and the member takes new writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_the_version_before_typed_reasons_is_read_and_served_as_it_was() {
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("v0-expected.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    unpack(dir.path());
    let nats = Nats::start(dir.path());
    let mut member = Member::new(1, &nats.url(), dir.path(), false);
    member.start();
    let base = member.url();
    let client = warmpool_tests::poolctl::Client::new(vec![base.clone()], None).unwrap();
    wait_until(Duration::from_secs(30), "the member to lead", || {
        let client = client.clone();
        async move {
            let view = client.cluster().await.ok()?;
            (view.leader == Some(1)).then_some(view)
        }
    })
    .await;
    let now = api_dump(&base).await;
    let cluster = &now["cluster"];
    let old_last = expected["cluster"]["last_log_index"].as_u64().unwrap();
    assert!(
        cluster["applied_index"].as_u64().unwrap() >= old_last,
        "the snapshot and the log past it were applied: {cluster}"
    );

    // Every event the old version recorded, as it recorded it.
    let events = by(&now["events"], "seq");
    let old_events = expected["events"].as_array().unwrap();
    assert!(old_events.len() > 50, "the fixture holds events");
    for e in old_events {
        assert_eq!(
            events.get(&e["seq"].to_string()),
            Some(&e),
            "event {}",
            e["seq"]
        );
    }
    // Ended containers with their reasons (a new leader may end more, never change these).
    for state in ["terminated", "failed"] {
        let got = by(&now[state], "id");
        for c in expected[state].as_array().unwrap() {
            assert_eq!(got.get(&c["id"].to_string()), Some(&c), "{state} container");
        }
    }
    // Allocations: released ones as they were; the active one is still there.
    let allocations = by(&now["allocations"], "id");
    for a in expected["allocations"].as_array().unwrap() {
        let got = allocations
            .get(&a["id"].to_string())
            .expect("allocation kept");
        if a["state"] == "released" {
            assert_eq!(*got, a);
        } else {
            assert_eq!(got["container_id"], a["container_id"]);
            assert_eq!(got["tenant"], a["tenant"]);
            assert_eq!(got["idempotency_key"], a["idempotency_key"]);
        }
    }
    // Pools (spec, generation, times), keys, tenants' limits, the node's record.
    for p in expected["pools"].as_array().unwrap() {
        let name = &p["pool"]["spec"]["name"];
        let got = now["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| &x["pool"]["spec"]["name"] == name)
            .unwrap_or_else(|| panic!("pool {name} kept"));
        assert_eq!(got["pool"], p["pool"]);
    }
    assert_eq!(now["keys"], expected["keys"]);
    let tenants = by(&now["tenants"], "name");
    for t in expected["tenants"].as_array().unwrap() {
        assert_eq!(tenants[&t["name"].to_string()]["quota"], t["quota"]);
    }
    let (node, old_node) = (&now["nodes"][0], &expected["nodes"][0]);
    for field in [
        "id",
        "ipv6_prefix",
        "labels",
        "joined_at",
        "status",
        "status_changed_at",
        "reason",
        "capacity",
    ] {
        assert_eq!(node[field], old_node[field], "node {field}");
    }
    // The failing pool's condition, with its reason, is still told.
    let status_pool = |s: &Value, name: &str| {
        s["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        status_pool(&now["status"], "broken")["condition"],
        status_pool(&expected["status"], "broken")["condition"]
    );

    // The typed client reads the old records too, reasons and all, each as its variant.
    let mut typed_reasons = Vec::new();
    for state in ["terminated", "failed"] {
        let typed = client
            .list_containers(&ContainerQuery {
                state: Some(state.into()),
                ..Default::default()
            })
            .await
            .unwrap();
        for c in expected[state].as_array().unwrap() {
            let t = typed
                .iter()
                .find(|t| serde_json::to_value(t.id).unwrap() == c["id"])
                .expect("typed record");
            assert_eq!(serde_json::to_value(&t.reason).unwrap(), c["reason"]);
            typed_reasons.push(t.reason.clone().expect("an ended container has a reason"));
        }
    }
    for want in [
        ContainerEndReason::Client,
        ContainerEndReason::Expired,
        ContainerEndReason::Unhealthy,
        ContainerEndReason::Exited { code: Some(137) },
        ContainerEndReason::SpecChanged,
        ContainerEndReason::NodeDown,
        ContainerEndReason::PoolDeleted,
    ] {
        assert!(
            typed_reasons.contains(&want),
            "{want:?} in {typed_reasons:?}"
        );
    }
    assert!(typed_reasons
        .iter()
        .any(|r| matches!(r, ContainerEndReason::CreateFailed { message } if message.contains("No such image"))));
    assert!(
        !typed_reasons
            .iter()
            .any(|r| matches!(r, ContainerEndReason::Other(_))),
        "every old reason has its variant: {typed_reasons:?}"
    );

    // And it takes writes: the old active allocation is released by its client.
    let active = expected["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["state"] == "active")
        .expect("the fixture has an active allocation");
    let id: warmpool_proto::AllocationId = serde_json::from_value(active["id"].clone()).unwrap();
    let released = client.release(id).await.unwrap();
    assert_eq!(
        released.state,
        warmpool_proto::records::AllocationState::Released
    );
}

/// `GET url` as raw JSON.
async fn get_json(base: &str, path: &str) -> Value {
    let r = http_client()
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.json().await.expect("a JSON body")
}

/// Every event, oldest first, as raw JSON.
async fn all_events(base: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = get_json(base, &format!("/v1/events?after={after}&limit=1000")).await;
        let page = page.as_array().expect("an array").clone();
        let Some(last) = page.last() else {
            return out;
        };
        after = last["seq"].as_u64().expect("seq");
        out.extend(page);
    }
}

/// What the API answers about everything, as raw JSON.
async fn api_dump(base: &str) -> Value {
    serde_json::json!({
        "pools": get_json(base, "/v1/pools").await,
        "containers": get_json(base, "/v1/containers").await,
        "terminated": get_json(base, "/v1/containers?state=terminated").await,
        "failed": get_json(base, "/v1/containers?state=failed").await,
        "status": get_json(base, "/v1/status").await,
        "allocations": get_json(base, "/v1/allocations").await,
        "nodes": get_json(base, "/v1/nodes").await,
        "keys": get_json(base, "/v1/keys").await,
        "tenants": get_json(base, "/v1/tenants").await,
        "events": all_events(base).await,
        "cluster": get_json(base, "/v1/cluster").await,
    })
}

/// Runs a scenario that leaves as many kinds of reasons as one host can produce on record,
/// with the binaries of `$WARMPOOL_BIN_DIR`, and stores its data directory and its API's
/// answers under `tests/fixtures/`. Ignored: it writes the fixture, it does not test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes tests/fixtures/v0-*; run by hand with WARMPOOL_WRITE_FIXTURE=1"]
async fn write_fixture() {
    if std::env::var_os("WARMPOOL_WRITE_FIXTURE").is_none() {
        eprintln!("set WARMPOOL_WRITE_FIXTURE=1 (and WARMPOOL_BIN_DIR) to write the fixture");
        return;
    }
    ensure_demo_image();
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let mut member = Member::new(1, &nats.url(), dir.path(), true).with_args(&[
        "--snapshot-every",
        "40",
        "--node-timeout-secs",
        "3",
    ]);
    member.start();
    // A short startup grace, so a restarted container that never passes is judged quickly.
    let mut agent = Agent::new(&nats.url(), dir.path()).with_args(&["--startup-grace-ms", "3000"]);
    agent.start();
    let base = member.url();
    let client = warmpool_tests::poolctl::Client::new(vec![base.clone()], None).unwrap();
    wait_until(Duration::from_secs(30), "a leader", || {
        let client = client.clone();
        async move { client.ready().await.ok().filter(|r| *r) }
    })
    .await;
    let node = NodeId::new(&agent.node).unwrap();
    wait_until(Duration::from_secs(30), "the node", || {
        let client = client.clone();
        async move { (!client.nodes().await.ok()?.is_empty()).then_some(()) }
    })
    .await;

    // Keys and tenants.
    let acme = TenantId::new("acme").unwrap();
    client
        .put_tenant(
            &acme,
            &TenantQuota {
                max_allocations: Some(5),
                allocations_per_minute: Some(600),
                burst: Some(20),
                workspace_max_bytes: None,
            },
        )
        .await
        .unwrap();
    let bolt = TenantId::new("bolt").unwrap();
    client
        .put_tenant(
            &bolt,
            &TenantQuota {
                max_allocations: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let admin = client
        .create_key(&CreateKey {
            name: "ops".into(),
            role: Role::Admin,
            tenant: None,
        })
        .await
        .unwrap();
    client
        .create_key(&CreateKey {
            name: "acme-app".into(),
            role: Role::User,
            tenant: Some(acme.clone()),
        })
        .await
        .unwrap();
    let viewer = client
        .create_key(&CreateKey {
            name: "dashboard".into(),
            role: Role::Viewer,
            tenant: None,
        })
        .await
        .unwrap();
    client.revoke_key(&viewer.key.id).await.unwrap();
    let _ = admin;

    // A pool that works, with room for failures.
    let mut spec = TestCluster::demo_spec("web", 3);
    spec.max_total = 8;
    spec.health.failure_threshold = 2;
    spec.security = TestCluster::writable_root();
    client.create_pool(&spec).await.unwrap();
    wait_warm(&client, "web", 3).await;

    // Released by its client.
    let a1 = client.allocate(&alloc("web", 10_000)).await.unwrap();
    client.release(a1.id).await.unwrap();
    // Renewed, and kept with an idempotency key and a tenant.
    wait_warm(&client, "web", 3).await;
    let mut req = alloc("web", 10_000);
    req.idempotency_key = Some("order-1".into());
    req.tenant = Some(acme.clone());
    req.lease_seconds = Some(86_400);
    let a2 = client.allocate(&req).await.unwrap();
    client
        .renew(
            a2.id,
            &warmpool_proto::api::RenewAllocation {
                lease_seconds: Some(86_400 * 2),
            },
        )
        .await
        .unwrap();
    // Expired.
    wait_warm(&client, "web", 3).await;
    let mut req = alloc("web", 10_000);
    req.lease_seconds = Some(1);
    let a3 = client.allocate(&req).await.unwrap();
    wait_allocation_released(&client, a3.id).await;
    // Lost: its container is killed under it.
    wait_warm(&client, "web", 3).await;
    let a4 = client.allocate(&alloc("web", 10_000)).await.unwrap();
    docker(&["kill", &docker_id(&client, a4.container_id).await]);
    wait_allocation_released(&client, a4.id).await;
    // Its health fails while allocated: restarted once, then given up on.
    wait_warm(&client, "web", 3).await;
    let a5 = client.allocate(&alloc("web", 10_000)).await.unwrap();
    let (status, _) = http_get(a5.ipv6.unwrap(), a5.port, "/cgi-bin/fail")
        .await
        .unwrap();
    assert_eq!(status, 200);
    wait_allocation_released_for(&client, a5.id, Duration::from_secs(60)).await;

    // Warm containers that die: killed (exited (137)), and unhealthy.
    wait_warm(&client, "web", 3).await;
    let warm = warm_of(&client, "web").await;
    docker(&["kill", &docker_id(&client, warm[0].id).await]);
    let (status, _) = http_get(warm[1].ipv6.unwrap(), warm[1].port, "/cgi-bin/fail")
        .await
        .unwrap();
    assert_eq!(status, 200);
    for c in &warm[..2] {
        wait_container_ended(&client, c.id).await;
    }

    // A pool whose creates fail: a pool condition, then a node condition (cleared when the
    // next create on the node works; the pool's stays in the snapshot).
    let mut broken = TestCluster::demo_spec("broken", 1);
    broken.image = "warmpool-no-such-image:latest".into();
    client.create_pool(&broken).await.unwrap();
    wait_until(Duration::from_secs(60), "the node's condition", || {
        let client = client.clone();
        async move {
            let nodes = client.nodes().await.ok()?;
            nodes.iter().any(|n| n.condition.is_some()).then_some(())
        }
    })
    .await;

    // A rolling update: the old generation's warm containers are retired (spec_changed).
    wait_warm(&client, "web", 3).await;
    spec.env.insert("GENERATION".into(), "2".into());
    client.put_pool(&spec).await.unwrap();
    wait_warm(&client, "web", 3).await;
    wait_until(Duration::from_secs(60), "the old generation gone", || {
        let client = client.clone();
        async move {
            let cs = client.list_containers(&Default::default()).await.ok()?;
            cs.iter()
                .all(|c| c.generation == 2 || !c.state.is_live() || c.allocation.is_some())
                .then_some(())
        }
    })
    .await;

    // A pool deleted with its warm containers (pool_deleted).
    let small = TestCluster::demo_spec("short-lived", 1);
    client.create_pool(&small).await.unwrap();
    wait_warm(&client, "short-lived", 1).await;
    client
        .delete_pool(&PoolName::new("short-lived").unwrap())
        .await
        .unwrap();

    // A drain with a far deadline, then cordoned: the node takes nothing more.
    client
        .drain_node(
            &node,
            &DrainNode {
                deadline_secs: Some(3600),
            },
        )
        .await
        .unwrap();
    client.node_action(&node, NodeAction::Cordon).await.unwrap();

    // The agent goes away: the node is down and what no session holds is gone (node_down).
    agent.kill();
    agent.cleanup_docker();
    wait_until(Duration::from_secs(30), "the node down", || {
        let client = client.clone();
        async move {
            let nodes = client.nodes().await.ok()?;
            (nodes[0].node.status == warmpool_proto::records::NodeStatus::Down).then_some(())
        }
    })
    .await;
    wait_until(
        Duration::from_secs(30),
        "nothing but the session's container live",
        || {
            let client = client.clone();
            async move {
                let cs = client.list_containers(&Default::default()).await.ok()?;
                cs.iter()
                    .all(|c| !c.state.is_live() || c.state == ContainerState::Allocated)
                    .then_some(())
            }
        },
    )
    .await;

    let dump = api_dump(&base).await;
    let cluster = &dump["cluster"];
    eprintln!(
        "last log {} snapshot {} applied {}",
        cluster["last_log_index"], cluster["snapshot_index"], cluster["applied_index"]
    );
    assert!(
        cluster["snapshot_index"].as_u64().unwrap_or(0) > 0
            && cluster["snapshot_index"].as_u64() < cluster["last_log_index"].as_u64(),
        "the directory must hold a snapshot and log entries past it: {cluster}"
    );
    member.stop();

    let out = fixtures();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("v0-expected.json"),
        serde_json::to_string_pretty(&dump).unwrap() + "\n",
    )
    .unwrap();
    let status = Proc::new("tar")
        .arg("-C")
        .arg(member.data_dir().parent().unwrap())
        .arg("-czf")
        .arg(out.join("v0-state.tar.gz"))
        .arg(member.data_dir().file_name().unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    eprintln!("wrote {}", out.display());
}

async fn wait_warm(client: &warmpool_tests::poolctl::Client, pool: &str, n: u32) {
    let what = format!("{n} warm in {pool}");
    wait_until(Duration::from_secs(60), &what, || {
        let client = client.clone();
        async move {
            let s = client.status().await.ok()?;
            let p = s.pools.iter().find(|p| p.name.as_str() == pool)?;
            (p.counts.warm >= n).then_some(())
        }
    })
    .await;
}

async fn warm_of(
    client: &warmpool_tests::poolctl::Client,
    pool: &str,
) -> Vec<warmpool_proto::Container> {
    client
        .list_containers(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.pool.as_str() == pool && c.state == ContainerState::Warm)
        .collect()
}

async fn docker_id(
    client: &warmpool_tests::poolctl::Client,
    id: warmpool_proto::ContainerId,
) -> String {
    client
        .get_container(id)
        .await
        .unwrap()
        .docker_id
        .expect("a docker id")
}

async fn wait_allocation_released(
    client: &warmpool_tests::poolctl::Client,
    id: warmpool_proto::AllocationId,
) {
    wait_allocation_released_for(client, id, Duration::from_secs(30)).await
}

async fn wait_allocation_released_for(
    client: &warmpool_tests::poolctl::Client,
    id: warmpool_proto::AllocationId,
    timeout: Duration,
) {
    wait_until(timeout, "the allocation released", || {
        let client = client.clone();
        async move {
            let a = client.get_allocation(id).await.ok()?;
            (a.state == warmpool_proto::records::AllocationState::Released).then_some(())
        }
    })
    .await;
}

async fn wait_container_ended(
    client: &warmpool_tests::poolctl::Client,
    id: warmpool_proto::ContainerId,
) {
    wait_until(Duration::from_secs(30), "the container ended", || {
        let client = client.clone();
        async move {
            let c = client.get_container(id).await.ok()?;
            (!c.state.is_live()).then_some(())
        }
    })
    .await;
}
