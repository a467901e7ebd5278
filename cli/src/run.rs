//! Carrying out a parsed command: build the request, call the [`Client`], print the answer.

use std::io::Write;

use serde::Serialize;
use warmpool_proto::api::TenantQuota;
use warmpool_proto::api::{
    AddMember, ContainerQuery, CreateAllocation, CreateKey, DrainNode, EventQuery, RenewAllocation,
    UsageQuery,
};
use warmpool_proto::{Event, Timestamp};

use crate::args::{
    AllocArgs, AllocationsArgs, Cli, ClusterCommand, Command, ContainersArgs, EventsArgs,
    KeyCommand, NodeCommand, Output, PoolCommand, TenantCommand,
};
use crate::client::{AllocationQuery, ArchiveRange, Client, NodeAction, PageQuery};
use crate::error::{fmt_duration, ClientError};
use crate::render::{self, Style};
use crate::simulate;
use crate::spec;

/// `before` that means "the newest events": the API answers the newest `limit` events below
/// `before` when `after` is absent. (i64::MAX rather than u64::MAX, in case a server keeps
/// sequence numbers signed.)
const NEWEST: u64 = i64::MAX as u64;
/// Events shown before following, unless `--limit` says otherwise.
const FOLLOW_BACKLOG: usize = 10;

/// Why a command failed, and so how `poolctl` exits.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or a file given on it is wrong; nothing was sent (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The control plane said no, or could not be reached (exit 1).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A benchmark could not run: Docker failed, or a pool did not fill in time (exit 1).
    #[error("{0}")]
    Bench(String),
    /// `poolctl exec`: the command ran and exited with this code, which poolctl exits with.
    #[error("the command exited with {0}")]
    CommandExit(u8),
    /// Writing the output failed (exit 1, or 0 for a closed pipe such as `| head`).
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    /// The process exit code: 2 for usage errors (a bad URL included), 1 for API and
    /// transport errors, 0 when the reader of the output went away.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Client(ClientError::Config(_)) => 2,
            CliError::Client(_) | CliError::Bench(_) => 1,
            CliError::CommandExit(code) => *code,
            CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
            CliError::Output(_) => 1,
        }
    }

    /// The message for standard error, `error: ...`, with a hint where one helps; empty when
    /// there is nothing to say (a closed pipe).
    pub fn render(&self) -> String {
        match self {
            CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe => String::new(),
            CliError::CommandExit(_) => String::new(),
            CliError::Client(e @ ClientError::Unreachable { .. }) => {
                format!("error: {e}; is it running? set POOLCTL_URL")
            }
            CliError::Client(
                e @ ClientError::Api {
                    status,
                    retry_after,
                    ..
                },
            ) => {
                let hint = match (status, retry_after) {
                    (401, _) => {
                        " (set the API token with --token, POOLCTL_TOKEN or POOLCTL_TOKEN_FILE)"
                            .to_string()
                    }
                    (403, _) => " (the token's role does not allow this)".to_string(),
                    (_, Some(d)) => format!(" (retry after {})", fmt_duration(*d)),
                    _ => String::new(),
                };
                format!("error: {e}{hint}")
            }
            other => format!("error: {other}"),
        }
    }
}

/// Where a token is looked for when neither `--token` nor `POOLCTL_TOKEN` gives one: the file
/// `POOLCTL_TOKEN_FILE` names, then the bootstrap admin token a new cluster's first member
/// writes into its data directory (`/var/lib/warmpool` as installed, `./warmpool-data` by
/// default). Only root can read those, as only root should act as the cluster's admin.
pub fn token_files() -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    if let Some(f) = std::env::var_os("POOLCTL_TOKEN_FILE") {
        files.push(std::path::PathBuf::from(f));
    }
    files.push("/var/lib/warmpool/admin.token".into());
    files.push("warmpool-data/admin.token".into());
    files
}

/// The token in the first of `files` that can be read and holds one.
pub fn found_token(files: &[std::path::PathBuf]) -> Option<String> {
    files.iter().find_map(|f| {
        let s = std::fs::read_to_string(f).ok()?;
        let t = s.trim();
        (t.starts_with("wpk_") && !t.contains(char::is_whitespace)).then(|| t.to_string())
    })
}

