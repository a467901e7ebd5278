//! Adding a member that does not answer never costs the cluster its quorum: it stays a
//! learner, the request is refused with 409 once the member has had its time to catch up,
//! writes keep working, and the learner can be removed. A voter is removed and added back with
//! `poolctl`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warmpool_tests::{unique, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_does_not_answer_is_refused_as_a_voter_and_the_cluster_keeps_its_quorum() {
    let c = TestCluster::replicated(1, &[]).await;
    let url = c.members[0].url();
    let http = warmpool_tests::http_client();
    let started = Instant::now();
    let resp = http
        .post(format!("{url}/v1/cluster/members"))
        .json(&json!({"id": 9, "api_addr": "http://127.0.0.1:1"}))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("an answer, not a hang");
    assert_eq!(resp.status(), 409);
    let body: Value = resp.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not made a voter"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(40));

    let cluster: Value = http
        .get(format!("{url}/v1/cluster"))
        .send()
        .await
        .expect("cluster")
        .json()
        .await
        .expect("json");
    let roles: Vec<(u64, String)> = cluster["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [(1, "voter".to_string()), (9, "learner".to_string())]
    );

    // Still one voter, so writes commit.
    let pool = unique("quorum");
    let resp = http
        .post(format!("{url}/v1/pools"))
        .json(&json!({"name": pool, "image": "warmpool-demo:latest"}))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("write");
    assert_eq!(resp.status(), 201);

    let resp = http
        .delete(format!("{url}/v1/cluster/members/9"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("remove");
    assert_eq!(resp.status(), 200);
    let view: Value = resp.json().await.expect("json");
    assert_eq!(view["members"].as_array().map(Vec::len), Some(1), "{view}");
}

/// `poolctl cluster remove|add` on a voter: the cluster goes on with two voters, then takes
/// the member (still running, with its log) back and promotes it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poolctl_removes_a_voter_and_adds_it_back() {
    let c = TestCluster::replicated(3, &[]).await;
    let view = c.client.cluster().await.unwrap();
    let leader = view.leader.expect("a leader");
    let m = c.members.iter().find(|m| m.id != leader).unwrap();
    let (id, url) = (m.id.to_string(), m.url());
    let urls: Vec<String> = c.members.iter().map(|m| m.url()).collect();
    let poolctl = |args: &[&str]| {
        let out = std::process::Command::new(warmpool_tests::bin("poolctl"))
            .args(["--url", &urls.join(","), "-o", "json"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "poolctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let voters = |v: &Value| -> Vec<u64> {
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "voter")
            .map(|m| m["id"].as_u64().unwrap())
            .collect()
    };

    let after = poolctl(&["cluster", "remove", &id]);
    assert_eq!(voters(&after).len(), 2, "{after}");
    assert!(!voters(&after).contains(&m.id));
    // Two voters still make a quorum: writes commit.
    let spec = TestCluster::demo_spec(&unique("two"), 0);
    c.client
        .create_pool(&spec)
        .await
        .expect("a write with two voters");

    let back = poolctl(&["cluster", "add", &id, &url]);
    assert_eq!(voters(&back).len(), 3, "{back}");
    // It caught up with what was written while it was out.
    let rejoined = warmpool_tests::poolctl::Client::new(vec![url], None).unwrap();
    let target = c.client.cluster().await.unwrap().applied_index.unwrap();
    warmpool_tests::wait_until(Duration::from_secs(20), "the member to catch up", || {
        let rejoined = rejoined.clone();
        async move { (rejoined.cluster().await.ok()?.applied_index? >= target).then_some(()) }
    })
    .await;
    assert!(rejoined.get_pool(&spec.name).await.is_ok());
}
