//! `/metrics` of a control-plane member and of an agent: both parse with a strict parser of the
//! Prometheus text exposition format (0.0.4), and the allocation histogram counts every
//! allocation the test made, per pool, across outcomes.
//!
//! The parser is written here, strictly: every line is a comment, a `# HELP`/`# TYPE` line or a
//! sample that parses; a family's `# TYPE` comes once, before its samples, and its samples are
//! not split; histograms have cumulative buckets ending at `+Inf` and `_count` equal to the
//! `+Inf` bucket; counters end in `_total`. Every family also needs a `# HELP` line with some
//! text (issue 16), and when `promtool` is on the PATH (Debian's `prometheus` package) the
//! scrapes must pass `promtool check metrics` as well.

use crate::support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use support::AgentProcess;
use warmpool_tests::proto::api::CreateAllocation;
use warmpool_tests::proto::PoolName;
use warmpool_tests::{free_port, unique, wait_until, TestCluster};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, Kind>,
    /// `# HELP` text by family.
    help: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// Samples named `name` whose labels include every pair of `with`.
    fn find<'a>(
        &'a self,
        name: &'a str,
        with: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| {
            s.name == name
                && with
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.find(name, with).map(|s| s.value).sum()
    }

    /// Families (typed, or seen in samples) with no `# HELP` line or an empty one.
    fn without_help(&self) -> Vec<String> {
        let mut families: std::collections::BTreeSet<String> = self.types.keys().cloned().collect();
        families.extend(self.samples.iter().map(|s| family_of(&s.name, &self.types)));
        families
            .into_iter()
            .filter(|f| self.help.get(f).is_none_or(|h| h.trim().is_empty()))
            .collect()
    }
}

/// Fails naming every family of the scrape of `what` that has no HELP text.
fn assert_every_family_has_help(what: &str, e: &Exposition) {
    let missing = e.without_help();
    assert!(
        missing.is_empty(),
        "{what}: metric families without HELP text: {missing:?}"
    );
}

/// `promtool check metrics` on `text`, when promtool is installed; `None` when it is not.
fn promtool_check(text: &str) -> Option<Result<(), String>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(match out.status.success() && said.trim().is_empty() {
        true => Ok(()),
        false => Err(said),
    })
}

fn metric_name_ok(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn label_name_ok(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|_| format!("bad value {s:?}")),
    }
}

