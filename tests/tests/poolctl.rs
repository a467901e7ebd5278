//! `poolctl` end to end, as an operator types it, against a real member and a simulated host:
//! pools, allocation and release, containers, the event log and following it, and the errors
//! a person reads.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use warmpool_tests::sim_agent::SimAgent;
use warmpool_tests::{bin, run_poolctl, unique, TestCluster};

fn ok(url: &str, args: &[&str]) -> String {
    let (code, out, err) = run_poolctl(url, None, args);
    assert_eq!(code, 0, "poolctl {args:?}: {err}");
    out
}

fn json(url: &str, args: &[&str]) -> Value {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(url, &all)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_drives_a_pool_with_poolctl() {
    let c = TestCluster::replicated(1, &[]).await;
    let url = c.members[0].url();
    let _host = SimAgent::start(&c.nats.url(), &unique("h"), 41, Duration::from_millis(300)).await;
    let pool = unique("op").replace('-', "");

    // The member says what it is: the tests run debug builds, and so it says.
    let out = ok(&url, &["cluster", "status"]);
    assert!(out.contains("(debug)"), "{out}");
    assert_eq!(json(&url, &["cluster", "status"])["build"], "debug");

    let out = ok(
        &url,
        &[
            "pool",
            "create",
            &pool,
            "--image",
            "warmpool-demo:latest",
            "--min-warm",
            "2",
        ],
    );
    assert!(out.contains(&pool), "{out}");
    assert!(ok(&url, &["pool", "list"]).contains(&pool));
    let shown = json(&url, &["pool", "show", &pool]);
    assert_eq!(shown["spec"]["min_warm"], 2, "{shown}");
    c.wait_warm(&pool, 2, Duration::from_secs(30)).await;

    // Follow the pool's events from now on, as a person would in another terminal.
    let mut follow = Command::new(bin("poolctl"))
        .args([
            "--url", &url, "-o", "json", "events", "--follow", "--pool", &pool,
        ])
        .args(["--kind", "container_allocated,container_released"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let a = json(&url, &["alloc", &pool, "--session", "op-1"]);
    let id = a["id"].as_str().unwrap().to_string();
    assert_eq!(a["session_id"], "op-1");
    let listed = ok(
        &url,
        &["containers", "--pool", &pool, "--state", "allocated"],
    );
    assert!(listed.contains("op-1"), "{listed}");
    let released = ok(&url, &["release", &id]);
    assert!(released.contains("released(client)"), "{released}");
    // The same allocation through the library, to see the stream is not just poolctl's own.
    c.client
        .allocate(&warmpool_tests::allocation(&pool, 5_000))
        .await
        .unwrap();

    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("events --follow printed only {kinds:?}"));
        let e: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(e["pool"], pool.as_str(), "{line}");
        kinds.push(e["kind"].as_str().unwrap().to_string());
    }
    assert_eq!(
        kinds,
        [
            "container_allocated",
            "container_released",
            "container_allocated"
        ]
    );
    let _ = follow.kill();
    let _ = follow.wait();

    // The log, after the fact: the first allocation's life in order.
    let events = json(&url, &["events", "--session", "op-1"]);
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"container_allocated"), "{events}");
    assert!(kinds.contains(&"container_released"), "{events}");

    // Errors a person reads, with the right exit codes.
    let (code, _, err) = run_poolctl(&url, None, &["pool", "show", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("not_found") && err.contains("nope"), "{err}");
    let (code, _, err) = run_poolctl("http://127.0.0.1:1", None, &["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("is it running?"), "{err}");
    let (code, _, err) = run_poolctl(&url, None, &["pool", "create", "Bad_Name", "--image", "x"]);
    assert_eq!(code, 2, "{err}");

    ok(&url, &["pool", "delete", &pool]);
    assert!(!ok(&url, &["pool", "list"]).contains(&pool));
}
