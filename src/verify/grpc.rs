//! A tonic channel over a TLS connection verify made (and classified) itself.

use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Hands the already-verified stream to tonic exactly once; a reconnect
/// attempt fails rather than silently dialling without our checks.
pub async fn channel(stream: TlsStream<TcpStream>, authority: &str) -> Result<Channel, String> {
    let slot = Arc::new(Mutex::new(Some(stream)));
    let connector = tower::service_fn(move |_: Uri| {
        let taken = slot.lock().ok().and_then(|mut s| s.take());
        async move {
            taken
                .map(TokioIo::new)
                .ok_or_else(|| std::io::Error::other("connection already used"))
        }
    });
    // The scheme only shapes `:scheme`/`:authority`; TLS is already done.
    Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| format!("bad address {authority}: {e}"))?
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("HTTP/2 setup failed: {e}"))
}

/// `code: message` of a gRPC status, for details.
pub fn status_text(s: &tonic::Status) -> String {
    format!("rpc error: code = {:?} desc = {}", s.code(), s.message())
}
