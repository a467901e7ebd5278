//! Adding a member that does not answer never costs the cluster its quorum: it stays a
//! learner, the request is refused with 409 once the member has had its time to catch up,
//! writes keep working, and the learner can be removed.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warmpool_tests::{unique, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_does_not_answer_is_refused_as_a_voter_and_the_cluster_keeps_its_quorum() {
    let c = TestCluster::replicated(1, &[]).await;
    let url = c.members[0].url();
    let http = reqwest::Client::new();
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
