//! TLS termination with a certificate that SIGHUP replaces while running.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::server_config::TlsConfig;

/// TLS termination with a certificate that can be replaced while running.
pub struct Tls {
    pub(super) acceptor: tokio_rustls::TlsAcceptor,
    certificate: Arc<CurrentCertificate>,
    provider: Arc<CryptoProvider>,
    cert: PathBuf,
    key: PathBuf,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct CurrentCertificate(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.0.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

impl Tls {
    /// Loads the certificate chain and key of `server.tls` and builds the TLS settings:
    /// TLS 1.3 (and 1.2 when `min_version = "1.2"`), ALPN `h2` then `http/1.1`.
    ///
    /// # Errors
    /// A file cannot be read or parsed, holds no certificate, or the key does not match
    /// the certificate.
    pub fn new(config: &TlsConfig) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = load(config, &provider)?;
        let certificate = Arc::new(CurrentCertificate(RwLock::new(Arc::new(certified))));
        let versions: &[&rustls::SupportedProtocolVersion] = if config.min_version == "1.2" {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let mut settings = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(|error| anyhow::anyhow!("server.tls: {error}"))?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        settings.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(settings)),
            certificate,
            provider,
            cert: config.cert.clone(),
            key: config.key.clone(),
        })
    }

    /// Reads the certificate and key files again and serves them to new handshakes.
    /// Connections already open keep theirs.
    ///
    /// # Errors
    /// The new files are unusable (the reason names the file); the certificate in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = TlsConfig {
            cert: self.cert.clone(),
            key: self.key.clone(),
            min_version: String::new(),
        };
        let certified = load(&config, &self.provider)?;
        *self
            .certificate
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(certified);
        Ok(())
    }
}

fn load(config: &TlsConfig, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let cert = config.cert.display();
    let key = config.key.display();
    let chain = CertificateDer::pem_file_iter(&config.cert)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| anyhow::anyhow!("server.tls.cert ({cert}): {error}"))?;
    if chain.is_empty() {
        anyhow::bail!("server.tls.cert ({cert}): no PEM certificate in the file");
    }
    let private_key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|error| anyhow::anyhow!("server.tls.key ({key}): {error}"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        });
    for warning in certificate_warnings(&chain, key_mode(&config.key), now) {
        tracing::warn!(cert = %cert, key = %key, "{warning}");
    }
    CertifiedKey::from_der(chain, private_key, provider).map_err(|error| {
        anyhow::anyhow!(
            "server.tls: the key ({key}) and the certificate ({cert}) do not go together: {error}"
        )
    })
}

/// Handles SIGHUP for the life of the process (without a handler, SIGHUP would end it):
/// reloads the TLS certificate when `server.tls` is set (a bad new file is refused with the
/// reason logged and the previous certificate kept) and says what a restart is needed for.
pub async fn reload_on_hangup(hangups: Hangups, tls: Option<Arc<Tls>>) {
    #[cfg(unix)]
    {
        {
            let mut hangups = match hangups.0 {
                Ok(hangups) => hangups,
                Err(error) => {
                    tracing::warn!(error = %error, "SIGHUP cannot be watched; TLS reload is off");
                    return;
                }
            };
            reload_loop(&mut hangups, tls).await;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (hangups, tls);
    }
}

/// SIGHUP, watched from the moment the gateway is built: from then on it never takes its
/// default action (ending the process), and none sent after start-up is missed.
#[derive(Debug)]
pub struct Hangups(#[cfg(unix)] io::Result<tokio::signal::unix::Signal>);

impl Hangups {
    /// Starts watching SIGHUP (needs the Tokio runtime).
    pub fn watch() -> Self {
        Self(
            #[cfg(unix)]
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()),
        )
    }
}

#[cfg(unix)]
async fn reload_loop(hangups: &mut tokio::signal::unix::Signal, tls: Option<Arc<Tls>>) {
    {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP received");
            match &tls {
                Some(tls) => {
                    // Files are read off the runtime's workers.
                    let reloading = Arc::clone(tls);
                    match tokio::task::spawn_blocking(move || reloading.reload()).await {
                        Ok(Ok(())) => {
                            tracing::info!(cert = %tls.cert.display(), "TLS certificate reloaded");
                        }
                        Ok(Err(error)) => tracing::error!(
                            error = %error,
                            "TLS certificate not reloaded; the previous one stays in use"
                        ),
                        Err(error) => tracing::error!(
                            error = %error,
                            "TLS certificate not reloaded; the previous one stays in use"
                        ),
                    }
                }
                None => tracing::info!("no server.tls: no certificate to reload"),
            }
            tracing::warn!(
                "SIGHUP reloads only the TLS certificate: changes to routes, upstreams, roles, \
                 tiers and every other setting need a restart"
            );
        }
    }
}

/// What an operator should hear about a certificate and key that load: a certificate
/// outside its validity period, a key file others can read.
fn certificate_warnings(
    chain: &[CertificateDer<'_>],
    key_mode: Option<u32>,
    now: i64,
) -> Vec<&'static str> {
    let mut warnings = Vec::new();
    if let Some(first) = chain.first()
        && let Ok((_, certificate)) = x509_parser::parse_x509_certificate(first.as_ref())
    {
        let validity = certificate.validity();
        if validity.not_after.timestamp() < now {
            warnings.push("the TLS certificate has expired");
        } else if validity.not_before.timestamp() > now {
            warnings.push("the TLS certificate is not valid yet");
        }
    }
    if key_mode.is_some_and(|mode| mode & 0o077 != 0) {
        warnings.push("the TLS key file can be read by other users than its owner (chmod 600)");
    }
    warnings
}

#[cfg(unix)]
fn key_mode(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .ok()
        .map(|metadata| metadata.permissions().mode())
}

#[cfg(not(unix))]
fn key_mode(_path: &std::path::Path) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_warnings_name_expiry_and_readable_keys() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let chain = [params.self_signed(&key).unwrap().der().clone()];
        // 2025, 2033 and 2017.
        let now = 1_750_000_000;
        assert!(certificate_warnings(&chain, Some(0o100_600), now).is_empty());
        assert_eq!(
            certificate_warnings(&chain, Some(0o100_644), now),
            ["the TLS key file can be read by other users than its owner (chmod 600)"]
        );
        assert_eq!(
            certificate_warnings(&chain, Some(0o600), 2_000_000_000),
            ["the TLS certificate has expired"]
        );
        assert_eq!(
            certificate_warnings(&chain, Some(0o600), 1_500_000_000),
            ["the TLS certificate is not valid yet"]
        );
    }
}
