//! The dashboard's built files as every member serves them: content-hashed assets cached for a
//! year, everything else revalidated, the page's own routes answered with index.html, and a
//! missing asset a 404 that no browser keeps.

use reqwest::StatusCode;
use warmpool_tests::{Member, Nats};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_files_carry_the_right_caching_headers() {
    let dir = tempfile::tempdir().unwrap();
    let dist = dir.path().join("dist");
    std::fs::create_dir_all(dist.join("assets")).unwrap();
    std::fs::write(dist.join("index.html"), "<!doctype html><title>wp</title>").unwrap();
    std::fs::write(dist.join("assets/index-3f2a1b.js"), "console.log(1)").unwrap();
    let nats = Nats::start(dir.path());
    let mut m = Member::new(1, &nats.url(), dir.path(), true)
        .with_args(&["--dashboard-dir", dist.to_str().unwrap()]);
    m.start();
    let url = m.url();
    m.wait_up().await;
    let http = warmpool_tests::http_client();

    let get = |path: &str| http.get(format!("{url}{path}")).send();
    let cache = |r: &reqwest::Response| {
        r.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };

    for page in ["/", "/containers", "/nodes/host-a"] {
        let r = get(page).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{page}");
        assert_eq!(cache(&r), "no-cache", "{page}");
        assert!(
            r.text().await.unwrap().contains("<title>wp</title>"),
            "{page}"
        );
    }

    let r = get("/assets/index-3f2a1b.js").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(cache(&r), "public, max-age=31536000, immutable");
    assert_eq!(r.text().await.unwrap(), "console.log(1)");

    // A chunk of an older build: not the page (a browser would keep that for a year).
    let r = get("/assets/index-000000.js").await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(!cache(&r).contains("immutable"), "{}", cache(&r));
    let body: warmpool_proto::api::ErrorBody = r.json().await.unwrap();
    assert_eq!(body.error.code, "not_found");

    // The API is never the page.
    let r = get("/v1/no-such-route").await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: warmpool_proto::api::ErrorBody = r.json().await.unwrap();
    assert_eq!(body.error.code, "not_found");
    let r = http.post(format!("{url}/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// The dashboard's list of event kinds (its event filters) is the server's, in its order.
#[test]
fn the_dashboard_knows_every_event_kind() {
    let js = std::fs::read_to_string(warmpool_tests::root().join("dashboard/src/lib/reducers.js"))
        .unwrap();
    let start = js
        .find("export const EVENT_KINDS = [")
        .expect("EVENT_KINDS in reducers.js");
    let end = start + js[start..].find("];").unwrap();
    let listed: Vec<&str> = js[start..end].split('\'').skip(1).step_by(2).collect();
    let server: Vec<&str> = warmpool_proto::EventKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(listed, server, "dashboard/src/lib/reducers.js EVENT_KINDS");
}
