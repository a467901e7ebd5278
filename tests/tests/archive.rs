//! Issue 18, bounded state: records past the retention caps leave the replicated state for
//! each member's archive, which answers time-range reads through REST and poolctl and
//! survives a restart; container and allocation lists are paged; bad input is a 400.
//!
//! The agent is simulated (`SimAgent`: the real protocol over real NATS), because these claims
//! are about the control plane's state, not Docker. Three real members over a real NATS.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use warmpool_proto::{AllocationId, Event, Timestamp};
use warmpool_tests::sim_agent::SimAgent;
use warmpool_tests::{allocation, http_client, run_poolctl, unique, wait_until, TestCluster};

/// Caps low enough for a few dozen cycles to go past them, and small archive files.
const ARGS: &[&str] = &[
    "--retain-events",
    "20",
    "--retain-ended-containers",
    "10",
    "--retain-released-allocations",
    "10",
    "--archive-segment-records",
    "15",
];

async fn get(url: &str) -> (u16, Value) {
    let resp = http_client().get(url).send().await.expect("GET");
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn enc(t: Timestamp) -> String {
    t.to_string().replace(':', "%3A")
}

/// Archived events of member `base` in `since..=until`, every page (by `after`).
async fn archived_events(base: &str, since: Timestamp, until: Timestamp) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    loop {
        let after = out.last().map_or(0, |e| e.seq);
        let url = format!(
            "{base}/v1/events?archived=true&since={}&until={}&limit=7&after={after}",
            enc(since),
            enc(until)
        );
        let (status, body) = get(&url).await;
        assert_eq!(status, 200, "{body}");
        let page: Vec<Event> = serde_json::from_value(body).unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Every page of `path` (a list route) with `limit`, following `next_cursor`.
async fn all_pages(base: &str, path: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut url = format!("{base}{path}{sep}limit={limit}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = get(&url).await;
        assert_eq!(status, 200, "{url}: {body}");
        let items = body["items"].as_array().expect("a page").clone();
        assert!(items.len() <= limit);
        out.extend(items);
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_records_go_to_every_members_archive_and_are_read_by_time_range() {
    let mut c = TestCluster::replicated(3, ARGS).await;
    let _agent = SimAgent::start(
        &c.nats.url(),
        &unique("arch"),
        9,
        Duration::from_millis(300),
    )
    .await;
    let pool = unique("ar").replace('-', "");
    let mut spec = TestCluster::demo_spec(&pool, 2);
    spec.scaling.pacing_ms = 50;
    c.client.create_pool(&spec).await.expect("create pool");
    c.wait_warm(&pool, 2, Duration::from_secs(30)).await;

    // Enough allocate/release cycles to go well past every cap.
    let t0 = Timestamp::now();
    let mut released: Vec<AllocationId> = Vec::new();
    for _ in 0..30 {
        let a = c
            .client
            .allocate(&allocation(&pool, 10_000))
            .await
            .expect("allocate");
        c.client.release(a.id).await.expect("release");
        released.push(a.id);
    }
    let t1 = Timestamp::now();

    for (i, m) in c.members.iter().enumerate() {
        let base = m.url();
        // The live state stays bounded on every member.
        let live = wait_until(Duration::from_secs(20), "a bounded live state", || {
            let base = base.clone();
            async move {
                let (_, events) = get(&format!("{base}/v1/events?after=0&limit=1000")).await;
                let (_, rel) = get(&format!("{base}/v1/allocations?state=released")).await;
                let events: Vec<Event> = serde_json::from_value(events).ok()?;
                (events.len() <= 20 && rel.as_array()?.len() <= 10).then_some(events)
            }
        })
        .await;
        let first_live = live.first().expect("live events").seq;
        // Everything before the live log is in this member's archive, once each, in order.
        let archived = wait_until(Duration::from_secs(20), "the archive to catch up", || {
            let base = base.clone();
            async move {
                let a = archived_events(&base, Timestamp(0), Timestamp::now()).await;
                (a.last().map(|e| e.seq) >= Some(first_live - 1)).then_some(a)
            }
        })
        .await;
        let seqs: Vec<u64> = archived.iter().map(|e| e.seq).collect();
        assert_eq!(seqs.first(), Some(&1), "member {i}");
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "member {i}: gaps or repeats in {seqs:?}"
        );
        // A time range returns exactly the archived events inside it.
        let mid = archived[archived.len() / 2].at;
        let late = archived_events(&base, mid, t1).await;
        assert!(!late.is_empty());
        assert!(late.iter().all(|e| e.at >= mid && e.at <= t1));
        let want: Vec<u64> = archived
            .iter()
            .filter(|e| e.at >= mid && e.at <= t1)
            .map(|e| e.seq)
            .collect();
        assert_eq!(late.iter().map(|e| e.seq).collect::<Vec<_>>(), want);

        // Released allocations: each is live or archived, none lost.
        let archived_allocs = all_pages(
            &base,
            &format!(
                "/v1/allocations?archived=true&since={}&until={}",
                enc(t0),
                enc(Timestamp::now())
            ),
            4,
        )
        .await;
        let (_, live_allocs) = get(&format!("{base}/v1/allocations")).await;
        let mut seen: BTreeSet<String> = ids(&archived_allocs).into_iter().collect();
        assert_eq!(
            seen.len(),
            archived_allocs.len(),
            "member {i}: an allocation twice"
        );
        assert!(
            archived_allocs.len() >= 20,
            "member {i}: {}",
            archived_allocs.len()
        );
        seen.extend(ids(live_allocs.as_array().unwrap()));
        for id in &released {
            assert!(seen.contains(&id.to_string()), "member {i}: {id} lost");
        }
    }

    // poolctl reads the same archive.
    let base = c.members[0].url();
    let rest = archived_events(&base, t0, t1).await;
    let (code, out, err) = run_poolctl(
        &base,
        None,
        &[
            "events",
            "--archived",
            "--since",
            &t0.to_string(),
            "--until",
            &t1.to_string(),
            "--limit",
            "1000",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let cli: Vec<Event> = serde_json::from_str(&out).expect("poolctl's JSON");
    assert_eq!(
        cli.iter().map(|e| e.seq).collect::<Vec<_>>(),
        rest.iter().map(|e| e.seq).collect::<Vec<_>>()
    );
    let (code, out, err) = run_poolctl(
        &base,
        None,
        &[
            "allocations",
            "--archived",
            "--all-pages",
            "--limit",
            "3",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let cli: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert!(cli.len() >= 20, "{}", cli.len());
    let (code, out, _) = run_poolctl(&base, None, &["events", "--archived", "--since", "1h"]);
    assert_eq!(code, 0);
    assert!(out.contains("container_allocated"), "{out}");

    // Closed archive files are gzip JSON lines named by time.
    let dir = c.members[0].data_dir().join("archive/events");
    let closed: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".jsonl.gz"))
        .collect();
    assert!(!closed.is_empty(), "no closed segment in {}", dir.display());

    // A restarted member's archive reads the same: nothing lost, nothing written twice when
    // it applies its log again.
    let before = archived_events(&c.members[2].url(), Timestamp(0), t1).await;
    c.members[2].stop();
    c.members[2].start();
    c.members[2].wait_up().await;
    let base2 = c.members[2].url();
    wait_until(
        Duration::from_secs(30),
        "the restarted member to catch up",
        || {
            let (b, cl) = (base2.clone(), c.client_of(0));
            async move {
                let leader = cl.status().await.ok()?.applied_index;
                let (_, s) = get(&format!("{b}/v1/status")).await;
                (s["applied_index"].as_u64()? >= leader).then_some(())
            }
        },
    )
    .await;
    let after = archived_events(&base2, Timestamp(0), t1).await;
    assert_eq!(
        after.iter().map(|e| e.seq).collect::<Vec<_>>(),
        before.iter().map(|e| e.seq).collect::<Vec<_>>()
    );
    let all_after = archived_events(&base2, Timestamp(0), Timestamp::now()).await;
    let seqs: Vec<u64> = all_after.iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "repeats after restart"
    );
    c.members[2].stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_paged_on_request_and_bad_queries_are_refused() {
    let c = TestCluster::replicated(1, ARGS).await;
    let _agent = SimAgent::start(
        &c.nats.url(),
        &unique("page"),
        11,
        Duration::from_millis(300),
    )
    .await;
    let pool = unique("pg").replace('-', "");
    c.client
        .create_pool(&TestCluster::demo_spec(&pool, 6))
        .await
        .expect("create pool");
    c.wait_warm(&pool, 6, Duration::from_secs(30)).await;
    for _ in 0..4 {
        c.client
            .allocate(&allocation(&pool, 5_000))
            .await
            .expect("allocate");
    }
    let base = c.members[0].url();

    // Without limit or cursor: the plain array every client reads, once keep-warm has made up
    // for the four allocated (until then the list grows under the pages).
    let whole = wait_until(Duration::from_secs(30), "the pool to settle", || {
        let url = format!("{base}/v1/containers?pool={pool}");
        async move {
            let (_, whole) = get(&url).await;
            let whole = whole.as_array()?.clone();
            let settled = whole.len() >= 10
                && whole
                    .iter()
                    .all(|c| c["state"] == "warm" || c["state"] == "allocated");
            settled.then_some(whole)
        }
    })
    .await;
    let mut want = ids(&whole);
    want.sort();
    // Paged: the same records, in id order, a few at a time.
    let paged = all_pages(&base, &format!("/v1/containers?pool={pool}"), 4).await;
    assert_eq!(ids(&paged), want);
    let allocated = all_pages(&base, "/v1/containers?state=allocated", 3).await;
    assert_eq!(allocated.len(), 4);
    let (_, allocs) = get(&format!("{base}/v1/allocations?state=active")).await;
    let mut want = ids(allocs.as_array().unwrap());
    want.sort();
    assert_eq!(want.len(), 4);
    let paged = all_pages(&base, "/v1/allocations?state=active", 3).await;
    assert_eq!(ids(&paged), want);
    let node = whole[0]["node"].as_str().unwrap().to_string();
    let on_node = all_pages(
        &base,
        &format!("/v1/allocations?node={node}&tenant=default"),
        2,
    )
    .await;
    assert_eq!(on_node.len(), 4);
    // poolctl follows the pages too.
    let (code, out, err) = run_poolctl(
        &base,
        None,
        &[
            "containers",
            "--pool",
            &pool,
            "--limit",
            "2",
            "--all-pages",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let cli: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(cli.len(), whole.len());
    let (code, out, _) = run_poolctl(
        &base,
        None,
        &["containers", "--pool", &pool, "--limit", "2"],
    );
    assert_eq!(code, 0);
    assert!(out.contains("next page: --cursor c"), "{out}");

    // Bad input: 400 bad_request, never a panic (the member answers on afterwards).
    let t = |s: &str| s.replace(':', "%3A");
    let later = t("2026-12-02T00:00:00Z");
    let earlier = t("2026-12-01T00:00:00Z");
    for path in [
        format!("/v1/events?archived=true&since={later}&until={earlier}"),
        format!("/v1/allocations?archived=true&since={later}&until={earlier}"),
        "/v1/events?archived=true&since=yesterday".to_string(),
        "/v1/events?archived=maybe".to_string(),
        "/v1/events?archived=true&before=5".to_string(),
        format!("/v1/events?since={earlier}"),
        "/v1/allocations?cursor=garbage".to_string(),
        "/v1/allocations?archived=true&cursor=c0".to_string(),
        "/v1/containers?cursor=a0123".to_string(),
        "/v1/containers?limit=0".to_string(),
        "/v1/containers?limit=100000000000000000000000".to_string(),
        "/v1/allocations?limit=1001".to_string(),
        "/v1/allocations?limit=-1".to_string(),
        "/v1/containers?limit=2&limit=3".to_string(),
        "/v1/containers?tenant=Not%20A%20Tenant".to_string(),
    ] {
        let (status, body) = get(&format!("{base}{path}")).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{path}: {body}");
    }
    // A bad consistency header is refused on every read, also one answered without looking
    // at the replicated state (an archived read, a filter that cannot match).
    for path in [
        "/v1/events?archived=true",
        "/v1/allocations?archived=true",
        "/v1/containers?pool=%20&limit=3",
    ] {
        let resp = http_client()
            .get(format!("{base}{path}"))
            .header("Warmpool-Consistency", "sometimes")
            .send()
            .await
            .expect("GET");
        assert_eq!(resp.status().as_u16(), 400, "{path} with a bad header");
    }
    let (status, _) = get(&format!("{base}/v1/health")).await;
    assert_eq!(status, 200);
}

/// `GET url` with a bearer key.
async fn get_as(url: &str, token: &str) -> (u16, Value) {
    let resp = http_client()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Closed archive files of `kind` in a member's data dir.
fn closed_files(data_dir: &std::path::Path, kind: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(data_dir.join("archive").join(kind))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".jsonl.gz"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_containers_are_read_from_the_archive_by_time_range_and_paged_to_the_end() {
    let c = TestCluster::replicated(1, ARGS).await;
    let _agent = SimAgent::start(
        &c.nats.url(),
        &unique("arcc"),
        12,
        Duration::from_millis(300),
    )
    .await;
    let pool = unique("ac").replace('-', "");
    let mut spec = TestCluster::demo_spec(&pool, 2);
    spec.scaling.pacing_ms = 50;
    c.client.create_pool(&spec).await.expect("create pool");
    c.wait_warm(&pool, 2, Duration::from_secs(30)).await;

    let t0 = Timestamp::now();
    let mut used: Vec<String> = Vec::new();
    for _ in 0..30 {
        let a = c
            .client
            .allocate(&allocation(&pool, 10_000))
            .await
            .expect("allocate");
        c.client.release(a.id).await.expect("release");
        used.push(a.container_id.to_string());
    }
    let base = c.members[0].url();
    let range = |until: Timestamp| {
        format!(
            "/v1/containers?archived=true&since={}&until={}",
            enc(t0),
            enc(until)
        )
    };

    // Every container that ended is archived or still in the state (ended ones are kept up
    // to the cap); the archive holds most of them, each once.
    let archived = wait_until(
        Duration::from_secs(30),
        "ended containers in the archive",
        || {
            let (base, path, used) = (base.clone(), range(Timestamp::now()), used.clone());
            async move {
                let archived = all_pages(&base, &path, 4).await;
                let (_, ended) = get(&format!("{base}/v1/containers?state=terminated")).await;
                let (_, failed) = get(&format!("{base}/v1/containers?state=failed")).await;
                let mut seen: BTreeSet<String> = ids(&archived).into_iter().collect();
                seen.extend(ids(ended.as_array()?));
                seen.extend(ids(failed.as_array()?));
                used.iter().all(|id| seen.contains(id)).then_some(archived)
            }
        },
    )
    .await;
    let got = ids(&archived);
    let unique_ids: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique_ids.len(), got.len(), "a container twice: {got:?}");
    assert!(got.len() >= 15, "{}", got.len());
    for item in &archived {
        assert!(
            matches!(item["state"].as_str(), Some("terminated" | "failed")),
            "{item}"
        );
    }
    // The same with one big page, and with a page of one.
    let (status, one) = get(&format!("{base}{}&limit=1000", range(Timestamp::now()))).await;
    assert_eq!(status, 200, "{one}");
    assert!(one["next_cursor"].is_null());
    let whole = ids(one["items"].as_array().unwrap());
    assert_eq!(&whole[..got.len()], &got[..], "pages in archive order");
    let singles = all_pages(&base, &range(Timestamp::now()), 1).await;
    assert_eq!(ids(&singles), whole);

    // A time range: exactly those that ended inside it.
    let end_of = |v: &Value| -> Timestamp {
        serde_json::from_value::<warmpool_proto::Container>(v.clone())
            .unwrap()
            .ended_at
            .unwrap()
    };
    let mid = end_of(&archived[archived.len() / 2]);
    let late = all_pages(
        &base,
        &format!("/v1/containers?archived=true&since={}", enc(mid)),
        3,
    )
    .await;
    let want: Vec<String> = one["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| end_of(v) >= mid)
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(ids(&late), want);
    let (status, none) = get(&format!(
        "{base}/v1/containers?archived=true&until={}",
        enc(Timestamp(t0.0 - 60_000))
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(none["items"].as_array().map(Vec::len), Some(0), "{none}");
    // Filters apply to archived ones too.
    let (_, other_pool) = get(&format!(
        "{base}/v1/containers?archived=true&pool=nosuchpool"
    ))
    .await;
    assert_eq!(other_pool["items"].as_array().map(Vec::len), Some(0));
    let (_, live_state) = get(&format!("{base}/v1/containers?archived=true&state=warm")).await;
    assert_eq!(live_state["items"].as_array().map(Vec::len), Some(0));

    // poolctl reads the same.
    let (code, out, err) = run_poolctl(
        &base,
        None,
        &[
            "containers",
            "--archived",
            "--since",
            &t0.to_string(),
            "--all-pages",
            "--limit",
            "5",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let cli: Vec<Value> = serde_json::from_str(&out).expect("poolctl's JSON");
    assert_eq!(&ids(&cli)[..got.len()], &got[..]);
    let (code, out, err) = run_poolctl(&base, None, &["containers", "--archived", "--limit", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("next page: --cursor z"), "{out}");

    // Bad input: 400 bad_request.
    let later = enc("2026-12-02T00:00:00Z".parse().unwrap());
    let earlier = enc("2026-12-01T00:00:00Z".parse().unwrap());
    for path in [
        format!("/v1/containers?archived=true&since={later}&until={earlier}"),
        "/v1/containers?archived=true&since=yesterday".to_string(),
        "/v1/containers?archived=maybe".to_string(),
        format!("/v1/containers?since={earlier}"),
        "/v1/containers?archived=true&cursor=c0".to_string(),
        "/v1/containers?archived=true&cursor=z1".to_string(),
        "/v1/containers?archived=true&limit=0".to_string(),
        "/v1/containers?archived=true&tenant=Not%20A%20Tenant".to_string(),
        "/v1/containers?archived=true&archived=true".to_string(),
    ] {
        let (status, body) = get(&format!("{base}{path}")).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{path}: {body}");
    }
    let resp = http_client()
        .get(format!("{base}/v1/containers?archived=true"))
        .header("Warmpool-Consistency", "sometimes")
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status().as_u16(), 400, "a bad consistency header");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_key_sees_only_its_own_archived_containers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nats = warmpool_tests::Nats::start(dir.path());
    let token = format!("wpk_{}_{}", "a1b2c3d4e5f6", "fedcba9876543210".repeat(4));
    let key_file = dir.path().join("admin.key");
    std::fs::write(&key_file, &token).expect("key file");
    // Released allocations outlive their ended containers in the state, so each container's
    // tenant is known when it is archived.
    let mut member = warmpool_tests::Member::new(1, &nats.url(), dir.path(), true).with_args(&[
        "--retain-events",
        "20",
        "--retain-ended-containers",
        "10",
        "--retain-released-allocations",
        "1000",
        "--archive-segment-records",
        "15",
        "--auth",
        "--admin-key-file",
        key_file.to_str().expect("utf-8 path"),
    ]);
    member.start();
    let _agent =
        SimAgent::start(&nats.url(), &unique("arct"), 13, Duration::from_millis(300)).await;
    let base = member.url();
    let admin = poolctl::Client::new(vec![base.clone()], Some(token.clone())).expect("client");
    let a = admin.clone();
    wait_until(Duration::from_secs(30), "the admin key to work", || {
        let a = a.clone();
        async move { a.whoami().await.ok().filter(|w| w.id.is_some()) }
    })
    .await;
    let pool = unique("at").replace('-', "");
    let mut spec = TestCluster::demo_spec(&pool, 2);
    spec.scaling.pacing_ms = 50;
    admin.create_pool(&spec).await.expect("create pool");
    let a = admin.clone();
    wait_until(Duration::from_secs(30), "warm containers", || {
        let a = a.clone();
        async move {
            let s = a.status().await.ok()?;
            (s.pools.iter().any(|p| p.counts.warm >= 2)).then_some(())
        }
    })
    .await;
    let key = |tenant: &str| {
        let admin = admin.clone();
        let tenant = tenant.to_string();
        async move {
            admin
                .create_key(&warmpool_proto::api::CreateKey {
                    name: format!("user-{tenant}"),
                    role: warmpool_proto::api::Role::User,
                    tenant: Some(warmpool_proto::TenantId::new(&tenant).expect("tenant")),
                })
                .await
                .expect("create key")
                .token
        }
    };
    let (acme, bolt) = (key("acme").await, key("bolt").await);
    let mut of: std::collections::BTreeMap<&str, BTreeSet<String>> = Default::default();
    for i in 0..24 {
        let (name, tok) = if i % 2 == 0 {
            ("acme", &acme)
        } else {
            ("bolt", &bolt)
        };
        let c = poolctl::Client::new(vec![base.clone()], Some(tok.clone())).expect("client");
        let got = c
            .allocate(&allocation(&pool, 10_000))
            .await
            .expect("allocate");
        assert_eq!(got.tenant.as_str(), name);
        c.release(got.id).await.expect("release");
        of.entry(name)
            .or_default()
            .insert(got.container_id.to_string());
    }

    // The admin sees both tenants' archived containers.
    let path = "/v1/containers?archived=true&limit=1000";
    let everything = wait_until(
        Duration::from_secs(30),
        "both tenants' containers archived",
        || {
            let (url, token, of) = (format!("{base}{path}"), token.clone(), of.clone());
            async move {
                let (_, body) = get_as(&url, &token).await;
                let got: BTreeSet<String> = ids(body["items"].as_array()?).into_iter().collect();
                let n = |t: &str| of[t].intersection(&got).count();
                (n("acme") >= 3 && n("bolt") >= 3).then_some(got)
            }
        },
    )
    .await;
    // Each tenant's key: its own only, and asking for another's answers nothing.
    for (me, tok, other) in [("acme", &acme, "bolt"), ("bolt", &bolt, "acme")] {
        let (status, body) = get_as(&format!("{base}{path}"), tok).await;
        assert_eq!(status, 200, "{body}");
        let mine: BTreeSet<String> = ids(body["items"].as_array().unwrap()).into_iter().collect();
        assert!(!mine.is_empty(), "{me} sees none of its own");
        assert!(mine.is_subset(&of[me]), "{me} sees another's: {mine:?}");
        // The archive only grows here (nothing is pruned): what the admin saw archived
        // before is still there, and more may have been archived since.
        let before: BTreeSet<String> = everything.intersection(&of[me]).cloned().collect();
        assert!(
            before.is_subset(&mine),
            "{me} misses some of its own: {:?}",
            before.difference(&mine).collect::<Vec<_>>()
        );
        let (status, body) = get_as(
            &format!("{base}/v1/containers?archived=true&tenant={other}"),
            tok,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["items"].as_array().map(Vec::len), Some(0), "{body}");
        let (code, out, err) = run_poolctl(
            &base,
            Some(tok),
            &["containers", "--archived", "--all-pages", "-o", "json"],
        );
        assert_eq!(code, 0, "{err}");
        let cli: Vec<Value> = serde_json::from_str(&out).expect("poolctl's JSON");
        assert!(ids(&cli).iter().all(|id| of[me].contains(id)), "{out}");
    }
    // The admin filtering by tenant.
    let (_, body) = get_as(
        &format!("{base}/v1/containers?archived=true&tenant=bolt"),
        &token,
    )
    .await;
    let bolts: BTreeSet<String> = ids(body["items"].as_array().unwrap()).into_iter().collect();
    assert!(!bolts.is_empty() && bolts.is_subset(&of["bolt"]));
    member.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_archive_files_are_pruned_beyond_the_byte_cap_and_reads_answer_what_is_left() {
    let mut args = ARGS.to_vec();
    args.extend(["--archive-max-bytes", "1"]);
    let mut c = TestCluster::replicated(1, &args).await;
    let _agent = SimAgent::start(
        &c.nats.url(),
        &unique("arcp"),
        14,
        Duration::from_millis(300),
    )
    .await;
    let pool = unique("ap").replace('-', "");
    let mut spec = TestCluster::demo_spec(&pool, 2);
    spec.scaling.pacing_ms = 50;
    c.client.create_pool(&spec).await.expect("create pool");
    c.wait_warm(&pool, 2, Duration::from_secs(30)).await;
    let base = c.members[0].url();
    let data = c.members[0].data_dir().to_path_buf();

    // Enough cycles for several files of events to close, one after the other.
    let mut names_seen: BTreeSet<String> = BTreeSet::new();
    for _ in 0..30 {
        let a = c
            .client
            .allocate(&allocation(&pool, 10_000))
            .await
            .expect("allocate");
        c.client.release(a.id).await.expect("release");
        names_seen.extend(closed_files(&data, "events"));
    }
    // At most the newest closed file of each kind stays; the older ones are deleted.
    let left = wait_until(
        Duration::from_secs(30),
        "old archive files to be pruned",
        || {
            let (data, base) = (data.clone(), base.clone());
            async move {
                let (_, m) = get(&format!("{base}/v1/events?after=0&limit=1")).await;
                let first_live = m.as_array()?.first()?["seq"].as_u64()?;
                let left = closed_files(&data, "events");
                // Pruned, and the archive caught up with the live log. Files still close
                // and are pruned while the pool refills: a read that raced a prune may have
                // skipped a file deleted under it, so wait for one that did not.
                let archived = archived_events(&base, Timestamp(0), Timestamp::now()).await;
                let contiguous = archived.windows(2).all(|w| w[1].seq == w[0].seq + 1);
                (left.len() == 1 && contiguous && archived.last()?.seq + 1 >= first_live)
                    .then_some((left, archived))
            }
        },
    )
    .await;
    let (left, archived) = left;
    names_seen.extend(left.iter().cloned());
    assert!(
        names_seen.len() >= 3,
        "too few files closed to show pruning: {names_seen:?}"
    );
    assert_eq!(
        left.last(),
        names_seen.iter().max(),
        "the newest file is the one kept"
    );
    for kind in ["containers", "allocations"] {
        assert!(closed_files(&data, kind).len() <= 1, "{kind}");
    }
    // Reads answer what is left: the newest archived events, in order, the oldest gone.
    let seqs: Vec<u64> = archived.iter().map(|e| e.seq).collect();
    assert!(seqs.first() > Some(&1), "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    // A range only pruned files held answers empty, not an error.
    let first_kept = archived[0].at;
    let (status, body) = get(&format!(
        "{base}/v1/events?archived=true&since={}&until={}",
        enc(Timestamp(0)),
        enc(Timestamp(first_kept.0 - 1))
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.as_array().is_some_and(|a| a.is_empty()), "{body}");
    // Counted, and logged.
    let metrics = http_client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap();
    let pruned: f64 = metrics
        .lines()
        .find(|l| l.starts_with("warmpool_archive_pruned_segments_total "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    assert!(pruned >= 2.0, "{pruned}");
    assert!(
        c.members[0].log_tail(2000).contains("archive pruned"),
        "no log line"
    );
    c.members[0].stop();
}
