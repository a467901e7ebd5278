//! Using an allocated container: live logs, exec and files, and the settings given at claim.
//!
//! Two layers live here:
//!
//! - the REST bodies of `/v1/allocations/{id}/{logs,exec,files}` ([`ExecRequest`],
//!   [`ExecResult`], [`ExecEvent`], [`LogLine`], ...);
//! - the protocol between a control-plane member and the agent of the container's node, on
//!   `pool.v1.node.<node>.session` (request/reply, [`SessionRequest`] / [`SessionReply`]).
//!
//! ## Why pull, over request/reply
//!
//! Every exchange is a request from the member and one reply from the agent; the agent never
//! publishes a stream on its own. A stream (a log follow, an exec's output, a download) is
//! opened with one request and then *pulled*: each [`SessionRequest::Pull`] is answered with
//! what the agent has buffered (at most [`MAX_CHUNK_BYTES`] of data, far under NATS's 1 MB
//! payload limit even in base64), or, when nothing is buffered, as soon as something arrives
//! (a long poll of at most [`PULL_WAIT_MS`]). This gives:
//!
//! - back-pressure end to end: the member pulls only when its HTTP client has taken the last
//!   chunk; until then the agent's bounded buffer fills and its reader stops reading Docker (a
//!   process writing to a full exec pipe blocks, a log follow waits in Docker's log file);
//! - no new NATS rights: an agent only answers requests (as for commands), a member only asks;
//! - a lease instead of a goodbye: a stream nobody pulled for [`STREAM_IDLE_MS`] is closed
//!   by the agent, so a member that died leaks nothing.
//!
//! Uploads go the other way with [`SessionRequest::Write`], each answered once the bytes are
//! in the receiving process's stdin: the same back-pressure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::ContainerId;

/// Most bytes of data in one pull's answer or one write (before base64).
pub const MAX_CHUNK_BYTES: usize = 512 * 1024;
/// Longest a pull waits for data when none is buffered.
pub const PULL_WAIT_MS: u64 = 5_000;
/// A stream not pulled (or written) for this long is closed by the agent.
pub const STREAM_IDLE_MS: u64 = 30_000;
/// Longest an exec may run (`timeout_secs`).
pub const MAX_EXEC_TIMEOUT_SECS: u64 = 3_600;
/// `timeout_secs` of an exec that names none.
pub const DEFAULT_EXEC_TIMEOUT_SECS: u64 = 60;
/// Most bytes of each of stdout and stderr a non-streaming exec answers; the rest is cut and
/// `truncated` says so.
pub const MAX_EXEC_OUTPUT_BYTES: usize = 1024 * 1024;
/// Largest upload or download of `/files`.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Where the settings given at claim are written in the container (a tmpfs every container
/// gets, mode 0400 file).
pub const SETTINGS_PATH: &str = "/run/warmpool/env";
/// The tmpfs that holds [`SETTINGS_PATH`].
pub const SETTINGS_DIR: &str = "/run/warmpool";
/// Most env and secret entries together at claim.
pub const MAX_SETTINGS_ENTRIES: usize = 256;
/// Most metadata entries on an allocation.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Longest metadata key or value, and longest env/secret name.
pub const MAX_METADATA_LEN: usize = 256;
/// Longest env or secret value.
pub const MAX_SETTING_VALUE_LEN: usize = 32 * 1024;

/// Which output of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl OutputStream {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// REST bodies
// ---------------------------------------------------------------------------------------------

/// `POST /v1/allocations/{id}/exec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments (no shell unless you name one: `["sh", "-c", "..."]`).
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
    pub command: Vec<String>,
    /// Environment added to the settings given at claim (these win on a clash).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory; the image's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Killed after this long (default 60, at most 3600); the answer then says `timed_out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3600))]
    pub timeout_secs: Option<u64>,
}

impl ExecRequest {
    /// Checks what the agent would refuse anyway, so the caller hears a 400.
    pub fn validate(&self) -> Result<(), String> {
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err("command must name a program".into());
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err("command arguments may not hold NUL".into());
        }
        check_env_names(self.env.keys())?;
        if let Some(t) = self.timeout_secs {
            if t == 0 || t > MAX_EXEC_TIMEOUT_SECS {
                return Err(format!("timeout_secs must be 1..={MAX_EXEC_TIMEOUT_SECS}"));
            }
        }
        if let Some(d) = &self.working_dir {
            if !d.starts_with('/') || d.contains('\0') {
                return Err("working_dir must be an absolute path".into());
            }
        }
        Ok(())
    }
}

