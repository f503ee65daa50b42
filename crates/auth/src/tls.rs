//! TLS for the listeners: rustls, optional client certificates (mTLS), and certificates read
//! again when their files change, without a restart.
//!
//! [`ServerTls::load`] reads the certificate chain, the key and (for mTLS) the CA bundle;
//! [`ServerTls::watch`] polls the files and swaps in a new configuration when one changes (a
//! file that does not parse keeps the last good configuration, with an error in the log).
//! [`ServerTls::incoming`] turns a TCP listener into a stream of TLS connections: handshakes
//! run apart from the accept loop, each within a deadline, and failed ones are dropped, never
//! handed to the server.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// The crypto provider of every TLS configuration (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertificates {
    /// No client certificates asked for.
    Off,
    /// Asked for and verified when sent; callers without one use a token.
    Optional,
    /// Every client must present one from the CA bundle.
    Required,
}

/// The files of a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain (PEM), the server's first.
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA bundle (PEM) client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Whether clients must present a certificate.
    pub client_certificates: ClientCertificates,
    /// ALPN protocols offered (`h2` for gRPC).
    pub alpn: Vec<Vec<u8>>,
}

/// A TLS server configuration that follows its files.
#[derive(Clone)]
pub struct ServerTls {
    files: Arc<TlsFiles>,
    config: Arc<RwLock<Arc<ServerConfig>>>,
    /// Counts the configurations swapped in since the first.
    reloaded: Arc<tokio::sync::watch::Sender<u64>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// Longest a TLS handshake may take.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// Handshakes finished and not yet taken by the server.
const ACCEPTED_QUEUE: usize = 256;

impl ServerTls {
    /// Reads the files.
    pub fn load(files: TlsFiles) -> Result<ServerTls, String> {
        let config = build(&files)?;
        Ok(ServerTls {
            files: Arc::new(files),
            config: Arc::new(RwLock::new(Arc::new(config))),
            reloaded: Arc::new(tokio::sync::watch::Sender::new(0)),
        })
    }

    /// The configuration in use now.
    pub fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reads the files again now; on failure the configuration in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let config = build(&self.files)?;
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        self.reloaded.send_modify(|count| *count += 1);
        Ok(())
    }

    /// Changes with every configuration swapped in (its value counts them): what waits for a
    /// rotation to be served awaits this.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloaded.subscribe()
    }

    /// Polls the files every `interval` and reloads when one changed; runs until dropped.
    pub async fn watch(self, interval: Duration) {
        let mut seen = stamps(&self.files);
        loop {
            tokio::time::sleep(interval).await;
            let now = stamps(&self.files);
            if now == seen {
                continue;
            }
            seen = now;
            match self.reload() {
                Ok(()) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificates reloaded")
                }
                Err(err) => {
                    tracing::error!(%err, "TLS certificates changed but cannot be read; the previous ones stay in use")
                }
            }
        }
    }

    /// TLS connections accepted on `listener` (TCP_NODELAY set), until the stream is dropped.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
        let (sender, receiver) = mpsc::channel(ACCEPTED_QUEUE);
        let tls = self.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    () = sender.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(err) => {
                            // Out of descriptors and the like: wait a little, keep serving.
                            tracing::warn!(%err, "cannot accept a connection");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = TlsAcceptor::from(tls.current());
                let sender = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = sender.send(Ok(stream)).await;
                        }
                        Ok(Err(err)) => tracing::debug!(%peer, %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(receiver)
    }
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn stamps(files: &TlsFiles) -> [Stamp; 3] {
    [
        stamp(&files.cert),
        stamp(&files.key),
        files.client_ca.as_deref().and_then(stamp),
    ]
}

/// Reads the PEM certificates of `path`.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// Reads the PEM private key of `path`.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("no usable private key in {}: {e}", path.display()))
}

fn build(files: &TlsFiles) -> Result<ServerConfig, String> {
    let chain = certificates(&files.cert)?;
    let key = private_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match (files.client_certificates, &files.client_ca) {
        (ClientCertificates::Off, _) => builder.with_no_client_auth(),
        (_, None) => return Err("client certificates need a CA bundle (client_ca_file)".into()),
        (wanted, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if wanted == ClientCertificates::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| e.to_string())?)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "certificate and key of {} do not make a server identity: {e}",
            files.cert.display()
        )
    })?;
    config.alpn_protocols.clone_from(&files.alpn);
    Ok(config)
}

/// The subject of a client certificate (its common name), as the caller's identity.
///
/// Reads just enough DER: `Certificate.tbsCertificate.subject`, the last `commonName`. The
/// certificate was verified against the CA bundle before it gets here.
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    let (certificate, _) = der::element(der, 0x30)?;
    let (tbs, _) = der::element(certificate, 0x30)?;
    let mut rest = tbs;
    // [0] version, optional.
    if rest.first() == Some(&0xa0) {
        rest = der::element(rest, 0xa0)?.1;
    }
    // serialNumber, signature, issuer, validity: skip; then subject.
    rest = der::element(rest, 0x02)?.1;
    rest = der::element(rest, 0x30)?.1;
    rest = der::element(rest, 0x30)?.1;
    rest = der::element(rest, 0x30)?.1;
    let (mut subject, _) = der::element(rest, 0x30)?;
    let mut name = None;
    // Name ::= SEQUENCE OF SET OF AttributeTypeAndValue
    while !subject.is_empty() {
        let (set, next) = der::element(subject, 0x31)?;
        subject = next;
        let mut set = set;
        while !set.is_empty() {
            let (pair, next) = der::element(set, 0x30)?;
            set = next;
            let (oid, value) = der::element(pair, 0x06)?;
            // 2.5.4.3 commonName
            if oid == [0x55, 0x04, 0x03] {
                let tag = *value.first()?;
                let (text, _) = der::element(value, tag)?;
                name = Some(String::from_utf8(text.to_vec()).ok()?);
            }
        }
    }
    name
}

mod der {
    /// Splits one DER element of tag `tag` off `input`: its contents and what follows.
    pub(super) fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (&found, rest) = input.split_first()?;
        if found != tag {
            return None;
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            let (bytes, rest) = rest.split_at(count);
            let len = bytes
                .iter()
                .fold(0usize, |len, byte| (len << 8) | usize::from(*byte));
            (len, rest)
        };
        if rest.len() < len {
            return None;
        }
        Some(rest.split_at(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_name_is_read_from_a_certificate() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gateway-eu");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(
            subject_common_name(cert.der()).as_deref(),
            Some("gateway-eu")
        );
        assert_eq!(subject_common_name(b"\x30\x82\xff\xff"), None);
        assert_eq!(subject_common_name(&[]), None);
        // Any prefix of a certificate is refused, never a panic.
        for len in 0..cert.der().len() {
            let _ = subject_common_name(&cert.der()[..len]);
        }
    }
}