/// `{a="x",b="y"}` (the braces included) into pairs; escapes `\\`, `\"`, `\n`.
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let inner = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or("labels not in braces")?;
    let mut labels = BTreeMap::new();
    let mut chars = inner.chars().peekable();
    loop {
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if name.is_empty() && chars.peek().is_none() {
            break; // `{}` or a trailing comma
        }
        let name = name.trim().to_string();
        if !label_name_ok(&name) {
            return Err(format!("bad label name {name:?}"));
        }
        if chars.next() != Some('=') || chars.next() != Some('"') {
            return Err(format!("label {name} is not name=\"value\""));
        }
        let mut value = String::new();
        loop {
            match chars.next().ok_or("unterminated label value")? {
                '"' => break,
                '\\' => match chars.next().ok_or("dangling escape")? {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                '\n' => return Err("newline in label value".into()),
                c => value.push(c),
            }
        }
        if labels.insert(name.clone(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        match chars.next() {
            None => break,
            Some(',') => continue,
            Some(c) => return Err(format!("expected ',' after a label, got {c:?}")),
        }
    }
    Ok(labels)
}

/// The family a sample belongs to, given the declared types.
fn family_of(name: &str, types: &BTreeMap<String, Kind>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if matches!(types.get(base), Some(Kind::Histogram | Kind::Summary)) {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

/// Parses and checks a whole exposition; every problem is an error naming its line.
fn parse_strict(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let mut helped = HashSet::new();
    let mut finished = HashSet::new();
    let mut current: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", i + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut words = rest.trim_start().splitn(3, ' ');
            match words.next() {
                Some("HELP") => {
                    let name = words
                        .next()
                        .ok_or_else(|| err("HELP without a name".into()))?;
                    if !helped.insert(name.to_string()) {
                        return Err(err(format!("second HELP for {name}")));
                    }
                    out.help
                        .insert(name.to_string(), words.next().unwrap_or("").to_string());
                }
                Some("TYPE") => {
                    let name = words
                        .next()
                        .ok_or_else(|| err("TYPE without a name".into()))?;
                    let kind = match words.next().map(str::trim) {
                        Some("counter") => Kind::Counter,
                        Some("gauge") => Kind::Gauge,
                        Some("histogram") => Kind::Histogram,
                        Some("summary") => Kind::Summary,
                        Some("untyped") => Kind::Untyped,
                        other => return Err(err(format!("unknown type {other:?}"))),
                    };
                    if !metric_name_ok(name) {
                        return Err(err(format!("bad metric name {name:?}")));
                    }
                    if out.types.insert(name.to_string(), kind).is_some() {
                        return Err(err(format!("second TYPE for {name}")));
                    }
                    if out
                        .samples
                        .iter()
                        .any(|s| family_of(&s.name, &out.types) == name)
                    {
                        return Err(err(format!("TYPE of {name} after its samples")));
                    }
                }
                _ => {} // a plain comment
            }
            continue;
        }
        let (name_and_labels, rest) = match line.find('{') {
            Some(open) => {
                let close = line
                    .rfind('}')
                    .ok_or_else(|| err("'{' without '}'".into()))?;
                (
                    (&line[..open], Some(&line[open..=close])),
                    line[close + 1..].trim(),
                )
            }
            None => {
                let (n, r) = line
                    .split_once(' ')
                    .ok_or_else(|| err("a sample needs a value".into()))?;
                ((n, None), r.trim())
            }
        };
        let name = name_and_labels.0.trim();
        if !metric_name_ok(name) {
            return Err(err(format!("bad metric name {name:?}")));
        }
        let labels = match name_and_labels.1 {
            Some(l) => parse_labels(l).map_err(err)?,
            None => BTreeMap::new(),
        };
        let mut fields = rest.split_whitespace();
        let value =
            parse_value(fields.next().ok_or_else(|| err("no value".into()))?).map_err(err)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| err(format!("bad timestamp {ts:?}")))?;
        }
        if fields.next().is_some() {
            return Err(err("extra fields after the timestamp".into()));
        }
        let family = family_of(name, &out.types);
        if current.as_deref() != Some(family.as_str()) {
            if finished.contains(&family) {
                return Err(err(format!("samples of {family} are split")));
            }
            if let Some(prev) = current.replace(family.clone()) {
                finished.insert(prev);
            }
        }
        out.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    check_families(&out)?;
    Ok(out)
}

fn check_families(out: &Exposition) -> Result<(), String> {
    for (name, kind) in &out.types {
        match kind {
            Kind::Counter if !name.ends_with("_total") => {
                return Err(format!("counter {name} does not end in _total"))
            }
            Kind::Histogram => check_histogram(out, name)?,
            _ => {}
        }
    }
    Ok(())
}

fn check_histogram(out: &Exposition, name: &str) -> Result<(), String> {
    let bucket = format!("{name}_bucket");
    let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
    for s in out.find(&bucket, &[]) {
        let mut key = s.labels.clone();
        let le = key
            .remove("le")
            .ok_or_else(|| format!("{bucket} without le"))?;
        series
            .entry(key)
            .or_default()
            .push((parse_value(&le)?, s.value));
    }
    if series.is_empty() {
        return Err(format!("histogram {name} has no buckets"));
    }
    for (labels, buckets) in series {
        for w in buckets.windows(2) {
            if w[1].0 <= w[0].0 || w[1].1 < w[0].1 {
                return Err(format!(
                    "{name}{labels:?}: buckets not increasing and cumulative: {buckets:?}"
                ));
            }
        }
        let (last_le, inf) = *buckets.last().expect("non-empty");
        if last_le != f64::INFINITY {
            return Err(format!("{name}{labels:?}: last bucket is not +Inf"));
        }
        let with: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let count: Vec<f64> = out
            .find(&format!("{name}_count"), &with)
            .filter(|s| s.labels.len() == labels.len())
            .map(|s| s.value)
            .collect();
        if count != [inf] {
            return Err(format!(
                "{name}{labels:?}: _count {count:?} is not the +Inf bucket {inf}"
            ));
        }
        if out
            .find(&format!("{name}_sum"), &with)
            .filter(|s| s.labels.len() == labels.len())
            .count()
            != 1
        {
            return Err(format!("{name}{labels:?}: no single _sum"));
        }
    }
    Ok(())
}

async fn scrape(url: &str, token: Option<&str>) -> Exposition {
    scrape_text(url, token).await.0
}

/// The scrape parsed, and its text.
async fn scrape_text(url: &str, token: Option<&str>) -> (Exposition, String) {
    let mut req = warmpool_tests::http_client().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("scrape");
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("text/plain"), "content type {ct}");
    let text = resp.text().await.expect("body");
    let e = parse_strict(&text).unwrap_or_else(|e| panic!("{url} does not parse: {e}\n{text}"));
    (e, text)
}

