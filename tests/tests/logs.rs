//! The control plane's logs: one JSON line per request with `--log-json`, carrying the request
//! id the client sent (echoed in the answer), or one it made up.

use std::time::Duration;

use warmpool_tests::{wait_until, Member, Nats};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_one_json_log_line_with_its_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let mut m = Member::new(1, &nats.url(), dir.path(), true).with_args(&["--log-json"]);
    m.start();
    let url = m.url();
    m.wait_up().await;
    let http = warmpool_tests::http_client();

    let resp = http
        .get(format!("{url}/v1/pools/no-such-pool"))
        .header("x-request-id", "req-logs-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-request-id"], "req-logs-42", "echoed");
    let made_up = http.get(format!("{url}/v1/status")).send().await.unwrap();
    let made_up = made_up.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(uuid::Uuid::parse_str(&made_up).is_ok(), "{made_up}");

    let find = |id: String| {
        let m = &m;
        move || {
            let id = id.clone();
            let line = m.log_tail(10_000).lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["span"]["request_id"] == id.as_str() && v["fields"]["message"] == "request")
                    .then_some(v)
            });
            async move { line }
        }
    };
    let line = wait_until(
        Duration::from_secs(5),
        "the request's log line",
        find("req-logs-42".into()),
    )
    .await;
    assert_eq!(line["fields"]["status"], 404, "{line}");
    assert_eq!(line["span"]["path"], "/v1/pools/no-such-pool", "{line}");
    assert_eq!(line["span"]["method"], "GET", "{line}");
    assert!(line["fields"]["ms"].is_number(), "{line}");
    wait_until(
        Duration::from_secs(5),
        "the made-up id's log line",
        find(made_up),
    )
    .await;
    // Every line of the log is JSON.
    for l in m.log_tail(10_000).lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not JSON: {l}"
        );
    }
}