/// Runs `cli`, writing its output to `out`.
pub async fn run(mut cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    if cli.token.is_none() {
        cli.token = found_token(&token_files());
    }
    let ca_pem = match &cli.ca_cert {
        Some(f) => Some(std::fs::read(f).map_err(|e| {
            ClientError::Config(format!(
                "cannot read the CA certificate {}: {e}",
                f.display()
            ))
        })?),
        None => None,
    };
    let client = Client::builder(cli.url.clone())
        .token(cli.token.clone())
        .ca_pem(ca_pem)
        .build()?;
    let style = Style {
        wide: cli.wide,
        now: Timestamp::now(),
    };
    let p = Printer {
        out,
        output: cli.output,
        style,
    };
    dispatch(cli.command, &client, cli.token, p).await
}

struct Printer<'a> {
    out: &'a mut dyn Write,
    output: Output,
    style: Style,
}

impl Printer<'_> {
    /// Prints `value` as pretty JSON or as `table(value)`.
    fn show<T: Serialize>(
        &mut self,
        value: &T,
        table: impl FnOnce(&T, Style) -> String,
    ) -> Result<(), CliError> {
        match self.output {
            Output::Json => {
                let json = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
                writeln!(self.out, "{json}")?;
            }
            Output::Table => write!(self.out, "{}", table(value, self.style))?,
        }
        Ok(())
    }

    /// Prints a line in table mode only.
    fn note(&mut self, line: &str) -> Result<(), CliError> {
        if self.output == Output::Table {
            writeln!(self.out, "{line}")?;
        }
        Ok(())
    }

    /// One event: a line, or one compact JSON object per line.
    fn event(&mut self, e: &Event) -> Result<(), CliError> {
        match self.output {
            Output::Json => {
                let json = serde_json::to_string(e).map_err(std::io::Error::other)?;
                writeln!(self.out, "{json}")?;
            }
            Output::Table => writeln!(self.out, "{}", render::event_line(e, self.style.wide))?,
        }
        self.out.flush()?;
        Ok(())
    }
}

fn opt_str<T: ToString>(v: &Option<T>) -> Option<String> {
    v.as_ref().map(ToString::to_string)
}

