//! `/v1/cluster`: Raft state and membership.

use axum::extract::{Path, State};
use axum::Json;
use openraft::ServerState;
use warmpool_proto::api::{AddMember, ClusterView, ErrorBody, MemberView};
use warmpool_proto::MemberId;

use super::error::ApiError;
use super::extract::ApiJson;
use super::AppState;

fn current(app: &AppState) -> ClusterView {
    let m = app.cluster.raft().metrics().borrow().clone();
    let voters = app.cluster.voters();
    let members = app
        .cluster
        .members()
        .into_iter()
        .map(|(id, node)| MemberView {
            id,
            api_addr: node.addr,
            role: if voters.contains(&id) {
                "voter"
            } else {
                "learner"
            }
            .into(),
        })
        .collect();
    let state = match m.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    ClusterView {
        member: app.cluster.id(),
        leader: m.current_leader,
        term: m.current_term,
        state: state.into(),
        members,
        last_log_index: m.last_log_index,
        commit_index: Some(app.cluster.commit_index()).filter(|i| *i > 0),
        applied_index: m.last_applied.map(|l| l.index),
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        version: Some(env!("CARGO_PKG_VERSION").to_string()),
        build: Some(warmpool_proto::api::BuildProfile::current()),
    }
}

/// Raft state as the answering member sees it.
#[utoipa::path(
    get, path = "/v1/cluster", tag = "cluster",
    responses((status = 200, description = "Raft state and members", body = ClusterView))
)]
pub async fn view(State(app): State<AppState>) -> Json<ClusterView> {
    Json(current(&app))
}

/// Adds a member: as a learner until it has replicated the log, then as a voter. The new
/// member must be running (started with `--join`, or reachable over NATS under its id): one
/// that does not replicate within 20 s stays a learner and the answer is 409, so a mistyped
/// id never costs the cluster its quorum.
#[utoipa::path(
    post, path = "/v1/cluster/members", tag = "cluster", request_body = AddMember,
    responses(
        (status = 200, description = "Added (or already a voter)", body = ClusterView),
        (status = 400, description = "Malformed request (`bad_request`)", body = ErrorBody),
        (status = 409, description = "The membership change was refused, or the member did not replicate the log in time and was left a learner (`conflict`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 503, description = "No quorum, or the new member did not catch up in time (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn add(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<AddMember>,
) -> Result<Json<ClusterView>, ApiError> {
    if req.api_addr.trim().is_empty() {
        return Err(ApiError::BadRequest("api_addr must not be empty".into()));
    }
    app.cluster.add_member(req.id, req.api_addr).await?;
    Ok(Json(current(&app)))
}

/// Removes a member (never the last voter).
#[utoipa::path(
    delete, path = "/v1/cluster/members/{id}", tag = "cluster",
    params(("id" = u64, Path, description = "Raft id")),
    responses(
        (status = 200, description = "Removed", body = ClusterView),
        (status = 404, description = "Not a member id (`not_found`)", body = ErrorBody),
        (status = 409, description = "Not a member, or the last voter (`conflict`)", body = ErrorBody),
        (status = 503, description = "No quorum (`no_quorum`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn remove(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ClusterView>, ApiError> {
    let id: MemberId = id
        .parse()
        .map_err(|_| ApiError::NotFound(format!("no member {id:?}")))?;
    app.cluster.remove_member(id).await?;
    Ok(Json(current(&app)))
}
