//! A tonic channel over a TLS connection verify made (and classified) itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Hands the already-verified stream to tonic exactly once; a reconnect
/// attempt fails rather than silently dialling without our checks.
#[derive(Clone)]
struct OneShot(Arc<Mutex<Option<TlsStream<TcpStream>>>>);

type Connecting =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tower::Service<Uri> for OneShot {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let taken = self.0.lock().ok().and_then(|mut s| s.take());
        Box::pin(async move {
            taken
                .map(TokioIo::new)
                .ok_or_else(|| std::io::Error::other("connection already used"))
        })
    }
}

pub async fn channel(stream: TlsStream<TcpStream>, authority: &str) -> Result<Channel, String> {
    // The scheme only shapes `:scheme`/`:authority`; TLS is already done.
    Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| format!("bad address {authority}: {e}"))?
        .connect_with_connector(OneShot(Arc::new(Mutex::new(Some(stream)))))
        .await
        .map_err(|e| format!("HTTP/2 setup failed: {e}"))
}

/// `code: message` of a gRPC status, for details.
pub fn status_text(s: &tonic::Status) -> String {
    format!("rpc error: code = {:?} desc = {}", s.code(), s.message())
}

/// TCP, TLS (classified as `tcp.*`/`tls.*` failures would be) and HTTP/2 to
/// istiod, as check `id`: the common start of the CA call and the ADS stream.
pub async fn connect(
    id: &str,
    tls: &super::net::Tls,
    addrs: &[std::net::SocketAddr],
    t: &super::inputs::Target,
    timeout: std::time::Duration,
    owner: super::net::Owner,
) -> Result<Channel, crate::report::Check> {
    use super::net;
    let tcp = net::tcp_connect(addrs, timeout, owner)
        .await
        .map_err(|e| net::tcp_failure(id, t, &e, timeout))?;
    let stream = tls
        .handshake(tcp, t, timeout)
        .await
        .map_err(|f| net::tls_failure(id, t, &f, timeout))?;
    channel(stream, &t.addr())
        .await
        .map_err(|e| super::fail(id, e, "istiod did not accept an HTTP/2 (gRPC) connection"))
}