async fn dispatch(
    command: Command,
    client: &Client,
    token: Option<String>,
    mut p: Printer<'_>,
) -> Result<(), CliError> {
    match command {
        Command::Pool(cmd) => pool(cmd, client, p).await,
        Command::Status => p.show(&client.status().await?, |s, _| render::status_view(s)),
        Command::Alloc(a) => {
            let wait = a.wait;
            let req = alloc_request(a);
            let mut got = client.allocate(&req).await?;
            if wait {
                got = client.wait_active(got).await?;
            }
            p.show(&got, render::allocation_detail)
        }
        Command::Release { id } => p.show(&client.release(id).await?, render::allocation_detail),
        Command::Renew { id, lease_seconds } => {
            let a = client.renew(id, &RenewAllocation { lease_seconds }).await?;
            p.show(&a, render::allocation_detail)
        }
        Command::Allocations(a) => {
            let mut q = allocation_query(&a);
            if !(a.archived || a.all_pages || a.limit.is_some() || a.cursor.is_some()) {
                return p.show(&client.list_allocations(&q).await?, |l, s| {
                    render::allocations_table(l, s)
                });
            }
            let mut all = Vec::new();
            loop {
                let page = client.list_allocations_page(&q).await?;
                if !a.all_pages {
                    return show_page(
                        &mut p,
                        &page,
                        &page.items,
                        page.next_cursor.as_deref(),
                        |l, s| render::allocations_table(l, s),
                    );
                }
                all.extend(page.items);
                match page.next_cursor {
                    Some(c) => q.cursor = Some(c),
                    None => break,
                }
            }
            p.show(&all, |l, s| render::allocations_table(l, s))
        }
        Command::Containers(c) => {
            let q = container_query(&c);
            if !(c.archived
                || c.all_pages
                || c.limit.is_some()
                || c.cursor.is_some()
                || c.tenant.is_some())
            {
                return p.show(&client.list_containers(&q).await?, |l, s| {
                    render::containers_table(l, s)
                });
            }
            let mut page_q = container_page_query(&c);
            let mut all = Vec::new();
            loop {
                let page = client.list_containers_page(&q, &page_q).await?;
                if !c.all_pages {
                    return show_page(
                        &mut p,
                        &page,
                        &page.items,
                        page.next_cursor.as_deref(),
                        |l, s| render::containers_table(l, s),
                    );
                }
                all.extend(page.items);
                match page.next_cursor {
                    Some(next) => page_q.cursor = Some(next),
                    None => break,
                }
            }
            p.show(&all, |l, s| render::containers_table(l, s))
        }
        Command::Container { id } => {
            p.show(&client.get_container(id).await?, render::container_detail)
        }
        Command::Events(e) => events(e, client, p).await,
        Command::Logs { id, follow, tail } => {
            crate::session::logs(client, id, follow, tail, p.out).await
        }
        Command::Exec(e) => crate::session::exec(client, e, p.out).await,
        Command::Cp { from, to, archive } => {
            crate::session::cp(client, &from, &to, archive, p.out).await
        }
        Command::Nodes => p.show(&client.nodes().await?, |l, _| render::nodes_table(l)),
        Command::Node(cmd) => {
            let view = match cmd {
                NodeCommand::Cordon { id } => client.node_action(&id, NodeAction::Cordon).await?,
                NodeCommand::Uncordon { id } => {
                    client.node_action(&id, NodeAction::Uncordon).await?
                }
                NodeCommand::Drain {
                    id,
                    deadline_secs: None,
                } => client.node_action(&id, NodeAction::Drain).await?,
                NodeCommand::Drain { id, deadline_secs } => {
                    client.drain_node(&id, &DrainNode { deadline_secs }).await?
                }
            };
            p.show(&view, render::node_line)
        }
        Command::Cluster(cmd) => {
            let view = match cmd {
                ClusterCommand::Status => client.cluster().await?,
                ClusterCommand::Add { id, api_addr } => {
                    client.add_member(&AddMember { id, api_addr }).await?
                }
                ClusterCommand::Remove { id } => client.remove_member(id).await?,
            };
            p.show(&view, |c, _| render::cluster_view(c))
        }
        Command::Usage(u) => {
            let q = UsageQuery {
                pool: opt_str(&u.pool),
                session: opt_str(&u.session),
            };
            p.show(&client.usage(&q).await?, |v, _| render::usage_view(v))
        }
        Command::Key(cmd) => match cmd {
            KeyCommand::Create { name, role, tenant } => p.show(
                &client.create_key(&CreateKey { name, role, tenant }).await?,
                render::created_key,
            ),
            KeyCommand::List => p.show(&client.list_keys().await?, |l, s| render::keys_table(l, s)),
            KeyCommand::Revoke { id } => p.show(&client.revoke_key(&id).await?, render::key_detail),
        },
        Command::Tenant(cmd) => match cmd {
            TenantCommand::List => p.show(&client.list_tenants().await?, |l, _| {
                render::tenants_table(l)
            }),
            TenantCommand::Show { name } => {
                p.show(&client.get_tenant(&name).await?, |t, _| render::tenant(t))
            }
            TenantCommand::Set {
                name,
                max_allocations,
                per_minute,
                burst,
                workspace_max_bytes,
            } => {
                let quota = TenantQuota {
                    max_allocations,
                    allocations_per_minute: per_minute,
                    burst,
                    workspace_max_bytes,
                };
                p.show(&client.put_tenant(&name, &quota).await?, |t, _| {
                    render::tenant(t)
                })
            }
            TenantCommand::Delete { name } => p
                .show(&client.delete_tenant(&name).await?, |t, _| {
                    render::tenant(t)
                }),
        },
        Command::Workspace(cmd) => {
            use crate::args::WorkspaceCommand;
            use warmpool_proto::workspace::WorkspaceQuery;
            match cmd {
                WorkspaceCommand::List { tenant } => p.show(
                    &client.list_workspaces(&WorkspaceQuery { tenant }).await?,
                    |l, _| render::workspaces_table(l),
                ),
                WorkspaceCommand::Show { id, tenant } => p.show(
                    &client
                        .get_workspace(&id, &WorkspaceQuery { tenant })
                        .await?,
                    |w, _| render::workspace(w),
                ),
                WorkspaceCommand::Delete { id, tenant } => p.show(
                    &client
                        .delete_workspace(&id, &WorkspaceQuery { tenant })
                        .await?,
                    |w, _| render::workspace(w),
                ),
            }
        }
        Command::Whoami => p.show(&client.whoami().await?, |w, _| render::whoami(w)),
        Command::Simulate(a) => simulate_command(a, client, p).await,
        Command::Bench(b) => {
            let plan = bench_plan(b);
            let report =
                crate::bench::run(client, token, &plan, &mut |line| eprintln!("bench: {line}"))
                    .await
                    .map_err(|e| match e {
                        crate::bench::BenchError::Client(c) => CliError::Client(c),
                        other => CliError::Bench(other.to_string()),
                    })?;
            p.show(&report, |r, _| crate::bench::render(r))?;
            match report.burst.as_ref().and_then(|b| b.shortfall()) {
                Some(why) => Err(CliError::Bench(why)),
                None => Ok(()),
            }
        }
    }
}

