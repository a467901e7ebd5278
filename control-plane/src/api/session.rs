//! `/v1/allocations/{id}/{logs,exec,files}`: using an allocated container.
//!
//! Only the allocation's tenant (and admins) may: another tenant's allocation answers 404 as a
//! missing one does, and these routes need a `user` key even to read (a log or a file may hold
//! what a viewer should not see). An ended allocation answers 410 `ended`. Any member serves
//! them: the request goes straight to the agent of the container's node over NATS, no Raft
//! write and no leader involved.
//!
//! Formats, and why:
//!
//! - logs: Server-Sent Events (`log` events with `{stream, line}`, a `dropped` event with the
//!   count when the rate cap left lines out, `end` when the container's output ended), the
//!   format browsers' `EventSource` reads and the one the event stream already uses;
//! - exec: `?stream=true` answers newline-delimited JSON ([`ExecEvent`] per line, the last one
//!   the exit): a POST cannot be read by `EventSource` anyway, and NDJSON is one `for line in`
//!   loop in any language and readable with `curl -N`. Without it the answer is one JSON object
//!   ([`ExecResult`]) once the process ends;
//! - files: the bytes themselves (`application/octet-stream`, or `application/x-tar` with
//!   `archive=true`), streamed both ways in chunks under NATS's payload limit.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message as WsMessage, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};
use warmpool_proto::api::ErrorBody;
use warmpool_proto::records::AllocationState;
use warmpool_proto::session::{
    ExecEvent, ExecExit, ExecRequest, ExecResult, ExecSpec, FileWritten, LineSplitter, LogLine,
    LogsDropped, OutputStream, SessionRequest, StreamEnd, Utf8Carry, DEFAULT_EXEC_TIMEOUT_SECS,
    MAX_CHUNK_BYTES, MAX_EXEC_OUTPUT_BYTES, MAX_FILE_BYTES,
};
use warmpool_proto::{Allocation, AllocationId};

use super::allocations::{parse_id, visible};
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::AppState;
use crate::auth::Scope;
use crate::session::{RemoteStream, SessionError};

/// The allocation `id` if the caller may use it and it is active.
async fn target(app: &AppState, scope: &Scope, id: &str) -> Result<Allocation, ApiError> {
    let id: AllocationId = parse_id(id)?;
    let a = visible(app, scope, &HeaderMap::new(), id).await?;
    if a.state != AllocationState::Active {
        return Err(ApiError::Ended(format!(
            "allocation {id} has ended ({}); its container is gone",
            a.release_reason
                .map(|r| format!("{r:?}").to_lowercase())
                .unwrap_or_else(|| "released".into())
        )));
    }
    Ok(a)
}

fn count(route: &'static str, outcome: &'static str) {
    metrics::counter!("warmpool_session_requests_total", "route" => route, "outcome" => outcome)
        .increment(1);
}

/// Most lines `tail` may ask for.
const MAX_TAIL: u64 = 100_000;

/// `GET /v1/allocations/{id}/logs` query.
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Keep streaming new lines until the container stops (default false: what is there now,
    /// then `end`).
    follow: Option<bool>,
    /// Only the last N lines before now (default: all Docker kept, at most 2 × 10 MB).
    #[param(maximum = 100_000)]
    tail: Option<u64>,
}

