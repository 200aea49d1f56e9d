//! TLS to PostgreSQL servers (rustls): a registered server may name the CA its certificate
//! must chain to, and then every connection to it — admin, provisioning, the runtime's pools —
//! uses TLS, verifying the certificate against that CA only and the host name (or IP address)
//! the server's URL names. Remote servers are the normal case at scale; a server without a CA
//! is reached without TLS (a loopback or private-network server).

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("the CA file holds no PEM certificate")]
    NoCertificate,
    #[error("the CA file is not valid PEM: {0}")]
    Pem(String),
    #[error("the CA certificate cannot be used: {0}")]
    Certificate(String),
}

/// A TLS connector trusting only the CA certificate(s) in `ca_pem`.
pub fn connector(ca_pem: &str) -> Result<MakeRustlsConnect, TlsConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsConfigError::Pem(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| TlsConfigError::Certificate(e.to_string()))?;
        found += 1;
    }
    if found == 0 {
        return Err(TlsConfigError::NoCertificate);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsConfigError::Certificate(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Checks a CA file before it is recorded.
pub fn check_ca(ca_pem: &str) -> Result<(), TlsConfigError> {
    connector(ca_pem).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_certificate() {
        assert!(matches!(connector(""), Err(TlsConfigError::NoCertificate)));
        assert!(matches!(
            connector("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"),
            Err(TlsConfigError::Pem(_) | TlsConfigError::NoCertificate)
        ));
    }
}
