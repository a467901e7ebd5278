//! The gateway's cost, measured against going straight to the container's IPv6 address in the
//! same run (`deploy/bench/proxy.sh`): its own nats-server, one member, one agent and one
//! gateway (release binaries from `$WARMPOOL_BIN_DIR`), one allocation of the demo image.
//!
//! - latency: `-n` requests for the demo page each way, interleaved (direct, proxied, direct,
//!   ...) so both see the same machine; one HTTP/1.1 client each, keeping its connection to
//!   the gateway alive (busybox httpd closes every connection, so each request opens a new one
//!   to the container either way); p50, p90, p99 and the added p50/p99;
//! - throughput: a `--mb` MiB streamed download each way, `--runs` times, interleaved; the
//!   median MB/s and the ratio.

use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use poolctl::Client;
use warmpool_tests::gateway::Gateway;
use warmpool_tests::{
    allocation, ensure_demo_image, unique, wait_until, Agent, Member, Nats, TestCluster, DEMO_IMAGE,
};

#[derive(Parser)]
struct Args {
    /// Requests each way for latency.
    #[arg(short = 'n', long, default_value_t = 2000)]
    requests: usize,
    /// MiB per download.
    #[arg(long, default_value_t = 200)]
    mb: u64,
    /// Downloads each way.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn download(http: &reqwest::Client, url: &str, token: Option<&str>) -> anyhow::Result<f64> {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.header("x-warmpool-token", t);
    }
    let start = Instant::now();
    let resp = req.send().await?.error_for_status()?;
    let mut body = resp.bytes_stream();
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        n += chunk?.len() as u64;
    }
    Ok(n as f64 / 1e6 / start.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure_demo_image();
    let dir = tempfile::tempdir()?;
    let nats = Nats::start(dir.path());
    let mut member = Member::new(1, &nats.url(), dir.path(), true).with_log_filter("warn");
    member.start();
    let mut agent = Agent::new(&nats.url(), dir.path());
    agent.start();
    let gw = Gateway::start(&member.url(), dir.path(), &["--log", "warn"]);
    let client = Client::new(vec![member.url()], None)?;
    wait_until(Duration::from_secs(30), "a leader", || {
        let c = client.clone();
        async move { c.ready().await.ok().filter(|r| *r) }
    })
    .await;
    gw.wait_up().await;
    let mut spec = TestCluster::demo_spec(&unique("bench"), 1);
    spec.image = DEMO_IMAGE.into();
    client.create_pool(&spec).await?;
    let a = wait_until(Duration::from_secs(60), "an allocation", || {
        let c = client.clone();
        let pool = spec.name.to_string();
        async move { c.allocate(&allocation(&pool, 2000)).await.ok() }
    })
    .await;
    let ip = a.ipv6.expect("an address");
    let token = a
        .access
        .as_ref()
        .and_then(|x| x.token.clone())
        .expect("a token");
    let direct = format!("http://[{ip}]:{}", a.port);
    let proxied = format!("http://127.0.0.1:{}/s/{}/{}", gw.port, a.id, a.port);
    let http = warmpool_tests::http_client_builder()
        .http1_only()
        .pool_idle_timeout(Duration::from_secs(30))
        .build()?;

    // Warm both paths up.
    for _ in 0..50 {
        http.get(format!("{direct}/")).send().await?.bytes().await?;
        http.get(format!("{proxied}/"))
            .header("x-warmpool-token", &token)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
    }
    let (mut d, mut p) = (Vec::new(), Vec::new());
    for _ in 0..args.requests {
        let t = Instant::now();
        http.get(format!("{direct}/")).send().await?.bytes().await?;
        d.push(t.elapsed());
        let t = Instant::now();
        http.get(format!("{proxied}/"))
            .header("x-warmpool-token", &token)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        p.push(t.elapsed());
    }
    d.sort();
    p.sort();

    let (mut dt, mut pt) = (Vec::new(), Vec::new());
    let bytes = format!("/cgi-bin/bytes?mb={}", args.mb);
    for _ in 0..args.runs {
        dt.push(download(&http, &format!("{direct}{bytes}"), None).await?);
        pt.push(download(&http, &format!("{proxied}{bytes}"), Some(&token)).await?);
    }
    dt.sort_by(f64::total_cmp);
    pt.sort_by(f64::total_cmp);
    let (dm, pm) = (dt[dt.len() / 2], pt[pt.len() / 2]);

    let report = serde_json::json!({
        "requests": args.requests,
        "direct_ms": {"p50": ms(pct(&d, 0.5)), "p90": ms(pct(&d, 0.9)), "p99": ms(pct(&d, 0.99))},
        "proxied_ms": {"p50": ms(pct(&p, 0.5)), "p90": ms(pct(&p, 0.9)), "p99": ms(pct(&p, 0.99))},
        "added_ms": {"p50": ms(pct(&p, 0.5)) - ms(pct(&d, 0.5)), "p99": ms(pct(&p, 0.99)) - ms(pct(&d, 0.99))},
        "download_mib": args.mb,
        "runs": args.runs,
        "direct_mb_s": dm,
        "proxied_mb_s": pm,
        "throughput_ratio": pm / dm,
        "gateway_peak_rss_kib": gw.peak_rss_kib(),
    });
    if args.json {
        println!("{report:#}");
    } else {
        println!("latency of GET / ({} each way, interleaved)", args.requests);
        println!("            p50       p90       p99");
        for (name, v) in [("direct", &d), ("proxied", &p)] {
            println!(
                "{name:<8} {:>6.3} ms {:>6.3} ms {:>6.3} ms",
                ms(pct(v, 0.5)),
                ms(pct(v, 0.9)),
                ms(pct(v, 0.99))
            );
        }
        println!(
            "added    {:>6.3} ms            {:>6.3} ms",
            ms(pct(&p, 0.5)) - ms(pct(&d, 0.5)),
            ms(pct(&p, 0.99)) - ms(pct(&d, 0.99))
        );
        println!(
            "throughput of a {} MiB streamed download (median of {}): direct {dm:.0} MB/s, proxied {pm:.0} MB/s: {:.0}%",
            args.mb,
            args.runs,
            pm / dm * 100.0
        );
        if let Some(rss) = gw.peak_rss_kib() {
            println!("gateway peak RSS {rss} KiB");
        }
    }
    let _ = client.release(a.id).await;
    let _ = client.delete_pool(&spec.name).await;
    drop(gw);
    drop(agent);
    drop(member);
    drop(nats);
    Ok(())
}