/// The container's stdout and stderr as Server-Sent Events: `log` (`{stream, line}`),
/// `dropped` (`{dropped}`: lines the rate cap of 1,000 a second left out), and `end` when the
/// output ends (the container stopped, or everything was sent without `follow`).
#[utoipa::path(
    get, path = "/v1/allocations/{id}/logs", tag = "session",
    params(("id" = AllocationId, Path, description = "Allocation id"), LogsQuery),
    responses(
        (status = 200, description = "text/event-stream of `log` events (data: LogLine), `dropped` events (data: LogsDropped) and a final `end`", content_type = "text/event-stream", body = LogLine),
        (status = 101, description = "With `Upgrade: websocket`: the same items as JSON text messages (`{\"type\":\"log\",\"stream\":...,\"line\":...}`, `dropped`, `end`); the key may be given as `access_token` in the query"),
        (status = 400, description = "Malformed query (`bad_request`)", body = ErrorBody),
        (status = 404, description = "No such allocation, or another tenant's (`not_found`)", body = ErrorBody),
        (status = 410, description = "The allocation has ended (`ended`)", body = ErrorBody),
        (status = 502, description = "The container's agent did not answer (`agent_unavailable`)", body = ErrorBody),
    )
)]
pub async fn logs(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    if q.tail.is_some_and(|t| t > MAX_TAIL) {
        return Err(ApiError::BadRequest(format!(
            "tail must be at most {MAX_TAIL}"
        )));
    }
    let tail = q.tail;
    let a = target(&app, &scope, &id).await?;
    let container = a.container_id;
    let follow = q.follow.unwrap_or(false);
    let (mut stream, _) =
        RemoteStream::open(&app.sessions, &a.node, |stream| SessionRequest::OpenLogs {
            stream,
            container,
            tail,
            follow,
        })
        .await
        .inspect_err(|_| count("logs", "refused"))?;
    count("logs", "opened");
    let (tx, mut rx) = mpsc::channel::<LogMessage>(16);
    let stop = app.shutdown.clone();
    tokio::spawn(async move {
        let mut lines: HashMap<OutputStream, LineSplitter> = HashMap::new();
        loop {
            let chunk = tokio::select! {
                c = stream.next() => c,
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
            };
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx
                        .send(LogMessage::End {
                            reason: format!("{e}"),
                        })
                        .await;
                    return;
                }
            };
            if chunk.dropped > 0 {
                let msg = LogMessage::Dropped {
                    dropped: chunk.dropped,
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            for item in chunk.items {
                let split = lines.entry(item.stream).or_default();
                for line in split.push(&item.data) {
                    let msg = LogMessage::Log {
                        stream: item.stream,
                        line,
                    };
                    // Waits while the client reads slowly: back-pressure up to the agent.
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
            }
            if let Some(end) = chunk.end {
                for (s, mut split) in lines.drain() {
                    if let Some(line) = split.finish() {
                        let _ = tx.send(LogMessage::Log { stream: s, line }).await;
                    }
                }
                let reason = match end {
                    StreamEnd::Failed { message, .. } => message,
                    _ => "the container's output ended".into(),
                };
                let _ = tx.send(LogMessage::End { reason }).await;
                return;
            }
        }
    });
    // A browser's WebSocket: one JSON text message per item (`type` says which), closed after
    // `end`; the key may come as `?access_token=` since a browser cannot send headers.
    if let Ok(ws) = ws {
        return Ok(ws.on_upgrade(move |mut socket| async move {
            loop {
                tokio::select! {
                    msg = rx.recv() => {
                        let Some(msg) = msg else { break };
                        let end = matches!(msg, LogMessage::End { .. });
                        let text = serde_json::to_string(&msg).unwrap_or_default();
                        if socket.send(WsMessage::Text(text.into())).await.is_err() || end {
                            break;
                        }
                    }
                    // Whatever the client sends is ignored; its close (or loss) ends the stream.
                    incoming = socket.recv() => match incoming {
                        Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break,
                        Some(Ok(_)) => {}
                    },
                }
            }
            let _ = socket.send(WsMessage::Close(None)).await;
        }));
    }
    let events = ReceiverStream::new(rx).map(|msg| {
        Ok::<_, Infallible>(match msg {
            LogMessage::Log { stream, line } => json_event("log", &LogLine { stream, line }),
            LogMessage::Dropped { dropped } => json_event("dropped", &LogsDropped { dropped }),
            LogMessage::End { reason } => end_event(&reason),
        })
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// One item of a log stream, as a WebSocket text message (`{"type":"log",...}`); SSE sends
/// the same as its events' names and data.
#[derive(serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum LogMessage {
    /// A line the container printed.
    Log {
        /// stdout or stderr.
        stream: OutputStream,
        /// The line, without its newline.
        line: String,
    },
    /// Lines left out over the rate cap since the last item.
    Dropped {
        /// How many.
        dropped: u64,
    },
    /// The stream ended, and why.
    End {
        /// Why.
        reason: String,
    },
}

fn json_event<T: serde::Serialize>(name: &str, v: &T) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(v).unwrap_or_default())
}

fn end_event(why: &str) -> Event {
    json_event("end", &serde_json::json!({ "reason": why }))
}

/// `POST /v1/allocations/{id}/exec` query.
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExecQuery {
    /// Stream the output as newline-delimited JSON (`application/x-ndjson`, one ExecEvent per
    /// line, the exit last) instead of one answer at the end.
    stream: Option<bool>,
}

/// Runs a command in the allocation's container (the settings given at claim in its
/// environment, plus `env`), killed at `timeout_secs`.
#[utoipa::path(
    post, path = "/v1/allocations/{id}/exec", tag = "session", request_body = ExecRequest,
    params(("id" = AllocationId, Path, description = "Allocation id"), ExecQuery),
    responses(
        (status = 200, description = "The output and exit code; with `stream=true`, NDJSON lines of ExecEvent", body = ExecResult),
        (status = 400, description = "Malformed body or command (`bad_request`)", body = ErrorBody),
        (status = 404, description = "No such allocation, or another tenant's (`not_found`)", body = ErrorBody),
        (status = 410, description = "The allocation has ended (`ended`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 502, description = "The agent did not answer, or Docker could not start the command (`agent_unavailable`)", body = ErrorBody),
    )
)]
pub async fn exec(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ExecQuery>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> Result<Response, ApiError> {
    req.validate().map_err(ApiError::BadRequest)?;
    let a = target(&app, &scope, &id).await?;
    let container = a.container_id;
    let spec = ExecSpec {
        command: req.command,
        env: req.env,
        working_dir: req.working_dir,
        timeout_ms: req.timeout_secs.unwrap_or(DEFAULT_EXEC_TIMEOUT_SECS) * 1000,
    };
    let (mut stream, _) =
        RemoteStream::open(&app.sessions, &a.node, |stream| SessionRequest::OpenExec {
            stream,
            container,
            exec: spec,
        })
        .await
        .inspect_err(|_| count("exec", "refused"))?;
    count("exec", "opened");
    if q.stream.unwrap_or(false) {
        return Ok(exec_streaming(stream, app.shutdown.clone()));
    }
    let mut result = ExecResult::default();
    let (mut out, mut err) = (Utf8Carry::default(), Utf8Carry::default());
    let mut sizes = (0usize, 0usize);
    loop {
        let chunk = stream.next().await?;
        for item in chunk.items {
            let (text, carry, size) = match item.stream {
                OutputStream::Stdout => (&mut result.stdout, &mut out, &mut sizes.0),
                OutputStream::Stderr => (&mut result.stderr, &mut err, &mut sizes.1),
            };
            let room = MAX_EXEC_OUTPUT_BYTES.saturating_sub(*size);
            if item.data.len() > room {
                result.truncated = true;
            }
            let take = &item.data[..item.data.len().min(room)];
            *size += take.len();
            text.push_str(&carry.push(take));
        }
        match chunk.end {
            None => continue,
            Some(StreamEnd::Exit(ExecExit {
                exit_code,
                timed_out,
            })) => {
                result.stdout.push_str(&out.finish());
                result.stderr.push_str(&err.finish());
                result.exit_code = exit_code;
                result.timed_out = timed_out;
                return Ok(Json(result).into_response());
            }
            Some(StreamEnd::Failed { kind, message }) => {
                return Err(SessionError::Refused { kind, message }.into())
            }
            Some(StreamEnd::Logs) => {
                return Err(ApiError::AgentUnavailable(
                    "unexpected end of an exec".into(),
                ))
            }
        }
    }
}

fn exec_streaming(mut stream: RemoteStream, stop: tokio_util::sync::CancellationToken) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    tokio::spawn(async move {
        let mut carries: HashMap<OutputStream, Utf8Carry> = HashMap::new();
        let line = |ev: &ExecEvent| {
            let mut v = serde_json::to_vec(ev).unwrap_or_default();
            v.push(b'\n');
            Ok(Bytes::from(v))
        };
        loop {
            let chunk = tokio::select! {
                c = stream.next() => c,
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
            };
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx
                        .send(line(&ExecEvent::Error {
                            message: e.to_string(),
                        }))
                        .await;
                    return;
                }
            };
            for item in chunk.items {
                let data = carries.entry(item.stream).or_default().push(&item.data);
                if data.is_empty() {
                    continue;
                }
                let ev = ExecEvent::Output {
                    stream: item.stream,
                    data,
                };
                if tx.send(line(&ev)).await.is_err() {
                    return;
                }
            }
            if let Some(end) = chunk.end {
                for (s, mut c) in carries.drain() {
                    let data = c.finish();
                    if !data.is_empty() {
                        let _ = tx.send(line(&ExecEvent::Output { stream: s, data })).await;
                    }
                }
                let last = match end {
                    StreamEnd::Exit(exit) => ExecEvent::Exit(exit),
                    StreamEnd::Failed { message, .. } => ExecEvent::Error { message },
                    StreamEnd::Logs => ExecEvent::Error {
                        message: "unexpected end of an exec".into(),
                    },
                };
                let _ = tx.send(line(&last)).await;
                return;
            }
        }
    });
    let mut resp = Body::from_stream(ReceiverStream::new(rx)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}

