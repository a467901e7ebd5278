//! The member's side of session streams: requests to the agent of a container's node on
//! `pool.v1.node.<node>.session`, and [`RemoteStream`], a stream opened there and pulled from
//! here (protocol and the reasons for pulling: [`warmpool_proto::session`]).
//!
//! Any member serves logs, exec and files of any allocation: nothing here needs the leader or
//! a Raft write. A stream dropped before its end (the HTTP client went away) is closed on the
//! agent by a `Close` sent from [`Drop`]; one whose member died is closed by the agent's idle
//! reaper.

use std::time::Duration;

use bytes::Bytes;
use tracing::debug;
use uuid::Uuid;
use warmpool_proto::session::{
    Chunk, SessionErrorKind, SessionReply, SessionRequest, StreamId, PULL_WAIT_MS,
};
use warmpool_proto::{subjects, NodeId};

use crate::agents::AgentError;

/// Time an agent has to answer a request that does not wait (open, write, close).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(35);
/// A pull waits up to [`PULL_WAIT_MS`] on the agent; this much more for the round trip.
const PULL_MARGIN: Duration = Duration::from_secs(5);

/// HELP texts of the session metrics (call once the recorder is installed).
pub fn describe_metrics() {
    metrics::describe_counter!(
        "warmpool_session_requests_total",
        "Logs, exec and files requests by route (logs, exec, files_get, files_put) and outcome (opened, refused, written, failed, too_large)"
    );
    metrics::describe_counter!(
        "warmpool_settings_deliveries_total",
        "Env and secrets given at claim delivered to containers, by outcome (applied, failed)"
    );
}

/// Why a session request failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The agent could not be asked, or did not answer.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The agent answered with a refusal.
    #[error("{message}")]
    Refused {
        /// Why.
        kind: SessionErrorKind,
        /// For a person.
        message: String,
    },
    /// The agent answered something that does not fit the request.
    #[error("unexpected answer from the agent: {0}")]
    Unexpected(String),
}

/// Sends session requests to agents. Cheap to clone: one NATS client underneath.
#[derive(Clone)]
pub struct SessionClient {
    client: async_nats::Client,
}

impl SessionClient {
    /// Requests over `client`.
    pub fn new(client: async_nats::Client) -> Self {
        SessionClient { client }
    }

    /// Sends `req` to `node`'s agent and waits at most `timeout` for its answer. An error
    /// answer comes back as [`SessionError::Refused`].
    pub async fn request(
        &self,
        node: &NodeId,
        req: &SessionRequest,
        timeout: Duration,
    ) -> Result<SessionReply, SessionError> {
        let payload = serde_json::to_vec(req).map_err(|e| AgentError::Nats(e.to_string()))?;
        let request = async_nats::Request::new()
            .payload(Bytes::from(payload))
            .timeout(Some(timeout));
        let msg = match self
            .client
            .send_request(subjects::session(node), request)
            .await
        {
            Ok(m) => m,
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                return Err(AgentError::NoAgent(node.clone()).into())
            }
            Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
                return Err(AgentError::Timeout(node.clone(), timeout).into())
            }
            Err(e) => return Err(AgentError::Nats(e.to_string()).into()),
        };
        match serde_json::from_slice::<SessionReply>(&msg.payload) {
            Ok(SessionReply::Error { kind, message }) => {
                Err(SessionError::Refused { kind, message })
            }
            Ok(reply) => Ok(reply),
            Err(e) => {
                debug!(error = %e, "session reply rejected");
                Err(AgentError::Malformed(node.clone(), e.to_string()).into())
            }
        }
    }
}

/// A stream open on an agent, pulled from here.
pub struct RemoteStream {
    client: SessionClient,
    node: NodeId,
    id: StreamId,
    ended: bool,
}

impl RemoteStream {
    /// Opens a stream: `open` builds the request from the new stream's id. Answers the stream
    /// and the size the agent reported (a file read's).
    pub async fn open(
        client: &SessionClient,
        node: &NodeId,
        open: impl FnOnce(StreamId) -> SessionRequest,
    ) -> Result<(RemoteStream, Option<u64>), SessionError> {
        let id = Uuid::now_v7();
        let req = open(id);
        let mut stream = RemoteStream {
            client: client.clone(),
            node: node.clone(),
            id,
            ended: false,
        };
        match client.request(node, &req, REQUEST_TIMEOUT).await {
            Ok(SessionReply::Opened { size }) => Ok((stream, size)),
            Ok(other) => Err(SessionError::Unexpected(format!("{other:?}"))),
            Err(e) => {
                // Refused: nothing is open. Timed out: it may be; the drop closes it.
                if matches!(e, SessionError::Refused { .. }) {
                    stream.ended = true;
                }
                Err(e)
            }
        }
    }

    /// The next chunk: what the agent has, or the first output within [`PULL_WAIT_MS`] (an
    /// empty chunk otherwise). After a chunk with `end`, the stream is gone.
    pub async fn next(&mut self) -> Result<Chunk, SessionError> {
        let req = SessionRequest::Pull {
            stream: self.id,
            wait_ms: PULL_WAIT_MS,
        };
        let timeout = Duration::from_millis(PULL_WAIT_MS) + PULL_MARGIN;
        match self.client.request(&self.node, &req, timeout).await {
            Ok(SessionReply::Chunk(c)) => {
                if c.end.is_some() {
                    self.ended = true;
                }
                Ok(c)
            }
            Ok(other) => Err(SessionError::Unexpected(format!("{other:?}"))),
            Err(e) => {
                if matches!(e, SessionError::Refused { .. }) {
                    self.ended = true;
                }
                Err(e)
            }
        }
    }

    /// Feeds the stream's process; `eof` closes its input. Answered once the agent wrote it.
    pub async fn write(&mut self, data: Vec<u8>, eof: bool) -> Result<(), SessionError> {
        let req = SessionRequest::Write {
            stream: self.id,
            data,
            eof,
        };
        match self.client.request(&self.node, &req, REQUEST_TIMEOUT).await {
            Ok(SessionReply::Written) => Ok(()),
            Ok(other) => Err(SessionError::Unexpected(format!("{other:?}"))),
            Err(e) => Err(e),
        }
    }
}

impl Drop for RemoteStream {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let (client, node, stream) = (self.client.clone(), self.node.clone(), self.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let req = SessionRequest::Close { stream };
                if let Err(e) = client.request(&node, &req, REQUEST_TIMEOUT).await {
                    debug!(%node, %stream, error = %e, "closing a stream failed; the agent's reaper will");
                }
            });
        }
    }
}
