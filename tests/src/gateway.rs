//! Harness for the gateway (issue 16): a `warmpool-gateway` process, an IPv4-only client
//! network namespace with no route to the containers, and a minimal WebSocket client.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{bin, free_port, log_file, stop_child, tail, unique, wait_until};

/// One `warmpool-gateway` process.
pub struct Gateway {
    /// Its port (on every IPv4 address of this namespace).
    pub port: u16,
    /// Its metrics port on 127.0.0.1.
    pub metrics_port: u16,
    /// Serving HTTPS.
    pub tls: bool,
    name: String,
    log_dir: PathBuf,
    child: Option<Child>,
}

impl Gateway {
    /// Starts a gateway on `0.0.0.0:<free port>` for the API at `api_url`, with `extra` flags
    /// (`--domain`, `--api-key-file`, `--tls-cert`...).
    pub fn start(api_url: &str, dir: &Path, extra: &[&str]) -> Gateway {
        let port = free_port();
        let metrics_port = free_port();
        let name = unique("gateway");
        let (log, _) = log_file(dir, &name);
        let child = Command::new(bin("warmpool-gateway"))
            .args(["--listen", &format!("0.0.0.0:{port}")])
            .args(["--api-url", api_url])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(extra)
            .env("RUST_LOG", "info,warmpool_gateway=debug")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start warmpool-gateway");
        Gateway {
            port,
            metrics_port,
            tls: extra.contains(&"--tls-cert"),
            name,
            log_dir: dir.to_path_buf(),
            child: Some(child),
        }
    }

    /// Waits until it accepts connections.
    pub async fn wait_up(&self) {
        let port = self.port;
        wait_until(
            Duration::from_secs(20),
            "the gateway to listen",
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Peak resident memory of the process, KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    /// The end of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_dir.join(format!("{}.log", self.name)), lines)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- {} -----\n{}", self.name, self.log_tail(40));
        }
        stop_child(&mut self.child, "KILL");
    }
}

/// A network namespace with IPv4 only (IPv6 off), joined to this one by a veth pair: a client
/// that can reach this namespace's IPv4 address and nothing of the containers' prefixes.
pub struct Ipv4Client {
    /// The namespace's name.
    pub netns: String,
    /// This namespace's address on the link (where the gateway is reached).
    pub host_addr: Ipv4Addr,
    /// The client's address.
    pub client_addr: Ipv4Addr,
    veth: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Ipv4Client {
    /// Makes the namespace and its link (a random /30 in 10.231.0.0/16).
    pub fn create() -> Ipv4Client {
        let tag = &unique("c")[2..];
        let netns = format!("wpgw-{tag}");
        let veth = format!("wpg{tag}");
        let n = (uuid::Uuid::new_v4().as_u128() % 16_000) as u32;
        let base = u32::from(Ipv4Addr::new(10, 231, 0, 0)) + n * 4;
        let (host_addr, client_addr) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let c = Ipv4Client {
            netns: netns.clone(),
            host_addr,
            client_addr,
            veth: veth.clone(),
        };
        let peer = format!("{veth}p");
        ip(&["netns", "add", &netns]);
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &netns]);
        ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &veth]);
        ip(&["link", "set", &veth, "up"]);
        c.run_ok(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        c.run_ok(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        c.run_ok(&["ip", "link", "set", "lo", "up"]);
        c.run_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{client_addr}/30"),
            "dev",
            &peer,
        ]);
        c.run_ok(&["ip", "link", "set", &peer, "up"]);
        c
    }

    /// Runs a command in the namespace.
    pub async fn run(&self, args: &[&str]) -> Output {
        tokio::process::Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run in the client namespace")
    }

    fn run_ok(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(args)
            .output()
            .expect("run in the client namespace");
        assert!(
            out.status.success(),
            "{args:?} in {}: {}",
            self.netns,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `curl -s` in the namespace with `args`, plus `-w` printing `<status> <bytes> <http
    /// version>`; returns (status, bytes, version, body).
    pub async fn curl(&self, args: &[&str]) -> (u16, u64, String, String) {
        let mut all = vec![
            "curl",
            "-s",
            "-m",
            "60",
            "-w",
            "\n%{http_code} %{size_download} %{http_version}",
        ];
        all.extend_from_slice(args);
        let out = self.run(&all).await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, last) = text.rsplit_once('\n').unwrap_or(("", &text));
        let mut f = last.split_whitespace();
        let status = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let bytes = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let version = f.next().unwrap_or_default().to_string();
        (status, bytes, version, body.to_string())
    }
}

impl Drop for Ipv4Client {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// Opens a WebSocket on `stream` (`GET path` with `headers`); returns the status line and
/// the stream, upgraded when the status is 101.
pub async fn ws_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(String, S)> {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;
    // Read the answer's head byte by byte, so nothing after it is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if stream.read(&mut b).await? == 0 {
            break;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    Ok((head.lines().next().unwrap_or_default().to_string(), stream))
}

/// Sends `msg` as one masked text frame and reads one frame back; its payload.
pub async fn ws_echo<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    msg: &str,
) -> std::io::Result<String> {
    assert!(msg.len() <= 125, "short messages only");
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | msg.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(msg.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame).await?;
    let mut hdr = [0u8; 2];
    stream.read_exact(&mut hdr).await?;
    let mut payload = vec![0u8; (hdr[1] & 0x7f) as usize];
    stream.read_exact(&mut payload).await?;
    Ok(String::from_utf8_lossy(&payload).into_owned())
}