/// Environment names must be non-empty, hold no `=` or NUL, and be short.
pub fn check_env_names<'a>(names: impl IntoIterator<Item = &'a String>) -> Result<(), String> {
    for k in names {
        if k.is_empty()
            || k.len() > MAX_METADATA_LEN
            || k.contains('=')
            || k.contains('\0')
            || k.contains('\n')
        {
            return Err(format!(
                "environment name {k:?} must be 1..={MAX_METADATA_LEN} bytes without '=', NUL or newline"
            ));
        }
    }
    Ok(())
}

/// How an exec ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecExit {
    /// The process's exit code; none when it was killed at its timeout or the runtime did not
    /// say.
    pub exit_code: Option<i64>,
    /// Killed at `timeout_secs`.
    #[serde(default)]
    pub timed_out: bool,
}

/// The answer of a non-streaming exec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecResult {
    /// Standard output (UTF-8, invalid bytes replaced).
    pub stdout: String,
    /// Standard error (UTF-8, invalid bytes replaced).
    pub stderr: String,
    /// The exit code; none when killed at the timeout.
    pub exit_code: Option<i64>,
    /// Killed at `timeout_secs`.
    pub timed_out: bool,
    /// Output beyond 1 MiB per stream was cut.
    pub truncated: bool,
}

/// One line of a streaming exec's answer (`?stream=true`, `application/x-ndjson`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    /// Output, as it came (UTF-8; a character split between chunks is kept whole).
    Output {
        /// Which output.
        stream: OutputStream,
        /// The text.
        data: String,
    },
    /// The process ended: always the last line of a stream that did not fail.
    Exit(ExecExit),
    /// The stream failed (the agent went away, the container stopped): the last line.
    Error {
        /// What failed.
        message: String,
    },
}

/// One line of a container's output (`GET /v1/allocations/{id}/logs`, SSE event `log`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogLine {
    /// Which output.
    pub stream: OutputStream,
    /// The line, without its newline.
    pub line: String,
}

/// Lines the rate cap left out (SSE event `dropped`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogsDropped {
    /// How many lines were left out since the last line sent.
    pub dropped: u64,
}

/// `PUT /v1/allocations/{id}/files` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileWritten {
    /// Where it was written (a directory for an archive).
    pub path: String,
    /// Bytes received.
    pub bytes: u64,
    /// Whether the body was a tar archive unpacked at `path`.
    pub archive: bool,
}

/// Checks a path given for `/files`: absolute, no NUL, no newline, not too long.
pub fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must be absolute"));
    }
    if path.len() > 4096 || path.contains('\0') || path.contains('\n') {
        return Err("path must be at most 4096 bytes, without NUL or newline".into());
    }
    Ok(())
}

/// Where the settings given at claim stand (`settings` on an allocation that was given any).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SettingsState {
    /// Not yet written into the container.
    Pending,
    /// Written to `/run/warmpool/env` and set for every exec.
    Applied,
    /// Could not be delivered (the message says why in the member's log); retry the
    /// allocation with the same idempotency key and the same settings to try again.
    Failed,
}

/// Checks metadata at claim.
pub fn check_metadata(m: &BTreeMap<String, String>) -> Result<(), String> {
    if m.len() > MAX_METADATA_ENTRIES {
        return Err(format!("at most {MAX_METADATA_ENTRIES} metadata entries"));
    }
    for (k, v) in m {
        if k.is_empty()
            || k.len() > MAX_METADATA_LEN
            || v.len() > MAX_METADATA_LEN
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
        {
            return Err(format!(
                "metadata key {k:?} must be 1..={MAX_METADATA_LEN} of [A-Za-z0-9-_./], its value at most {MAX_METADATA_LEN} bytes"
            ));
        }
    }
    Ok(())
}

/// Checks env and secrets at claim (both become environment variables).
pub fn check_settings(
    env: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
) -> Result<(), String> {
    if env.len() + secrets.len() > MAX_SETTINGS_ENTRIES {
        return Err(format!(
            "at most {MAX_SETTINGS_ENTRIES} env and secret entries together"
        ));
    }
    check_env_names(env.keys().chain(secrets.keys()))?;
    if env
        .values()
        .chain(secrets.values())
        .any(|v| v.len() > MAX_SETTING_VALUE_LEN || v.contains('\0'))
    {
        return Err(format!(
            "env and secret values must be at most {MAX_SETTING_VALUE_LEN} bytes, without NUL"
        ));
    }
    Ok(())
}

