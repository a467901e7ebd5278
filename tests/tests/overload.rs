//! A full write queue refuses at once instead of queueing without bound: with room for one
//! queued write, a burst of concurrent writes gets some `503 overloaded` with Retry-After, and
//! every write that was acknowledged is in the state (nothing acknowledged is lost, nothing
//! refused is applied).

use std::collections::BTreeSet;

use warmpool_proto::api::ErrorCode;
use warmpool_tests::{http_client, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_queue_answers_503_overloaded_at_once_and_loses_nothing_acknowledged() {
    let c = TestCluster::replicated(1, &["--max-queued-writes", "1"]).await;
    let http = http_client();
    let url = format!("{}/v1/pools", c.members[0].url());
    let writes = (0..120).map(|i| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let spec = TestCluster::demo_spec(&format!("q{i}"), 0);
            let r = http.post(&url).json(&spec).send().await.unwrap();
            let status = r.status().as_u16();
            let retry_after = r.headers().get("retry-after").is_some();
            let body: serde_json::Value = r.json().await.unwrap();
            (i, status, retry_after, body)
        }
    });
    let answers = futures::future::join_all(writes).await;
    let mut created = BTreeSet::new();
    let mut overloaded = 0;
    for (i, status, retry_after, body) in answers {
        match status {
            201 => {
                created.insert(format!("q{i}"));
            }
            503 => {
                assert_eq!(
                    body["error"]["code"],
                    ErrorCode::Overloaded.as_str(),
                    "{body}"
                );
                assert!(retry_after, "503 overloaded without Retry-After");
                overloaded += 1;
            }
            other => panic!("write {i}: {other} {body}"),
        }
    }
    assert!(
        overloaded > 0,
        "120 concurrent writes never found the queue full"
    );
    assert!(!created.is_empty(), "nothing got through");
    let pools: BTreeSet<String> = c
        .client
        .list_pools()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.pool.spec.name.to_string())
        .collect();
    assert_eq!(
        pools, created,
        "acknowledged and only acknowledged writes are in the state"
    );
    eprintln!(
        "{} created, {overloaded} refused as overloaded",
        created.len()
    );
}