/// What `poolctl bench` runs.
pub fn bench_plan(b: crate::args::BenchArgs) -> crate::bench::BenchPlan {
    crate::bench::BenchPlan {
        pool: b.pool,
        image: b.image,
        cycles: b.cycles,
        concurrency: b.concurrency,
        warmup: b.warmup,
        warm: b.warm,
        wait_ms: b.wait_ms,
        via: b.via,
        // `--tier paused` always reports the cold start next to the tiers.
        cold_runs: match (b.baseline, b.tier) {
            (Some(crate::args::Baseline::Cold), _) | (_, Some(crate::args::BenchTier::Paused)) => {
                b.cold_runs
            }
            (None, None) => 0,
        },
        docker_host: b.docker_host,
        cold_prefix: b.cold_prefix,
        replenish: b.replenish,
        fill_timeout: std::time::Duration::from_secs(b.fill_timeout_secs),
        keep_pool: b.keep_pool,
        tiers: b.tier == Some(crate::args::BenchTier::Paused),
        burst: b.burst.map(|n| crate::bench::BurstPlan {
            n: n as usize,
            within: b.within,
            fast: std::time::Duration::from_millis(b.fast_ms),
            expect_fast: b.expect_fast,
        }),
        paused: b.paused,
    }
}

async fn simulate_command(
    a: crate::args::SimulateArgs,
    client: &Client,
    mut p: Printer<'_>,
) -> Result<(), CliError> {
    use warmpool_policy::{History, Trace};
    let current = match &a.pool {
        Some(name) => Some(client.get_pool(name).await?.pool.spec),
        None => None,
    };
    let (history, source) = match (&a.trace, &a.pool) {
        (Some(path), _) => {
            let origin = path.display().to_string();
            let text = if origin == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(path)
            }
            .map_err(|e| CliError::Usage(format!("cannot read {origin}: {e}")))?;
            let trace =
                Trace::parse(&text).map_err(|e| CliError::Usage(format!("{origin}: {e}")))?;
            (History::of_trace(trace), origin)
        }
        (None, Some(name)) => {
            let events = simulate::fetch_history(client, name).await?;
            let history = History::from_events(&events, Some(name))
                .filter(|h| !h.trace.arrivals.is_empty())
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "pool {name} has no allocations in the event log to replay; pass --trace"
                    ))
                })?;
            (history, format!("events of pool {name}"))
        }
        (None, None) => {
            return Err(CliError::Usage(
                "simulate needs a pool or --trace".to_string(),
            ))
        }
    };
    let base = match &current {
        Some(spec) => spec.clone(),
        None => warmpool_proto::PoolSpec::new(
            warmpool_proto::PoolName::new("trace").map_err(|e| CliError::Usage(e.to_string()))?,
            "-",
        ),
    };
    let proposed = simulate::proposed_spec(&base, &a).map_err(CliError::Usage)?;
    // The fleet's limits go with the pool's own history, whose warm-ups they explain.
    let fleet = match (&current, &a.trace) {
        (Some(spec), None) => {
            let nodes = client.nodes().await?;
            let own = client
                .list_containers(&ContainerQuery {
                    pool: Some(spec.name.to_string()),
                    ..ContainerQuery::default()
                })
                .await?;
            Some(simulate::Fleet::new(&nodes, spec, &own))
        }
        _ => None,
    };
    let view = simulate::simulate(
        a.pool.clone(),
        source,
        &history,
        current.as_ref(),
        &proposed,
        fleet.as_ref(),
        &a,
    );
    p.show(&view, |v, _| simulate::render(v))
}