/// The settings file's text: one `NAME='value'` line per entry, single-quoted for a POSIX
/// shell (`. /run/warmpool/env` sets them; `set -a` first exports them). Sorted by name.
pub fn render_settings(env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (k, v) in env {
        out.push_str(k);
        out.push_str("='");
        out.push_str(&v.replace('\'', "'\\''"));
        out.push_str("'\n");
    }
    out
}

/// Reads [`render_settings`]'s text back (the agent does after a restart, when it lost what it
/// held in memory). Lines it did not write are skipped.
pub fn parse_settings(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let Some((name, after)) = rest.split_once("='") else {
            break;
        };
        // The value runs to the next `'` that is not the start of `'\''`.
        let mut value = String::new();
        let mut tail = after;
        loop {
            match tail.find('\'') {
                None => return out,
                Some(i) => {
                    value.push_str(&tail[..i]);
                    if tail[i..].starts_with("'\\''") {
                        value.push('\'');
                        tail = &tail[i + 4..];
                    } else {
                        tail = &tail[i + 1..];
                        break;
                    }
                }
            }
        }
        out.insert(name.to_string(), value);
        rest = tail.strip_prefix('\n').unwrap_or(tail);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Member ↔ agent
// ---------------------------------------------------------------------------------------------

/// A stream's id, chosen by the member that opens it.
pub type StreamId = Uuid;

/// What an exec on the agent runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Environment on top of the settings given at claim.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Killed after this long.
    pub timeout_ms: u64,
}

/// A request from a member to the agent of a container's node
/// (`pool.v1.node.<node>.session`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SessionRequest {
    /// Open a stream of the container's output (Docker's log: stdout and stderr).
    OpenLogs {
        /// The new stream.
        stream: StreamId,
        /// The container.
        container: ContainerId,
        /// Only the last `tail` lines before now; all when absent.
        tail: Option<u64>,
        /// Keep streaming new lines until the container stops.
        follow: bool,
    },
    /// Start a process in the container and open a stream of its output.
    OpenExec {
        /// The new stream.
        stream: StreamId,
        /// The container.
        container: ContainerId,
        /// What to run.
        exec: ExecSpec,
    },
    /// Open a stream of a file's bytes (or a tar archive of a directory or file). Answered
    /// [`SessionReply::Opened`] with the size (single files) once the path was checked.
    OpenRead {
        /// The new stream.
        stream: StreamId,
        /// The container.
        container: ContainerId,
        /// Absolute path.
        path: String,
        /// A tar archive of the path rather than its bytes.
        archive: bool,
        /// Refused with [`SessionErrorKind::TooLarge`] when the file is larger.
        max_bytes: u64,
    },
    /// Open a writer to a file (or to a directory a tar archive is unpacked into), fed by
    /// [`SessionRequest::Write`]; the stream's end says whether it worked.
    OpenWrite {
        /// The new stream.
        stream: StreamId,
        /// The container.
        container: ContainerId,
        /// Absolute path.
        path: String,
        /// The bytes are a tar archive to unpack at `path`.
        archive: bool,
    },
    /// Bytes for an open writer; `eof` closes its input.
    Write {
        /// The stream.
        stream: StreamId,
        /// At most [`MAX_CHUNK_BYTES`].
        #[serde(with = "b64")]
        data: Vec<u8>,
        /// No more bytes follow.
        eof: bool,
    },
    /// What the stream has now, or as soon as it has anything (at most `wait_ms`).
    Pull {
        /// The stream.
        stream: StreamId,
        /// Longest wait for data when none is buffered (capped at [`PULL_WAIT_MS`]).
        wait_ms: u64,
    },
    /// The member is done with the stream (its client left): stop it, kill its process.
    Close {
        /// The stream.
        stream: StreamId,
    },
    /// Write the settings given at claim into the container and set them for every exec.
    /// Idempotent: the file is replaced as a whole.
    ApplySettings {
        /// The container.
        container: ContainerId,
        /// Every variable, env and secrets merged (secrets win).
        env: BTreeMap<String, String>,
    },
    /// Restore a workspace into the container at its pool's path (the saved version, or
    /// nothing for a new one), then sync it at the pool's interval and save it once more
    /// before the container is removed. Answered [`SessionReply::WorkspaceRestored`]. Repeated
    /// for a container that has the same workspace already: answered as restored again,
    /// without a second restore.
    RestoreWorkspace {
        /// The container.
        container: ContainerId,
        /// Which workspace, the pool's declaration, the tenant's cap.
        binding: crate::workspace::WorkspaceBinding,
    },
    /// The container was allocated from the paused tier: unpause it (if it is paused) and
    /// answer [`SessionReply::Unpaused`] once it accepts a connection on its service port
    /// (within `timeout_ms`). From then on the agent never pauses it again.
    Unpause {
        /// The container.
        container: ContainerId,
        /// How long it may take to answer on its port once unpaused.
        timeout_ms: u64,
    },
}

