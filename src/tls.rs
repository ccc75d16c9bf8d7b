//! TLS material shared by the gRPC server and client, the Postgres source
//! and the ClickHouse sink: one crypto provider (ring) and PEM files read
//! with errors that name the file (never its content).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM file (certificate, key or CA) that cannot be used; the message names
/// the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// The file cannot be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// What the file is for, e.g. "TLS key file".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file was read but holds no usable PEM item of the kind expected.
    #[error("{what} {} is not usable: {reason}", path.display())]
    Invalid {
        /// What the file is for, e.g. "TLS key file".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The one crypto provider of the process (explicit, so no feature
/// unification elsewhere can make rustls pick another or none).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes [`provider`] the process default too, for libraries that build
/// their TLS configs without naming one (tonic's server and client, the
/// replication connection). Needed because a dependency enables rustls'
/// aws-lc-rs feature beside ring, and rustls then refuses to guess.
/// Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn invalid(what: &'static str, path: &Path, reason: impl Into<String>) -> TlsFileError {
    TlsFileError::Invalid {
        what,
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Parses PEM certificates; errors if there is none.
fn parse_certs(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            what,
            path,
            "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

/// The certificates of a PEM file, as trust anchors.
pub(crate) fn roots_from_file(
    what: &'static str,
    path: &Path,
) -> Result<RootCertStore, TlsFileError> {
    let pem = read(what, path)?;
    let mut store = RootCertStore::empty();
    for cert in parse_certs(what, path, &pem)? {
        store
            .add(cert)
            .map_err(|e| invalid(what, path, e.to_string()))?;
    }
    Ok(store)
}

/// The operating system's trust anchors (unreadable ones are skipped).
pub(crate) fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!(error = %e, "skipping a system root certificate store");
    }
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(found.certs);
    tracing::debug!(added, ignored, "loaded system root certificates");
    store
}

/// Trust anchors: the CA file if one is given, else the system's.
pub(crate) fn roots(
    what: &'static str,
    ca_file: Option<&Path>,
) -> Result<RootCertStore, TlsFileError> {
    match ca_file {
        Some(path) => roots_from_file(what, path),
        None => Ok(system_roots()),
    }
}

/// A server identity read from PEM files: the certificate chain and its key,
/// checked to parse so a bad file is named at start-up.
#[derive(Clone)]
pub(crate) struct Identity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret.
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

/// Reads and checks a certificate chain file and its private key file.
pub(crate) fn read_identity(cert: &Path, key: &Path) -> Result<Identity, TlsFileError> {
    const CERT: &str = "TLS certificate file";
    const KEY: &str = "TLS key file";
    let cert_pem = read(CERT, cert)?;
    parse_certs(CERT, cert, &cert_pem)?;
    let key_pem = read(KEY, key)?;
    // The parser's message describes the PEM structure, not the key bytes.
    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        invalid(
            KEY,
            key,
            format!("no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {e}"),
        )
    })?;
    Ok(Identity { cert_pem, key_pem })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = roots_from_file("CA file", &missing).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read CA file") && e.to_string().contains("nope.pem"),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        let e = roots_from_file("CA file", &empty).unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let e = read_identity(&empty, &empty).unwrap_err();
        assert!(e.to_string().contains("TLS certificate file"), "{e}");
    }
}
