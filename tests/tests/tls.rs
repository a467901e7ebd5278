//! TLS as an option (issue 15): the REST API over HTTPS (`--tls-cert`, `--tls-key`), and NATS
//! over TLS for members and agents (`--nats-ca`), with certificates of a CA made for the test
//! by openssl. A pool comes up and allocates through it all; plain HTTP to the HTTPS port and
//! HTTPS without trusting the CA are refused.

use crate::support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use poolctl::Client;
use support::ConfiguredNats;
use warmpool_tests::{allocation, free_port, wait_until, Agent, Member, TestCluster};

/// A CA, and a certificate it signed for 127.0.0.1 and localhost; returns (ca, cert, key).
fn make_certs(dir: &Path) -> (String, String, String) {
    let p = |f: &str| dir.join(f).to_str().expect("utf-8 path").to_string();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl is installed (deploy/dev.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ext = dir.join("san.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext file");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=warmpool test CA",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p("server.key"),
        "-out",
        &p("server.csr"),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p("san.ext"),
        "-out",
        &p("server.pem"),
    ]);
    (p("ca.pem"), p("server.pem"), p("server.key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_https_and_members_and_agents_speak_tls_to_nats() {
    warmpool_tests::ensure_demo_image();
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = make_certs(dir.path());
    let port = free_port();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: \"127.0.0.1:{port}\"\ntls {{\n  cert_file: \"{cert}\"\n  key_file: \"{key}\"\n}}\n"
        ),
    )
    .expect("nats config");
    let nats = ConfiguredNats::start(&conf, port, dir.path());
    let mut m = Member::new(1, &nats.url(), dir.path(), true).with_args(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--nats-ca",
        &ca,
    ]);
    m.start();
    let mut agent = Agent::new(&nats.url(), dir.path()).with_args(&["--nats-ca", &ca]);
    agent.start();
    let https = m.url().replace("http://", "https://");
    let client = Client::builder(vec![https.clone()])
        .ca_pem(Some(std::fs::read(&ca).expect("ca")))
        .build()
        .expect("client");
    let c = client.clone();
    wait_until(Duration::from_secs(30), "the member over HTTPS", || {
        let c = c.clone();
        async move { c.ready().await.ok().filter(|r| *r) }
    })
    .await;
    // A pool warms through an agent that reached NATS over TLS, and allocates.
    client
        .create_pool(&TestCluster::demo_spec("tls", 1))
        .await
        .expect("create pool");
    let c = client.clone();
    wait_until(Duration::from_secs(90), "a warm container", || {
        let c = c.clone();
        async move {
            let s = c.status().await.ok()?;
            (s.pools.first()?.counts.warm >= 1).then_some(())
        }
    })
    .await;
    let a = client
        .allocate(&allocation("tls", 10_000))
        .await
        .expect("allocate over HTTPS");
    assert_eq!(a.pool.as_str(), "tls");

    // Plain HTTP to the HTTPS port gets no answer; HTTPS without trusting the CA is refused.
    let plain = warmpool_tests::http_client_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let r = plain.get(format!("{}/v1/health", m.url())).send().await;
    assert!(
        r.as_ref().map_or(true, |r| !r.status().is_success()),
        "plain HTTP was served: {r:?}"
    );
    let untrusting = Client::new(vec![https], None).expect("client");
    let e = untrusting.health().await.expect_err("an unknown CA");
    assert!(!e.to_string().is_empty());
    // A NATS client that does not trust the CA cannot connect.
    let plain_nats = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(nats.url());
    let refused = tokio::time::timeout(Duration::from_secs(5), plain_nats).await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a NATS client without the CA connected"
    );
}