impl SessionRequest {
    /// The kind, for logs and metrics (never the payload: it may hold secrets).
    pub fn kind(&self) -> &'static str {
        match self {
            SessionRequest::OpenLogs { .. } => "open_logs",
            SessionRequest::OpenExec { .. } => "open_exec",
            SessionRequest::OpenRead { .. } => "open_read",
            SessionRequest::OpenWrite { .. } => "open_write",
            SessionRequest::Write { .. } => "write",
            SessionRequest::Pull { .. } => "pull",
            SessionRequest::Close { .. } => "close",
            SessionRequest::ApplySettings { .. } => "apply_settings",
            SessionRequest::RestoreWorkspace { .. } => "restore_workspace",
            SessionRequest::Unpause { .. } => "unpause",
        }
    }
}

/// Data out of a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// Which output.
    pub stream: OutputStream,
    /// The bytes.
    #[serde(with = "b64")]
    pub data: Vec<u8>,
}

/// How a stream ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "end", rename_all = "snake_case")]
pub enum StreamEnd {
    /// A log stream reached its end (the container stopped, or not following).
    Logs,
    /// A process ended.
    Exit(ExecExit),
    /// The stream failed on the agent's side.
    Failed {
        /// Why.
        kind: SessionErrorKind,
        /// For a person.
        message: String,
    },
}

/// One pull's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Output in order.
    pub items: Vec<Output>,
    /// Lines the rate cap left out before these items.
    #[serde(default)]
    pub dropped: u64,
    /// Set on the last chunk: nothing follows and the stream is gone.
    pub end: Option<StreamEnd>,
}

/// Why a session request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionErrorKind {
    /// The agent does not run that container.
    NoSuchContainer,
    /// No open stream by that id (never opened, ended, or closed for idleness).
    NoSuchStream,
    /// A stream by that id is open already.
    StreamExists,
    /// The path does not exist.
    NotFound,
    /// The path is a directory and a file was asked for (use an archive).
    IsADirectory,
    /// Larger than allowed.
    TooLarge,
    /// The request is malformed.
    Invalid,
    /// The agent has too many streams open.
    Busy,
    /// Docker refused or failed, or the container lacks what the operation needs (a shell,
    /// `cat`, `tar`).
    Runtime,
}

/// An agent's answer to a [`SessionRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum SessionReply {
    /// The stream is open.
    Opened {
        /// The size of the file to be read, when known.
        size: Option<u64>,
    },
    /// The bytes are in the process's stdin.
    Written,
    /// What a pull got.
    Chunk(Chunk),
    /// Closed (or was not open).
    Closed,
    /// Settings in place.
    Applied,
    /// The container runs and answers on its port.
    Unpaused {
        /// Time from the request to the first accepted connection, ms.
        took_ms: u64,
        /// Whether it was paused (false: it ran already, e.g. a repeat).
        was_paused: bool,
    },
    /// The workspace is in the container.
    WorkspaceRestored {
        /// The version restored; absent for a workspace never saved (it starts empty).
        version: Option<String>,
    },
    /// The request failed.
    Error {
        /// Why.
        kind: SessionErrorKind,
        /// For a person.
        message: String,
    },
}

impl SessionReply {
    /// An error answer.
    pub fn error(kind: SessionErrorKind, message: impl Into<String>) -> Self {
        SessionReply::Error {
            kind,
            message: message.into(),
        }
    }
}

/// Serde for bytes as base64 text.
mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// Turns a byte stream into text without splitting a character between two chunks: the bytes
/// of a character cut at a chunk's end are kept for the next. Invalid bytes become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    /// The text of `bytes` after what was held back, holding back an incomplete character at
    /// the end.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let keep = incomplete_tail(&self.pending);
        let cut = self.pending.len() - keep;
        let text = String::from_utf8_lossy(&self.pending[..cut]).into_owned();
        self.pending.drain(..cut);
        text
    }

    /// Whatever is held back, as text (at the stream's end).
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// How many bytes at the end of `b` start a UTF-8 character that is not complete yet.
fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=3.min(b.len()) {
        let byte = b[b.len() - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: look further back for the lead
        }
        let needed = match byte {
            0b1100_0000..=0b1101_1111 => 2,
            0b1110_0000..=0b1110_1111 => 3,
            0b1111_0000..=0b1111_0111 => 4,
            _ => return 0,
        };
        return if needed > back { back } else { 0 };
    }
    0
}