/// `/v1/allocations/{id}/files` query.
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FilesQuery {
    /// Absolute path in the container.
    path: String,
    /// A tar archive: download the path (a directory or file) as one; upload one to unpack
    /// into the path (a directory, made if missing). `Content-Type: application/x-tar` on an
    /// upload means the same.
    archive: Option<bool>,
}

/// Downloads a file from the container (or, with `archive=true`, a tar archive of a directory
/// or file), streamed. At most 64 MiB for a single file (413 before any byte); an archive
/// larger than that is cut off (the answer ends early and is incomplete).
#[utoipa::path(
    get, path = "/v1/allocations/{id}/files", tag = "session",
    params(("id" = AllocationId, Path, description = "Allocation id"), FilesQuery),
    responses(
        (status = 200, description = "The bytes (application/octet-stream), or a tar archive (application/x-tar)", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "Bad path, or a directory without archive=true (`bad_request`)", body = ErrorBody),
        (status = 404, description = "No such allocation or file (`not_found`)", body = ErrorBody),
        (status = 410, description = "The allocation has ended (`ended`)", body = ErrorBody),
        (status = 413, description = "The file is over 64 MiB (`payload_too_large`)", body = ErrorBody),
        (status = 502, description = "The agent did not answer, or the image lacks sh, cat or tar (`agent_unavailable`)", body = ErrorBody),
    )
)]
pub async fn download(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FilesQuery>,
) -> Result<Response, ApiError> {
    warmpool_proto::session::check_path(&q.path).map_err(ApiError::BadRequest)?;
    let a = target(&app, &scope, &id).await?;
    let container = a.container_id;
    let archive = q.archive.unwrap_or(false);
    let path = q.path.clone();
    let (mut stream, size) =
        RemoteStream::open(&app.sessions, &a.node, |stream| SessionRequest::OpenRead {
            stream,
            container,
            path,
            archive,
            max_bytes: MAX_FILE_BYTES,
        })
        .await
        .inspect_err(|_| count("files_get", "refused"))?;
    count("files_get", "opened");
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let shown = q.path.clone();
    tokio::spawn(async move {
        let mut sent: u64 = 0;
        let mut stderr = Vec::new();
        loop {
            let chunk = tokio::select! {
                c = stream.next() => c,
                _ = tx.closed() => return,
            };
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            for item in chunk.items {
                match item.stream {
                    OutputStream::Stdout => {
                        sent += item.data.len() as u64;
                        if sent > MAX_FILE_BYTES {
                            warn!(path = %shown, "download cut at the size limit");
                            let _ = tx
                                .send(Err(std::io::Error::other("over the size limit")))
                                .await;
                            return;
                        }
                        if tx.send(Ok(Bytes::from(item.data))).await.is_err() {
                            return;
                        }
                    }
                    OutputStream::Stderr => {
                        if stderr.len() < 4096 {
                            stderr.extend_from_slice(&item.data)
                        }
                    }
                }
            }
            match chunk.end {
                None => {}
                Some(StreamEnd::Exit(ExecExit {
                    exit_code: Some(0), ..
                })) => return,
                Some(other) => {
                    // The body is cut short: the client sees an incomplete answer.
                    debug!(path = %shown, end = ?other, stderr = %String::from_utf8_lossy(&stderr), "download failed");
                    let _ = tx
                        .send(Err(std::io::Error::other("reading the file failed")))
                        .await;
                    return;
                }
            }
        }
    });
    let mut resp = Body::from_stream(ReceiverStream::new(rx)).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if archive {
            "application/x-tar"
        } else {
            "application/octet-stream"
        }),
    );
    if let Some(n) = size {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(resp)
}