async fn pool(cmd: PoolCommand, client: &Client, mut p: Printer<'_>) -> Result<(), CliError> {
    let read_file = |flags: &crate::args::SpecFlags| -> Result<_, CliError> {
        flags
            .file
            .as_deref()
            .map(spec::read_spec_file)
            .transpose()
            .map_err(CliError::Usage)
    };
    match cmd {
        PoolCommand::Create(c) => {
            let file = read_file(&c.spec)?;
            let spec =
                spec::spec_for_create(c.name.as_ref(), &c.spec, file).map_err(CliError::Usage)?;
            p.show(&client.create_pool(&spec).await?, render::pool_detail)
        }
        PoolCommand::List => p.show(&client.list_pools().await?, |l, _| render::pools_table(l)),
        PoolCommand::Show { name } => p.show(&client.get_pool(&name).await?, render::pool_detail),
        PoolCommand::Update(u) => {
            let file = read_file(&u.spec)?;
            // Read first: `update` never creates, and the flags merge onto what is there.
            // (Not atomic: a change made by someone else in between is overwritten.)
            let current = client.get_pool(&u.name).await?.pool.spec;
            let spec = spec::spec_for_update(
                &u.name,
                current,
                &u.spec,
                file,
                &u.unset_env,
                &u.unset_constraint,
            )
            .map_err(CliError::Usage)?;
            let (view, _created) = client.put_pool(&spec).await?;
            p.show(&view, render::pool_detail)
        }
        PoolCommand::Delete { name } => {
            client.delete_pool(&name).await?;
            p.note(&format!("pool {name} deleted"))
        }
    }
}

/// The body of `poolctl alloc`.
pub fn alloc_request(a: AllocArgs) -> CreateAllocation {
    CreateAllocation {
        pool: a.pool,
        session_id: a.session,
        lease_seconds: a.lease_seconds,
        wait_ms: a.wait_ms,
        idempotency_key: a.idempotency_key,
        tenant: a.tenant,
        env: a.env.into_iter().collect(),
        secrets: a.secrets.into_iter().collect(),
        metadata: a.metadata.into_iter().collect(),
        wait_for: if a.wait_for_workspace {
            Some(warmpool_proto::api::WaitFor::Workspace)
        } else {
            a.wait_for_settings
                .then_some(warmpool_proto::api::WaitFor::Settings)
        },
        workspace: a.workspace,
        asynchronous: a.asynchronous,
        location: (!a.location.is_empty()).then(|| a.location.into_iter().collect()),
        max_lifetime_secs: a.max_lifetime_secs,
    }
}

/// The query of `poolctl allocations`.
pub fn allocation_query(a: &AllocationsArgs) -> AllocationQuery {
    AllocationQuery {
        pool: opt_str(&a.pool),
        session: opt_str(&a.session),
        state: a.state.clone(),
        node: opt_str(&a.node),
        tenant: a.tenant.clone(),
        limit: a.limit.map(|n| n as usize),
        cursor: a.cursor.clone(),
        archived: a.archived.then_some(true),
        since: a.since,
        until: a.until,
    }
}

/// One page: in JSON the whole envelope (so a script can follow `next_cursor`), as a table
/// the rows, then the flag that shows the next page.
fn show_page<P: Serialize, T>(
    p: &mut Printer<'_>,
    page: &P,
    items: &T,
    next: Option<&str>,
    table: impl FnOnce(&T, Style) -> String,
) -> Result<(), CliError> {
    match p.output {
        Output::Json => p.show(page, |_, _| String::new()),
        Output::Table => {
            write!(p.out, "{}", table(items, p.style))?;
            if let Some(c) = next {
                writeln!(p.out, "next page: --cursor {c}")?;
            }
            Ok(())
        }
    }
}

