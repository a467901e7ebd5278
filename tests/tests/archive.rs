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

    // Without limit or cursor: the plain array every client reads.
    let (_, whole) = get(&format!("{base}/v1/containers?pool={pool}")).await;
    let whole = whole.as_array().expect("an array").clone();
    assert!(whole.len() >= 6);
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
