//! A WebSocket round trip, for tests that must make it from another network namespace:
//! `ws-echo HOST:PORT PATH MESSAGE [HEADER: VALUE]...` prints the status line, then the echo.
//! Exits 1 when the handshake is refused or the echo differs.

use warmpool_tests::gateway::{ws_echo, ws_handshake};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, path, msg, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: ws-echo HOST:PORT PATH MESSAGE [HEADER: VALUE]...");
    };
    let headers: Vec<(&str, &str)> = rest
        .iter()
        .filter_map(|h| h.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let stream = tokio::net::TcpStream::connect(addr.as_str()).await?;
    let (status, mut stream) = ws_handshake(stream, addr, path, &headers).await?;
    println!("{status}");
    if !status.contains(" 101 ") {
        std::process::exit(1);
    }
    let echo = ws_echo(&mut stream, msg).await?;
    println!("{echo}");
    if &echo != msg {
        std::process::exit(1);
    }
    Ok(())
}