/// The paging and archive part of `poolctl containers`.
pub fn container_page_query(c: &ContainersArgs) -> PageQuery {
    PageQuery {
        limit: c.limit.map(|n| n as usize),
        cursor: c.cursor.clone(),
        tenant: c.tenant.clone(),
        archived: c.archived.then_some(true),
        since: c.since,
        until: c.until,
    }
}

/// The query of `poolctl containers`.
pub fn container_query(c: &ContainersArgs) -> ContainerQuery {
    ContainerQuery {
        pool: opt_str(&c.pool),
        node: opt_str(&c.node),
        state: c.state.map(|s| s.as_str().to_string()),
        session: opt_str(&c.session),
    }
}

/// The query `poolctl events` sends first: the newest `limit` events unless `--after` or
/// `--before` pins a range.
pub fn events_query(e: &EventsArgs) -> EventQuery {
    let kind = (!e.kind.is_empty()).then(|| {
        e.kind
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(",")
    });
    let limit = match (e.limit, e.follow) {
        (Some(n), _) => Some(n),
        (None, true) => Some(FOLLOW_BACKLOG as u64),
        (None, false) => None,
    };
    EventQuery {
        after: e.after,
        before: match (e.after, e.before) {
            (None, None) => Some(NEWEST),
            (_, before) => before,
        },
        limit: limit.map(|n| n as usize),
        pool: opt_str(&e.pool),
        container: opt_str(&e.container),
        session: opt_str(&e.session),
        kind,
        node: opt_str(&e.node),
    }
}

/// The stream query for `--follow`, resuming after the backlog that was printed.
pub fn follow_query(mut q: EventQuery, backlog: &[Event]) -> EventQuery {
    q.after = backlog.last().map(|e| e.seq).or(q.after).or(Some(0));
    q.before = None;
    q.limit = None;
    q
}