/// Uploads the request body to a file in the container (made with its directories; replaced
/// as a whole only once every byte arrived), or with `archive=true` (or `Content-Type:
/// application/x-tar`) unpacks a tar archive into a directory. At most 64 MiB.
#[utoipa::path(
    put, path = "/v1/allocations/{id}/files", tag = "session",
    params(("id" = AllocationId, Path, description = "Allocation id"), FilesQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's bytes, or a tar archive"),
    responses(
        (status = 201, description = "Written", body = FileWritten),
        (status = 400, description = "Bad path (`bad_request`)", body = ErrorBody),
        (status = 404, description = "No such allocation, or another tenant's (`not_found`)", body = ErrorBody),
        (status = 409, description = "The container refused the write (read-only path, not a tar archive, ...) (`conflict`)", body = ErrorBody),
        (status = 410, description = "The allocation has ended (`ended`)", body = ErrorBody),
        (status = 413, description = "Body over 64 MiB (`payload_too_large`)", body = ErrorBody),
        (status = 502, description = "The agent did not answer, or the image lacks sh, cat or tar (`agent_unavailable`)", body = ErrorBody),
    )
)]
pub async fn upload(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FilesQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    warmpool_proto::session::check_path(&q.path).map_err(ApiError::BadRequest)?;
    let too_large =
        || ApiError::PayloadTooLarge(format!("files are at most {MAX_FILE_BYTES} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_FILE_BYTES) {
        return Err(too_large());
    }
    let archive = q.archive.unwrap_or(false)
        || headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().starts_with("application/x-tar"));
    let a = target(&app, &scope, &id).await?;
    let container = a.container_id;
    let path = q.path.clone();
    let (mut stream, _) =
        RemoteStream::open(&app.sessions, &a.node, |stream| SessionRequest::OpenWrite {
            stream,
            container,
            path,
            archive,
        })
        .await
        .inspect_err(|_| count("files_put", "refused"))?;
    let mut frames = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_CHUNK_BYTES);
    let mut total: u64 = 0;
    while let Some(frame) = frames.next().await {
        let frame =
            frame.map_err(|e| ApiError::BadRequest(format!("cannot read the body: {e}")))?;
        total += frame.len() as u64;
        if total > MAX_FILE_BYTES {
            // Dropping the stream kills the writer; the file is left as it was.
            count("files_put", "too_large");
            return Err(too_large());
        }
        let mut rest = &frame[..];
        while !rest.is_empty() {
            let take = rest.len().min(MAX_CHUNK_BYTES - buf.len());
            buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if buf.len() == MAX_CHUNK_BYTES {
                stream.write(std::mem::take(&mut buf), false).await?;
            }
        }
    }
    stream.write(buf, true).await?;
    let mut stderr = Vec::new();
    loop {
        let chunk = stream.next().await?;
        for item in chunk.items {
            if item.stream == OutputStream::Stderr && stderr.len() < 4096 {
                stderr.extend_from_slice(&item.data);
            }
        }
        match chunk.end {
            None => continue,
            Some(StreamEnd::Exit(ExecExit {
                exit_code: Some(0), ..
            })) => break,
            Some(StreamEnd::Exit(exit)) => {
                count("files_put", "failed");
                return Err(ApiError::Conflict(format!(
                    "the container refused the write of {} (exit {:?}): {}",
                    q.path,
                    exit.exit_code,
                    String::from_utf8_lossy(&stderr).trim()
                )));
            }
            Some(StreamEnd::Failed { kind, message }) => {
                return Err(SessionError::Refused { kind, message }.into())
            }
            Some(StreamEnd::Logs) => {
                return Err(ApiError::AgentUnavailable(
                    "unexpected end of a write".into(),
                ))
            }
        }
    }
    count("files_put", "written");
    Ok((
        StatusCode::CREATED,
        Json(FileWritten {
            path: q.path,
            bytes: total,
            archive,
        }),
    )
        .into_response())
}
