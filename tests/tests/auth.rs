//! Issue 7's keys and roles: every route needs a key; viewers read; users also allocate;
//! admins do everything; revoked keys stop working; keys never appear in logs.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use warmpool_proto::api::{CreatedKey, Role};
use warmpool_tests::{run_poolctl, wait_until, Member, Nats};

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
        (Method::GET, "/v1/tenants", ""),
        (Method::GET, "/v1/tenants/acme", ""),
        (Method::PUT, "/v1/tenants/acme", r#"{"max_allocations":3}"#),
        (Method::DELETE, "/v1/tenants/acme", ""),
        (Method::GET, "/metrics", ""),
    ]
}

fn is_write(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD)
}

/// A one-member cluster with auth on and a bootstrap admin key, returned with that key.
fn member_with_auth(dir: &std::path::Path) -> (Nats, Member, String) {
    let nats = Nats::start(dir);
    let admin = format!("wpk_{}_{}", "a1b2c3d4e5f6", "0123456789abcdef".repeat(4));
    let key_file = dir.join("admin.key");
    std::fs::write(&key_file, &admin).unwrap();
    let mut m = Member::new(1, &nats.url(), dir, true).with_args(&[
        "--auth",
        "--admin-key-file",
        key_file.to_str().unwrap(),
    ]);
    m.start();
    (nats, m, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_roles_guard_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let (_nats, m, admin) = member_with_auth(dir.path());
    let url = m.url();
    let http = warmpool_tests::http_client_builder()
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
            // `/v1/ready` needs no key: ask a route that does.
            let r = call(Method::GET, "/v1/whoami", "", Some(&admin));
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
        // 0. The probes need no key, and say nothing but whether the member is up or ready.
        if path == "/v1/health" || path == "/v1/ready" {
            for key in [None, Some("letmein")] {
                let resp = call(method.clone(), path, body, key).await.unwrap();
                assert_eq!(resp.status(), StatusCode::OK, "{path} with {key:?}");
                let body: serde_json::Value = resp.json().await.unwrap();
                let want = if path == "/v1/health" { "ok" } else { "ready" };
                assert_eq!(body, serde_json::json!({ "status": want }), "{path}");
            }
            continue;
        }
        // 1. No key, a wrong key, a malformed key: 401 everywhere else.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poolctl_makes_lists_and_revokes_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (_nats, m, admin) = member_with_auth(dir.path());
    let url = m.url();
    wait_until(
        Duration::from_secs(30),
        "the bootstrap admin key to work",
        || {
            let url = url.clone();
            let admin = admin.clone();
            async move {
                let (code, _, _) = tokio::task::spawn_blocking(move || {
                    run_poolctl(&url, Some(&admin), &["key", "list"])
                })
                .await
                .ok()?;
                (code == 0).then_some(())
            }
        },
    )
    .await;

    // An admin makes a user key; the token comes back once, in JSON for a program.
    let (code, out, err) = run_poolctl(
        &url,
        Some(&admin),
        &["-o", "json", "key", "create", "ci runner", "--role", "user"],
    );
    assert_eq!(code, 0, "{err}");
    let created: CreatedKey = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (created.key.name.as_str(), created.key.role),
        ("ci runner", Role::User)
    );
    let user = created.token;

    let (code, out, err) = run_poolctl(&url, Some(&user), &["whoami"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&created.key.id)
            && out.contains("role:    user")
            && out.contains("tenant:  default"),
        "{out}"
    );

    // The list shows both keys by id, name and role, and no secret.
    let (code, out, err) = run_poolctl(&url, Some(&admin), &["key", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("bootstrap"), "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with(&created.key.id))
        .unwrap_or_else(|| panic!("no row for the new key: {out}"));
    assert!(row.contains("ci runner") && row.contains("user"), "{row}");
    for t in [&admin, &user] {
        assert!(
            !out.contains(t.rsplit('_').next().unwrap()),
            "a secret listed"
        );
    }

    // A user key may not manage keys: 403, exit 1, and a message that says why.
    let (code, _, err) = run_poolctl(
        &url,
        Some(&user),
        &["key", "create", "x", "--role", "admin"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("forbidden") && err.contains("role"), "{err}");

    // Revoked (by pasting the whole token): refused from then on, with a 401.
    let (code, out, err) = run_poolctl(&url, Some(&admin), &["key", "revoke", &user]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked:"), "{out}");
    let (code, _, err) = run_poolctl(&url, Some(&user), &["status"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("unauthorized") && err.contains("revoked"),
        "{err}"
    );

    // A key id that is not one is a usage error, and nothing is sent.
    let (code, _, err) = run_poolctl(&url, Some(&admin), &["key", "revoke", "nope"]);
    assert_eq!(code, 2, "{err}");
    // An unknown id is the server's 404.
    let (code, _, err) = run_poolctl(&url, Some(&admin), &["key", "revoke", "0000000000ff"]);
    assert_eq!(code, 1);
    assert!(err.contains("not_found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_has_auth_on_and_leaves_its_admin_token_for_poolctl() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    // No auth flag and no key: the default.
    let mut m = Member::new(1, &nats.url(), dir.path(), true).with_args(&["--auth"]);
    m.start();
    let token_file = m.data_dir().join("admin.token");
    let file = token_file.clone();
    wait_until(Duration::from_secs(30), "the bootstrap token file", || {
        let file = file.clone();
        async move {
            std::fs::read_to_string(&file)
                .ok()
                .filter(|s| !s.is_empty())
        }
    })
    .await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "only its owner (root) reads the token");

    // The file is written before the API listens.
    m.wait_up().await;
    // Without a key: 401, except the probes.
    let http = warmpool_tests::http_client();
    let resp = http
        .get(format!("{}/v1/pools", m.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // poolctl finds the token by itself (here through POOLCTL_TOKEN_FILE; on an installed
    // host, at /var/lib/warmpool/admin.token) and acts as admin.
    let poolctl = |file: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(warmpool_tests::bin("poolctl"));
        cmd.args(["--url", &m.url(), "whoami"])
            .env_remove("POOLCTL_TOKEN")
            .env_remove("POOLCTL_TOKEN_FILE")
            .current_dir(dir.path());
        if let Some(f) = file {
            cmd.env("POOLCTL_TOKEN_FILE", f);
        }
        cmd.output().unwrap()
    };
    let file = token_file.clone();
    let out = wait_until(Duration::from_secs(30), "poolctl to act as admin", || {
        let out = poolctl(Some(&file));
        async move { out.status.success().then_some(out) }
    })
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("role:    admin") && text.contains("bootstrap-admin"),
        "{text}"
    );
    let out = poolctl(None);
    assert!(!out.status.success(), "no token, no admin");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401")
            || String::from_utf8_lossy(&out.stderr).contains("unauthorized"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A restarted member keeps the same token.
    let before = std::fs::read_to_string(&token_file).unwrap();
    m.stop();
    m.start();
    m.wait_up().await;
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), before);
}