/// Every family of the scrape has HELP text, and promtool (when installed) finds nothing.
fn check_help(what: &str, e: &Exposition, text: &str) {
    assert_every_family_has_help(what, e);
    match promtool_check(text) {
        Some(Ok(())) => eprintln!("{what}: promtool check metrics is clean"),
        Some(Err(said)) => panic!("{what}: promtool check metrics:\n{said}"),
        None => eprintln!(
            "{what}: promtool is not installed; the strict parser's HELP check stands alone"
        ),
    }
}

#[test]
fn the_parser_is_strict() {
    let good = "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"1\\\"\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n";
    let e = parse_strict(good).unwrap();
    assert_eq!(e.sum("x_total", &[("a", "1\"")]), 3.0);
    for bad in [
        "x_total 1 2 3\n",                       // extra field
        "x{a=1} 1\n",                            // unquoted label
        "# TYPE x counter\nx 1\n",               // counter without _total
        "# TYPE g gauge\n# TYPE g gauge\ng 1\n", // TYPE twice
        "g 1\n# TYPE g gauge\n",                 // TYPE after samples
        "a 1\nb 1\na 2\n",                       // split family
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", // not cumulative
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", // no +Inf
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n", // count != +Inf
        "x one\n",                                                        // bad value
    ] {
        assert!(parse_strict(bad).is_err(), "accepted {bad:?}");
    }
    assert_eq!(e.without_help(), ["h"]);
    let helped = parse_strict("# HELP g G.\n# TYPE g gauge\ng 1\n# HELP u \nu 1\nv 2\n").unwrap();
    assert_eq!(helped.without_help(), ["u", "v"]);
}

