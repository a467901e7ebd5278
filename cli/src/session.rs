//! `poolctl logs`, `exec` and `cp`: using an allocated container through the control plane.

use std::io::Write;

use futures::StreamExt;
use warmpool_proto::session::{ExecEvent, ExecRequest, LogLine, LogsDropped, OutputStream};
use warmpool_proto::AllocationId;

use crate::args::ExecArgs;
use crate::client::{transport_error, Client};
use crate::error::ClientError;
use crate::run::CliError;
use crate::sse::SseParser;

/// `poolctl logs [-f] [--tail N] ID`: stdout lines to standard output, stderr lines to
/// standard error, a note on standard error when the rate cap dropped lines.
pub async fn logs(
    client: &Client,
    id: AllocationId,
    follow: bool,
    tail: Option<u64>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let resp = client.logs(id, follow, tail).await?;
    let url = resp.url().to_string();
    let mut body = resp.bytes_stream();
    let mut parser = SseParser::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| transport_error(&url, e))?;
        for msg in parser.feed(&chunk) {
            match msg.event.as_str() {
                "log" => {
                    let Ok(l) = serde_json::from_str::<LogLine>(&msg.data) else {
                        continue;
                    };
                    match l.stream {
                        OutputStream::Stdout => writeln!(out, "{}", l.line)?,
                        OutputStream::Stderr => eprintln!("{}", l.line),
                    }
                    out.flush()?;
                }
                "dropped" => {
                    if let Ok(d) = serde_json::from_str::<LogsDropped>(&msg.data) {
                        eprintln!("[poolctl: {} lines dropped by the rate cap]", d.dropped);
                    }
                }
                "end" => return Ok(()),
                _ => {}
            }
        }
    }
    Ok(())
}

/// `poolctl exec ID -- cmd args`: output as it comes (stdout to standard output, stderr to
/// standard error); exits with the command's exit code (124 when it timed out, as
/// `timeout(1)` does).
pub async fn exec(client: &Client, e: ExecArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let req = ExecRequest {
        command: e.command,
        env: e.env.into_iter().collect(),
        working_dir: e.workdir,
        timeout_secs: e.timeout,
    };
    let resp = client.exec_stream(e.id, &req).await?;
    let url = resp.url().to_string();
    let mut body = resp.bytes_stream();
    let mut line = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| transport_error(&url, e))?;
        for &b in chunk.iter() {
            if b != b'\n' {
                line.push(b);
                continue;
            }
            let ev: ExecEvent = serde_json::from_slice(&line).map_err(|e| ClientError::Decode {
                url: url.clone(),
                status: 200,
                reason: e.to_string(),
            })?;
            line.clear();
            match ev {
                ExecEvent::Output { stream, data } => match stream {
                    OutputStream::Stdout => {
                        out.write_all(data.as_bytes())?;
                        out.flush()?;
                    }
                    OutputStream::Stderr => {
                        let mut err = std::io::stderr().lock();
                        err.write_all(data.as_bytes())?;
                        err.flush()?;
                    }
                },
                ExecEvent::Exit(exit) => {
                    let code = match (exit.exit_code, exit.timed_out) {
                        (_, true) => {
                            eprintln!("poolctl: the command timed out and was killed");
                            124
                        }
                        (Some(c), _) => u8::try_from(c.clamp(0, 255)).unwrap_or(255),
                        (None, _) => 255,
                    };
                    return match code {
                        0 => Ok(()),
                        c => Err(CliError::CommandExit(c)),
                    };
                }
                ExecEvent::Error { message } => {
                    return Err(CliError::Usage(format!("the exec failed: {message}")))
                }
            }
        }
    }
    Err(CliError::Usage(
        "the exec's answer ended before its exit code".into(),
    ))
}

/// One side of `poolctl cp`.
#[derive(Debug, PartialEq, Eq)]
pub enum Place {
    /// A local path.
    Local(String),
    /// A path in an allocation's container.
    Remote(AllocationId, String),
}

/// `ID:/path` is remote (an allocation id, a colon, an absolute path); anything else local.
pub fn parse_place(s: &str) -> Place {
    if let Some((id, path)) = s.split_once(':') {
        if path.starts_with('/') {
            if let Ok(id) = id.parse::<AllocationId>() {
                return Place::Remote(id, path.to_string());
            }
        }
    }
    Place::Local(s.to_string())
}

/// `poolctl cp LOCAL ID:/path` or `poolctl cp ID:/path LOCAL`.
pub async fn cp(
    client: &Client,
    from: &str,
    to: &str,
    archive: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match (parse_place(from), parse_place(to)) {
        (Place::Local(local), Place::Remote(id, path)) => {
            let meta = std::fs::metadata(&local)
                .map_err(|e| CliError::Usage(format!("cannot read {local}: {e}")))?;
            let (bytes, archive) = if meta.is_dir() {
                (local_tar(&local)?, true)
            } else {
                let bytes = std::fs::read(&local)
                    .map_err(|e| CliError::Usage(format!("cannot read {local}: {e}")))?;
                (bytes, archive)
            };
            let w = client.upload(id, &path, archive, bytes).await?;
            writeln!(
                out,
                "{} bytes {} {id}:{}",
                w.bytes,
                if w.archive {
                    "unpacked into"
                } else {
                    "written to"
                },
                w.path
            )?;
            Ok(())
        }
        (Place::Remote(id, path), Place::Local(local)) => {
            let resp = client.download(id, &path, archive).await?;
            let url = resp.url().to_string();
            let mut body = resp.bytes_stream();
            let mut bytes = Vec::new();
            while let Some(chunk) = body.next().await {
                bytes.extend_from_slice(&chunk.map_err(|e| transport_error(&url, e))?);
            }
            if archive {
                std::fs::create_dir_all(&local)
                    .map_err(|e| CliError::Usage(format!("cannot make {local}: {e}")))?;
                untar(&local, &bytes)?;
            } else if local == "-" {
                out.write_all(&bytes)?;
                return Ok(());
            } else {
                std::fs::write(&local, &bytes)
                    .map_err(|e| CliError::Usage(format!("cannot write {local}: {e}")))?;
            }
            eprintln!("{} bytes from {id}:{path}", bytes.len());
            Ok(())
        }
        _ => Err(CliError::Usage(
            "cp needs one local path and one ID:/absolute/path".into(),
        )),
    }
}

fn local_tar(dir: &str) -> Result<Vec<u8>, CliError> {
    let o = std::process::Command::new("tar")
        .args(["-c", "-f", "-", "-C", dir, "."])
        .output()
        .map_err(|e| CliError::Usage(format!("cannot run tar: {e}")))?;
    if !o.status.success() {
        return Err(CliError::Usage(format!(
            "tar of {dir} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        )));
    }
    Ok(o.stdout)
}

fn untar(dir: &str, bytes: &[u8]) -> Result<(), CliError> {
    let mut child = std::process::Command::new("tar")
        .args(["-x", "-f", "-", "-C", dir])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| CliError::Usage(format!("cannot run tar: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(bytes)?;
    }
    let status = child.wait()?;
    if !status.success() {
        return Err(CliError::Usage(format!("unpacking into {dir} failed")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_parse() {
        let id = AllocationId::new();
        assert_eq!(
            parse_place(&format!("{id}:/tmp/x")),
            Place::Remote(id, "/tmp/x".into())
        );
        assert_eq!(parse_place("./x"), Place::Local("./x".into()));
        assert_eq!(parse_place("c:/x"), Place::Local("c:/x".into()));
        assert_eq!(
            parse_place(&format!("{id}:rel")),
            Place::Local(format!("{id}:rel"))
        );
    }
}