/// Splits log output into lines: complete lines out, a partial last line kept for the next
/// chunk (Docker splits lines over 16 KiB into several entries).
#[derive(Debug, Default)]
pub struct LineSplitter {
    text: Utf8Carry,
    partial: String,
}

impl LineSplitter {
    /// The complete lines `bytes` finish, without their newlines (and without a `\r` before).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.partial.push_str(&self.text.push(bytes));
        let mut lines = Vec::new();
        while let Some(i) = self.partial.find('\n') {
            let mut line: String = self.partial.drain(..=i).collect();
            line.pop();
            if line.ends_with('\r') {
                line.pop();
            }
            lines.push(line);
        }
        lines
    }

    /// The last line, if it had no newline.
    pub fn finish(&mut self) -> Option<String> {
        self.partial.push_str(&self.text.finish());
        (!self.partial.is_empty()).then(|| std::mem::take(&mut self.partial))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_with_bytes_in_base64() {
        let r = SessionRequest::Write {
            stream: Uuid::now_v7(),
            data: vec![0, 1, 2, 255],
            eof: true,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"AAEC/w==\""), "{json}");
        assert_eq!(serde_json::from_str::<SessionRequest>(&json).unwrap(), r);
        let reply = SessionReply::Chunk(Chunk {
            items: vec![Output {
                stream: OutputStream::Stderr,
                data: b"oops\n".to_vec(),
            }],
            dropped: 3,
            end: Some(StreamEnd::Exit(ExecExit {
                exit_code: Some(2),
                timed_out: false,
            })),
        });
        let json = serde_json::to_vec(&reply).unwrap();
        assert_eq!(
            serde_json::from_slice::<SessionReply>(&json).unwrap(),
            reply
        );
        assert!(serde_json::from_str::<SessionRequest>(r#"{"op":"write","stream":"x"}"#).is_err());
    }

    #[test]
    fn a_full_chunk_fits_a_nats_message() {
        let reply = SessionReply::Chunk(Chunk {
            items: vec![Output {
                stream: OutputStream::Stdout,
                data: vec![0xff; MAX_CHUNK_BYTES],
            }],
            dropped: 0,
            end: None,
        });
        assert!(serde_json::to_vec(&reply).unwrap().len() < 1_000_000);
    }

    #[test]
    fn characters_split_between_chunks_stay_whole() {
        let text = "héllo → wörld 🎉";
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            let mut c = Utf8Carry::default();
            let mut out = c.push(&bytes[..cut]);
            out += &c.push(&bytes[cut..]);
            out += &c.finish();
            assert_eq!(out, text, "cut at {cut}");
        }
        let mut c = Utf8Carry::default();
        assert_eq!(c.push(b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn lines_are_split_and_partial_lines_kept() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"one\ntw"), vec!["one"]);
        assert_eq!(s.push(b"o\r\nthree\n"), vec!["two", "three"]);
        assert_eq!(s.push(b"four"), Vec::<String>::new());
        assert_eq!(s.finish().as_deref(), Some("four"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn settings_render_for_a_shell_and_parse_back() {
        let env = BTreeMap::from([
            ("A".to_string(), "plain".to_string()),
            ("B".to_string(), "it's $HOME\nline two".to_string()),
            ("C".to_string(), String::new()),
        ]);
        let text = render_settings(&env);
        assert_eq!(text, "A='plain'\nB='it'\\''s $HOME\nline two'\nC=''\n");
        assert_eq!(parse_settings(&text), env);
        assert_eq!(parse_settings(""), BTreeMap::new());
    }

    #[test]
    fn inputs_are_checked() {
        let ok = ExecRequest {
            command: vec!["ls".into()],
            ..Default::default()
        };
        ok.validate().unwrap();
        let mut bad = ok.clone();
        bad.command.clear();
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.timeout_secs = Some(0);
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.env.insert("A=B".into(), "x".into());
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.working_dir = Some("rel".into());
        assert!(bad.validate().is_err());
        assert!(check_path("/tmp/x").is_ok());
        assert!(check_path("tmp/x").is_err());
        assert!(check_metadata(&BTreeMap::from([("team".into(), "a".into())])).is_ok());
        assert!(check_metadata(&BTreeMap::from([("sp ace".into(), "a".into())])).is_err());
        assert!(check_settings(
            &BTreeMap::new(),
            &BTreeMap::from([("K".into(), "v".into())])
        )
        .is_ok());
        assert!(
            check_settings(&BTreeMap::from([("".into(), "v".into())]), &BTreeMap::new()).is_err()
        );
    }
}
