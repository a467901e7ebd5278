//! The listener: plain TCP or TLS (rustls with the ring provider, ALPN `h2` and `http/1.1`,
//! as the control plane's API), each connection served by hyper's automatic HTTP/1.1 or
//! HTTP/2 server with upgrades. Handshakes run on the connection's own task with a deadline,
//! so a slow client holds up nobody else. On stop, no new connections are taken and open
//! ones get [`DRAIN`] to finish.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::proxy::Proxy;

/// Longest a client may take over its TLS handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// How long open connections get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(5);

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file.
    #[error("certificate {0}: {1}")]
    Cert(String, String),
    /// The key file.
    #[error("private key {0}: {1}")]
    Key(String, String),
    /// rustls refused the pair.
    #[error("{0}")]
    Config(String),
}

/// A TLS acceptor from a PEM certificate chain and a PEM private key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let shown = |p: &Path| p.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Cert(shown(cert), e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert(shown(cert), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Cert(shown(cert), "no certificate in it".into()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key(shown(key), e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `proxy` on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    proxy: Arc<Proxy>,
    stop: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(hyper_util::rt::TokioTimer::new());
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            c = listener.accept() => match c {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| proxy.clone().handle(req, peer));
            let served = match tls {
                Some(tls) => {
                    let stream =
                        match tokio::time::timeout(HANDSHAKE_DEADLINE, tls.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = served {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        debug!("connections still open after the drain period: dropped");
    }
}

/// The address a listener is bound to, for logs.
pub fn shown(addr: &SocketAddr, tls: bool) -> String {
    format!("{}://{addr}", if tls { "https" } else { "http" })
}