fn alloc(pool: &str, wait_ms: u64, key: Option<&str>) -> CreateAllocation {
    CreateAllocation {
        pool: PoolName::new(pool).expect("pool"),
        session_id: None,
        lease_seconds: None,
        wait_ms: Some(wait_ms),
        idempotency_key: key.map(String::from),
        tenant: None,
        env: Default::default(),
        secrets: Default::default(),
        metadata: Default::default(),
        wait_for: None,
        asynchronous: false,
        location: None,
        max_lifetime_secs: None,
        workspace: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_and_agent_metrics_parse_and_count_every_allocation() {
    // A cluster whose only Docker host is the metered agent.
    let mut c = TestCluster::replicated(1, &[]).await;
    warmpool_tests::ensure_demo_image();
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let agent = AgentProcess::start(
        "metrics",
        &c.nats.url(),
        c.dir(),
        &["--metrics-addr", &metrics_addr],
    );
    let warm = unique("mw");
    let cold = unique("mc");
    c.client
        .create_pool(&TestCluster::demo_spec(&warm, 2))
        .await
        .expect("create warm pool");
    let mut cold_spec = TestCluster::demo_spec(&cold, 0);
    cold_spec.max_warm = Some(0);
    c.client
        .create_pool(&cold_spec)
        .await
        .expect("create cold pool");
    c.wait_warm(&warm, 2, Duration::from_secs(90)).await;

    // Pool `warm`: two from warm containers, one replay of the first by its key, one that
    // waits for the replacement. Pool `cold`: two that find nothing (no wait).
    let first = c
        .client
        .allocate(&alloc(&warm, 0, Some("k1")))
        .await
        .expect("warm 1");
    c.client
        .allocate(&alloc(&warm, 0, None))
        .await
        .expect("warm 2");
    let replay = c
        .client
        .allocate(&alloc(&warm, 0, Some("k1")))
        .await
        .expect("replay");
    assert_eq!(replay.id, first.id);
    c.client
        .allocate(&alloc(&warm, 30_000, None))
        .await
        .expect("waited");
    for _ in 0..2 {
        assert!(c.client.allocate(&alloc(&cold, 0, None)).await.is_err());
    }

    let (cp, cp_text) = scrape_text(&format!("{}/metrics", c.members[0].url()), None).await;
    check_help("control plane", &cp, &cp_text);
    let name = "warmpool_allocation_duration_seconds";
    assert_eq!(cp.types.get(name), Some(&Kind::Histogram));
    assert_eq!(cp.sum(&format!("{name}_count"), &[("pool", &warm)]), 4.0);
    assert_eq!(cp.sum(&format!("{name}_count"), &[("pool", &cold)]), 2.0);
    assert_eq!(
        cp.sum(
            &format!("{name}_count"),
            &[("pool", &cold), ("outcome", "no_capacity")]
        ),
        2.0
    );
    assert_eq!(
        cp.sum(
            &format!("{name}_count"),
            &[("pool", &warm), ("outcome", "replayed")]
        ),
        1.0
    );
    assert_eq!(
        cp.sum("warmpool_allocations_total", &[("pool", &warm)]),
        4.0
    );
    for gauge in [
        "warmpool_raft_term",
        "warmpool_raft_is_leader",
        "warmpool_raft_commit_index",
        "warmpool_raft_applied_index",
        "warmpool_pool_queue_length",
        "warmpool_pool_containers",
        "warmpool_node_containers",
    ] {
        assert_eq!(cp.types.get(gauge), Some(&Kind::Gauge), "{gauge}");
    }
    assert!(cp.sum("warmpool_raft_commit_index", &[]) >= 1.0);
    assert!(cp.sum("warmpool_keepwarm_planned_total", &[("pool", &warm)]) >= 3.0);
    assert_eq!(cp.sum("warmpool_raft_is_leader", &[]), 1.0);
    assert_eq!(
        cp.types.get("warmpool_http_request_duration_seconds"),
        Some(&Kind::Histogram)
    );

    // The agent made the containers, probed them and reports them.
    let url = format!("http://{metrics_addr}/metrics");
    let a = wait_until(
        Duration::from_secs(10),
        "agent metrics with running containers",
        || {
            let url = url.clone();
            async move {
                let a = scrape(&url, None).await;
                (a.sum(
                    "warmpool_agent_containers",
                    &[("status", "running"), ("health", "healthy")],
                ) >= 2.0)
                    .then_some(a)
            }
        },
    )
    .await;
    let docker = "warmpool_agent_docker_call_duration_seconds";
    assert_eq!(a.types.get(docker), Some(&Kind::Histogram));
    assert!(a.sum(&format!("{docker}_count"), &[("op", "create container")]) >= 3.0);
    assert!(a.sum(&format!("{docker}_count"), &[("op", "start container")]) >= 3.0);
    assert!(a.sum("warmpool_agent_probes_total", &[("result", "pass")]) >= 3.0);
    assert!(a.sum("warmpool_agent_heartbeats_sent_total", &[]) >= 1.0);
    assert!(a.sum("warmpool_agent_facts_sent_total", &[]) >= 3.0);
    assert_eq!(a.sum("warmpool_agent_nats_connected", &[]), 1.0);
    assert_eq!(a.sum("warmpool_agent_nats_reconnects_total", &[]), 0.0);
    let (a, a_text) = scrape_text(&url, None).await;
    check_help("agent", &a, &a_text);

    // NATS goes away and comes back: one reconnect.
    c.nats.kill();
    c.nats.restart();
    wait_until(
        Duration::from_secs(20),
        "the agent to count a reconnect",
        || {
            let url = url.clone();
            async move {
                let a = scrape(&url, None).await;
                (a.sum("warmpool_agent_nats_reconnects_total", &[]) >= 1.0
                    && a.sum("warmpool_agent_nats_connected", &[]) == 1.0)
                    .then_some(())
            }
        },
    )
    .await;
    drop(agent);
}
