//! `/v1/cluster`: Raft state and membership.

use axum::extract::{Path, State};
use axum::Json;
use openraft::ServerState;
use warmpool_proto::api::{AddMember, ClusterView, MemberView};
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
        applied_index: m.last_applied.map(|l| l.index),
        snapshot_index: m.snapshot.map(|l| l.index),
    }
}

pub async fn view(State(app): State<AppState>) -> Json<ClusterView> {
    Json(current(&app))
}

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
