//! TLS for every Postgres connection, over rustls, with libpq's meaning of
//! `sslmode` and `sslrootcert`.
//!
//! tokio-postgres' own parser knows only `sslmode=disable|prefer|require`
//! and no `sslrootcert`, so both are taken out of the connection string
//! ([`split_tls`], in `domain::conn` with the rest of the connection-string
//! handling) and the rest goes to `tokio_postgres::Config`.
//!
//! | sslmode | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | no | - |
//! | `prefer` (default) | if the server offers it | no |
//! | `require` | yes | no (like libpq without a root certificate) |
//! | `verify-ca` | yes | chain to `sslrootcert` |
//! | `verify-full` | yes | chain and host name |
//!
//! Without `sslrootcert` (or with `sslrootcert=system`) the verifying modes
//! trust the operating system's roots.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct as Dss, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::config::SslMode as WireMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

pub use crate::domain::conn::{SslMode, TlsParams, split_tls};

type CertDer<'a> = CertificateDer<'a>;
/// What a handshake signature check answers.
type SignatureCheck = Result<HandshakeSignatureValid, rustls::Error>;

/// What tokio-postgres is told: it knows only whether TLS is off, tried or
/// required; the verifying modes are this module's own verifier.
fn wire(mode: SslMode) -> WireMode {
    match mode {
        SslMode::Disable => WireMode::Disable,
        SslMode::Prefer => WireMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireMode::Require,
    }
}

/// Why TLS could not be set up before connecting (a file problem).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct TlsSetupError(#[from] crate::tls::TlsFileError);

/// Applies the TLS mode to `cfg` and builds the connector for it.
pub(crate) fn connector(
    params: &TlsParams,
    cfg: &mut tokio_postgres::Config,
) -> Result<MakeRustls, TlsSetupError> {
    cfg.ssl_mode(wire(params.mode));
    let provider = crate::tls::provider();
    let verifier: Arc<dyn ServerCertVerifier> = if params.mode.verifies() {
        let roots = crate::tls::roots("sslrootcert file", params.root_cert.as_deref())?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| crate::tls::TlsFileError::Invalid {
                what: "sslrootcert file",
                path: params.root_cert.clone().unwrap_or_default(),
                reason: e.to_string(),
            })?;
        if params.mode == SslMode::VerifyFull {
            webpki
        } else {
            Arc::new(NoNameCheck {
                provider: provider.clone(),
                chain: Some(webpki),
            })
        }
    } else {
        Arc::new(NoNameCheck {
            provider: provider.clone(),
            chain: None,
        })
    };
    // Only fails for a provider without safe protocol versions; ring has them.
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| crate::tls::TlsFileError::Invalid {
            what: "TLS configuration",
            path: PathBuf::new(),
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustls {
        config: Arc::new(config),
        verifies: params.mode.verifies(),
    })
}

/// The verifier of the modes that do not check the host name. Handshake
/// signatures are always checked. Without `chain` (`require`/`prefer`):
/// encryption without authentication of the server (libpq's behaviour).
/// With it (`verify-ca`): the chain must lead to a trusted root; webpki
/// checks the name after the chain, so a name error means the chain was good.
#[derive(Debug)]
struct NoNameCheck {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for NoNameCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    // The same algorithms webpki checks with: both come from `provider`.
    fn verify_tls12_signature(&self, msg: &[u8], cert: &CertDer<'_>, dss: &Dss) -> SignatureCheck {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(msg, cert, dss, algs)
    }

    fn verify_tls13_signature(&self, msg: &[u8], cert: &CertDer<'_>, dss: &Dss) -> SignatureCheck {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(msg, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// tokio-postgres' [`MakeTlsConnect`] over tokio-rustls.
#[derive(Clone)]
pub(crate) struct MakeRustls {
    config: Arc<ClientConfig>,
    verifies: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{host:?} is not a valid host name for TLS verification")]
pub(crate) struct BadHostName {
    host: String,
}

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = BadHostName;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, BadHostName> {
        let name = match ServerName::try_from(domain.to_owned()) {
            Ok(name) => name,
            // Without verification the name only feeds SNI; a Unix socket
            // path has none to give.
            Err(_) if !self.verifies => {
                ServerName::try_from("localhost").map_err(|_| BadHostName {
                    host: domain.to_owned(),
                })?
            }
            Err(_) => {
                return Err(BadHostName {
                    host: domain.to_owned(),
                });
            }
        };
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

pub(crate) struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let stream = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(Box::new(stream)))
        })
    }
}

pub(crate) struct RustlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM then runs without channel binding (SCRAM-SHA-256, not -PLUS).
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