async fn events(e: EventsArgs, client: &Client, mut p: Printer<'_>) -> Result<(), CliError> {
    if e.archived {
        let mut query = events_query(&e);
        // Archived events are read oldest first, from --after.
        query.before = None;
        let range = ArchiveRange {
            archived: true,
            since: e.since,
            until: e.until,
        };
        let list = client.archived_events(&query, &range).await?;
        return p.show(&list, |list, style| {
            list.iter()
                .map(|ev| render::event_line(ev, style.wide) + "\n")
                .collect()
        });
    }
    let query = events_query(&e);
    let backlog = client.events(&query).await?;
    if !e.follow {
        return p.show(&backlog, |list, style| {
            list.iter()
                .map(|ev| render::event_line(ev, style.wide) + "\n")
                .collect()
        });
    }
    for ev in &backlog {
        p.event(ev)?;
    }
    let stream = client.event_stream(&follow_query(query, &backlog));
    futures::pin_mut!(stream);
    let ctrl_c = tokio::signal::ctrl_c();
    futures::pin_mut!(ctrl_c);
    loop {
        let item = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            item = futures::StreamExt::next(&mut stream) => item,
        };
        match item {
            None => return Ok(()),
            Some(Ok(ev)) => p.event(&ev)?,
            Some(Err(err)) if err.is_retryable() => {
                eprintln!("warning: event stream: {err}; reconnecting");
            }
            Some(Err(err @ ClientError::Decode { .. })) => {
                eprintln!("warning: skipped an event: {err}");
            }
            Some(Err(err)) => return Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_token_is_found_in_the_first_file_that_holds_one() {
        let dir = tempfile::tempdir().unwrap();
        let (missing, junk, good) = (
            dir.path().join("missing"),
            dir.path().join("junk"),
            dir.path().join("good"),
        );
        std::fs::write(&junk, "not a token\n").unwrap();
        std::fs::write(&good, "wpk_a1b2c3d4e5f6_00\n").unwrap();
        assert_eq!(
            super::found_token(&[missing.clone(), junk.clone(), good]).as_deref(),
            Some("wpk_a1b2c3d4e5f6_00")
        );
        assert_eq!(super::found_token(&[missing, junk]), None);
    }
    use super::*;
    use clap::Parser;
    use std::time::Duration;
    use warmpool_proto::EventKind;

    fn command(args: &[&str]) -> Command {
        Cli::try_parse_from(["poolctl"].iter().chain(args))
            .unwrap()
            .command
    }

    #[test]
    fn alloc_and_list_flags_become_requests() {
        let Command::Alloc(a) = command(&[
            "alloc",
            "demo",
            "--session",
            "s-1",
            "--lease-seconds",
            "30",
            "--wait-ms",
            "2000",
            "--idempotency-key",
            "k-1",
        ]) else {
            panic!()
        };
        let req = alloc_request(a);
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            serde_json::json!({
                "pool": "demo", "session_id": "s-1", "lease_seconds": 30, "wait_ms": 2000,
                "idempotency_key": "k-1"
            })
        );
        let Command::Alloc(a) = command(&["alloc", "demo"]) else {
            panic!()
        };
        assert_eq!(
            serde_json::to_string(&alloc_request(a)).unwrap(),
            r#"{"pool":"demo"}"#
        );

        let Command::Allocations(a) =
            command(&["allocations", "--pool", "demo", "--state", "active"])
        else {
            panic!()
        };
        let q = allocation_query(&a);
        assert_eq!(
            (q.pool.as_deref(), q.session, q.state.as_deref()),
            (Some("demo"), None, Some("active"))
        );

        let Command::Containers(c) = command(&[
            "containers",
            "--node",
            "n1",
            "--state",
            "warm",
            "--session",
            "s-1",
        ]) else {
            panic!()
        };
        assert_eq!(
            container_query(&c),
            ContainerQuery {
                pool: None,
                node: Some("n1".into()),
                state: Some("warm".into()),
                session: Some("s-1".into()),
            }
        );
    }

    #[test]
    fn paging_and_archive_flags_reach_the_query() {
        let Command::Allocations(a) = command(&[
            "allocations",
            "--archived",
            "--since",
            "2026-01-01T00:00:00Z",
            "--until",
            "2026-01-02T00:00:00Z",
            "--limit",
            "5",
            "--node",
            "n1",
        ]) else {
            panic!()
        };
        let q = allocation_query(&a);
        assert_eq!(q.archived, Some(true));
        assert_eq!(q.limit, Some(5));
        assert_eq!(q.node.as_deref(), Some("n1"));
        assert_eq!(
            q.since.map(|t| t.to_string()).as_deref(),
            Some("2026-01-01T00:00:00.000Z")
        );
        assert!(q.until > q.since);
        // --since needs --archived; a page of 0 is refused.
        for bad in [
            &["allocations", "--since", "1h"][..],
            &["containers", "--limit", "0"],
            &["events", "--archived", "--follow"],
            &["events", "--archived", "--since", "yesterday"],
        ] {
            assert!(
                Cli::try_parse_from(["poolctl"].iter().chain(bad)).is_err(),
                "{bad:?}"
            );
        }
        let Command::Containers(c) = command(&[
            "containers",
            "--archived",
            "--since",
            "2026-01-01T00:00:00Z",
            "--pool",
            "demo",
        ]) else {
            panic!()
        };
        let page = container_page_query(&c);
        assert_eq!(page.archived, Some(true));
        assert_eq!(
            page.since.map(|t| t.to_string()).as_deref(),
            Some("2026-01-01T00:00:00.000Z")
        );
        assert_eq!(page.until, None);
        assert_eq!(container_query(&c).pool.as_deref(), Some("demo"));
        assert!(Cli::try_parse_from(["poolctl", "containers", "--until", "1h"]).is_err());
        let e = events_args(&["--archived", "--since", "2h"]);
        let ago = Timestamp::now().as_millis() - e.since.unwrap().as_millis();
        assert!((7_190_000..=7_210_000).contains(&ago), "{ago}");
    }

    fn events_args(args: &[&str]) -> EventsArgs {
        let cli = Cli::try_parse_from(["poolctl", "events"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Events(e) => e,
            _ => unreachable!(),
        }
    }

    #[test]
    fn events_without_a_range_asks_for_the_newest() {
        let q = events_query(&events_args(&[
            "--pool",
            "demo",
            "--kind",
            "pool_created,node_down",
        ]));
        assert_eq!(q.before, Some(NEWEST));
        assert_eq!(q.after, None);
        assert_eq!(q.limit, None, "the server's default");
        assert_eq!(q.pool.as_deref(), Some("demo"));
        assert_eq!(q.kind.as_deref(), Some("pool_created,node_down"));

        let q = events_query(&events_args(&["--after", "41", "--limit", "5"]));
        assert_eq!((q.after, q.before, q.limit), (Some(41), None, Some(5)));
        let q = events_query(&events_args(&["--before", "9"]));
        assert_eq!((q.after, q.before), (None, Some(9)));
    }

    #[test]
    fn follow_resumes_after_the_backlog() {
        let q = events_query(&events_args(&["--follow"]));
        assert_eq!((q.before, q.limit), (Some(NEWEST), Some(FOLLOW_BACKLOG)));
        let ev = |seq| Event {
            seq,
            log_index: seq,
            at: Timestamp(0),
            kind: EventKind::PoolCreated,
            pool: None,
            container: None,
            node: None,
            session: None,
            allocation: None,
            reason: None,
            detail: None,
        };
        let s = follow_query(q.clone(), &[ev(7), ev(9)]);
        assert_eq!((s.after, s.before, s.limit), (Some(9), None, None));
        assert_eq!(
            follow_query(q, &[]).after,
            Some(0),
            "nothing yet: from the start"
        );
        let q = events_query(&events_args(&["--follow", "--after", "30"]));
        assert_eq!(follow_query(q, &[]).after, Some(30));
    }

    #[test]
    fn error_messages_and_exit_codes() {
        let unreachable = CliError::Client(ClientError::Unreachable {
            attempts: vec![("http://127.0.0.1:7070".into(), "connection refused".into())],
        });
        assert_eq!(
            unreachable.render(),
            "error: cannot reach the control plane at http://127.0.0.1:7070 (connection refused); is it running? set POOLCTL_URL"
        );
        assert_eq!(unreachable.exit_code(), 1);

        let api = |status, code: &str, retry| {
            CliError::Client(ClientError::Api {
                status,
                code: serde_json::from_value(serde_json::Value::String(code.into())).unwrap(),
                message: "m".into(),
                retry_after: retry,
            })
        };
        let nf = CliError::Client(ClientError::Api {
            status: 404,
            code: warmpool_proto::api::ErrorCode::NotFound,
            message: "no pool named \"x\"".into(),
            retry_after: None,
        });
        assert_eq!(nf.render(), "error: not_found: no pool named \"x\"");
        assert_eq!(nf.exit_code(), 1);
        assert_eq!(
            api(401, "unauthorized", None).render(),
            "error: unauthorized: m (set the API token with --token, POOLCTL_TOKEN or POOLCTL_TOKEN_FILE)"
        );
        assert_eq!(
            api(403, "forbidden", None).render(),
            "error: forbidden: m (the token's role does not allow this)"
        );
        assert_eq!(
            api(503, "no_capacity", Some(Duration::from_secs(2))).render(),
            "error: no_capacity: m (retry after 2s)"
        );

        let usage = CliError::Usage("pool create needs --image (or --file)".into());
        assert_eq!(
            usage.render(),
            "error: pool create needs --image (or --file)"
        );
        assert_eq!(usage.exit_code(), 2);
        let bad_url = CliError::Client(ClientError::Config(
            "invalid control-plane URL \"x:y:z\"".into(),
        ));
        assert_eq!(bad_url.exit_code(), 2);
        let timeout = CliError::Client(ClientError::Timeout {
            url: "http://cp/v1/status".into(),
            after: Some(Duration::from_secs(10)),
        });
        assert_eq!(
            timeout.render(),
            "error: request to http://cp/v1/status timed out after 10s"
        );
        let pipe = CliError::Output(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!((pipe.exit_code(), pipe.render().as_str()), (0, ""));
    }
}
