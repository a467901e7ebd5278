//! Issue 7's keys and roles: every route needs a key; viewers read; users also allocate;
//! admins do everything; revoked keys stop working; keys never appear in logs.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use warmpool_proto::api::{CreatedKey, Role};
use warmpool_tests::{wait_until, Member, Nats};

/// Every API route, with a body where one is needed.
fn routes() -> Vec<(Method, &'static str, &'static str)> {
    vec![
        (Method::GET, "/v1/health", ""),
        (Method::GET, "/v1/ready", ""),
        (Method::GET, "/v1/status", ""),
        (Method::GET, "/v1/usage", ""),
        (Method::GET, "/v1/pools", ""),
        (Method::POST, "/v1/pools", r#"{"name":"authp","image":"x"}"#),
        (Method::GET, "/v1/pools/authp", ""),
        (
            Method::PUT,
            "/v1/pools/authp",
            r#"{"name":"authp","image":"y"}"#,
        ),
        (Method::DELETE, "/v1/pools/authp", ""),
        (Method::GET, "/v1/containers", ""),
        (
            Method::GET,
            "/v1/containers/0194f0a0-0000-7000-8000-000000000000",
            "",
        ),
        (Method::GET, "/v1/allocations", ""),
        (Method::POST, "/v1/allocations", r#"{"pool":"authp"}"#),
        (
            Method::GET,
            "/v1/allocations/0194f0a0-0000-7000-8000-000000000000",
            "",
        ),
        (
            Method::DELETE,
            "/v1/allocations/0194f0a0-0000-7000-8000-000000000000",
            "",
        ),
        (
            Method::POST,
            "/v1/allocations/0194f0a0-0000-7000-8000-000000000000/renew",
            "",
        ),
        (Method::GET, "/v1/nodes", ""),
        (Method::POST, "/v1/nodes/n1/cordon", ""),
        (Method::POST, "/v1/nodes/n1/uncordon", ""),
        (Method::POST, "/v1/nodes/n1/drain", ""),
        (Method::GET, "/v1/events", ""),
        (Method::GET, "/v1/events/stream", ""),
        (Method::GET, "/v1/cluster", ""),
        (
            Method::POST,
            "/v1/cluster/members",
            r#"{"id":9,"api_addr":"http://127.0.0.1:1"}"#,
        ),
        (Method::DELETE, "/v1/cluster/members/9", ""),
        (Method::GET, "/v1/keys", ""),
        (Method::POST, "/v1/keys", r#"{"name":"k","role":"viewer"}"#),
        (Method::DELETE, "/v1/keys/000000000000", ""),
        (Method::GET, "/metrics", ""),
    ]
}

fn is_write(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_roles_guard_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let admin = format!("wpk_{}_{}", "a1b2c3d4e5f6", "0123456789abcdef".repeat(4));
    let key_file = dir.path().join("admin.key");
    std::fs::write(&key_file, &admin).unwrap();
    let mut m = Member::new(1, &nats.url(), dir.path(), true).with_args(&[
        "--auth",
        "--admin-key-file",
        key_file.to_str().unwrap(),
    ]);
    m.start();
    let url = m.url();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let call = |method: Method, path: &str, body: &str, key: Option<&str>| {
        let mut req = http
            .request(method, format!("{url}{path}"))
            .body(body.to_string());
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send()
    };
    wait_until(
        Duration::from_secs(30),
        "the bootstrap admin key to work",
        || {
            let r = call(Method::GET, "/v1/ready", "", Some(&admin));
            async move { (r.await.ok()?.status() == StatusCode::OK).then_some(()) }
        },
    )
    .await;

    let mut tokens = std::collections::BTreeMap::new();
    for role in [Role::Viewer, Role::User] {
        let body = format!(
            r#"{{"name":"{}-key","role":"{}"}}"#,
            role.as_str(),
            role.as_str()
        );
        let resp = call(Method::POST, "/v1/keys", &body, Some(&admin))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let created: CreatedKey = resp.json().await.unwrap();
        assert_eq!(created.key.role, role);
        tokens.insert(role, created.token);
    }
    let (viewer, user) = (tokens[&Role::Viewer].clone(), tokens[&Role::User].clone());

    for (method, path, body) in routes() {
        // 1. No key, a wrong key, a malformed key: 401 everywhere.
        for key in [
            None,
            Some("wpk_000000000000_".to_string() + &"0".repeat(64)),
            Some("letmein".to_string()),
        ] {
            let resp = call(method.clone(), path, body, key.as_deref())
                .await
                .unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {key:?}"
            );
            let err: warmpool_proto::api::ErrorBody = resp.json().await.unwrap();
            assert_eq!(err.error.code, "unauthorized");
        }
        // 2. A viewer may read everything but the keys, and write nothing.
        let resp = call(method.clone(), path, body, Some(&viewer))
            .await
            .unwrap();
        let viewer_forbidden = is_write(&method) || path.starts_with("/v1/keys");
        if viewer_forbidden {
            assert_eq!(
                resp.status(),
                StatusCode::FORBIDDEN,
                "viewer {method} {path}"
            );
        } else if path != "/v1/events/stream" {
            assert_ne!(
                resp.status(),
                StatusCode::FORBIDDEN,
                "viewer {method} {path}"
            );
            assert_ne!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "viewer {method} {path}"
            );
        }
        // 3. A user may also allocate, release and renew, but not change pools, nodes,
        //    membership or keys.
        let resp = call(method.clone(), path, body, Some(&user)).await.unwrap();
        let user_allowed = !path.starts_with("/v1/keys")
            && (!is_write(&method) || path.starts_with("/v1/allocations"));
        if user_allowed {
            assert!(
                !matches!(
                    resp.status(),
                    StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED
                ),
                "user {method} {path}: {}",
                resp.status()
            );
        } else {
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "user {method} {path}");
        }
    }

    // The event stream also takes the key in the query (browsers' EventSource cannot send
    // headers).
    let resp = http
        .get(format!("{url}/v1/events/stream?access_token={viewer}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);

    // A revoked key stops working at once.
    let id = viewer.split('_').nth(1).unwrap();
    let resp = call(Method::DELETE, &format!("/v1/keys/{id}"), "", Some(&admin))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = call(Method::GET, "/v1/pools", "", Some(&viewer))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Keys list shows names and roles, never secrets; logs never hold a token.
    let listed = call(Method::GET, "/v1/keys", "", Some(&admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for t in [&admin, &viewer, &user] {
        let secret = t.rsplit('_').next().unwrap();
        assert!(!listed.contains(secret), "a secret in the key list");
        assert!(!m.log_tail(100_000).contains(secret), "a secret in the log");
    }
}
