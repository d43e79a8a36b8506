//! Extra CA roots for our HTTPS clients (the bundle fetch and verify's
//! `--probe`): the PEM certificates in the file named by `SSL_CERT_FILE`,
//! on top of the built-in Mozilla roots. A VM's apps trust the system's
//! store; pointing this variable at it (or at a private CA) lets us trust
//! the same servers they do.

use std::path::Path;

/// Variable naming an extra PEM CA bundle for https:// connections.
pub const CA_FILE_ENV: &str = "SSL_CERT_FILE";

/// What to tell a user whose `SSL_CERT_FILE` cannot be used.
pub const HINT: &str = "point SSL_CERT_FILE at a PEM file of CA certificates, or unset it";

/// The certificates of `SSL_CERT_FILE`, none if it is unset. The error says
/// which file and what is wrong with it; callers add [`HINT`].
pub fn roots() -> Result<Vec<reqwest::Certificate>, String> {
    let Some(path) = std::env::var_os(CA_FILE_ENV) else {
        return Ok(Vec::new());
    };
    let pem = std::fs::read(&path).map_err(|e| {
        format!(
            "cannot read {CA_FILE_ENV}={}: {}",
            Path::new(&path).display(),
            io_reason(&e)
        )
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{CA_FILE_ENV} holds no usable PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{CA_FILE_ENV} holds no PEM certificate"));
    }
    Ok(certs)
}

/// An I/O error as a user reads it, without the bare `os error 2`.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}
