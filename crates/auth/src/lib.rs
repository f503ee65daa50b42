//! Who is calling, proven: TLS for the listeners, and the tower layer that turns a request's
//! credentials into a [`control::access::Caller`] and admits or refuses the call.
//!
//! Layout:
//! - [`tls`]: rustls server configuration with optional client certificates, reloaded when
//!   its files change, and the stream of accepted TLS connections;
//! - [`jwt`]: bearer JWTs from a JWKS (file or URL) or an HS256 secret, checked per RFC 8725;
//! - [`layer`]: the tower layer every front door puts in front of its services;
//! - [`fetch`]: the one HTTP GET (a JWKS URL).
//!
//! Credentials, in order: `authorization: Bearer <token>`, where the token is a static API key
//! (matched by its SHA-256) or a JWT; else a verified client certificate whose subject is
//! configured. Auth off (no `[auth]` section) makes every caller [`Caller::unrestricted`].
//!
//! What each operation needs, and what a tenant scope allows, is not decided here but in
//! [`control::access`], for every front door alike.

pub mod fetch;
pub mod jwt;
pub mod layer;
pub mod tls;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use control::access::{Caller, Roles, TenantScope};
use routing_core::limits::{Buckets, Rate};
use sha2::{Digest, Sha256};

pub use layer::{AuthLayer, Operation};

/// Why credentials were refused: the message says no more than is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No credentials at all.
    #[error("missing credentials: send `authorization: Bearer <token>`")]
    Missing,
    /// Credentials that do not prove anything.
    #[error("{0}")]
    Invalid(&'static str),
    /// Too many tokens seen for the first time from one address: checking a signature costs
    /// the router up to a third of a millisecond; retry after the given milliseconds.
    #[error("too many new tokens from this address; retry after {0} ms")]
    TooManyChecks(u64),
}

/// An identity configured by name: a static API key or a client certificate's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The caller's name (the audit trail's actor).
    pub name: String,
    /// Roles held.
    pub roles: Roles,
    /// Tenants it may read and change.
    pub scope: TenantScope,
}

/// How callers prove who they are.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuthSettings {
    /// Bearer JWTs.
    pub jwt: Option<jwt::JwtSettings>,
    /// Static API keys by the lowercase hex SHA-256 of the key.
    pub api_keys: HashMap<String, Grant>,
    /// Client certificates by subject common name.
    pub certificates: HashMap<String, Grant>,
    /// Tokens checked for the first time (a signature check) per second per peer address,
    /// twice that in a burst; 0: no limit.
    pub first_checks_per_second_per_address: f64,
}

/// Checks credentials.
#[derive(Debug)]
pub struct Authenticator {
    jwt: Option<jwt::JwtVerifier>,
    /// Budgets of first checks by peer address.
    first_checks: Option<Mutex<Buckets<String>>>,
    epoch: Instant,
    api_keys: HashMap<[u8; 32], Arc<Caller>>,
    certificates: HashMap<String, Arc<Caller>>,
}

/// Most peer addresses with a budget of first checks of their own.
const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// Longest bearer value read (a JWT or an API key), in bytes.
pub const MAX_BEARER_BYTES: usize = 16 * 1024;

impl Authenticator {
    /// An authenticator; with JWTs, the key set is fetched once before it answers (a JWKS
    /// URL that cannot be reached is logged and tried again on the first unknown key).
    pub async fn start(settings: AuthSettings) -> Result<Authenticator, String> {
        let jwt = settings.jwt.map(jwt::JwtVerifier::new).transpose()?;
        if let Some(verifier) = &jwt {
            match verifier.refresh().await {
                Ok(keys) => tracing::info!(keys, "JWT public keys loaded"),
                Err(err) => match verifier.settings().jwks {
                    Some(jwt::JwksSource::Url(_)) => {
                        tracing::error!(%err, "cannot fetch the JWKS; tokens signed with its keys are refused until it answers")
                    }
                    _ => return Err(err),
                },
            }
        }
        let mut api_keys = HashMap::new();
        for (hash, grant) in settings.api_keys {
            api_keys.insert(hex_digest(&hash)?, caller(&grant, "api-key"));
        }
        let certificates = settings
            .certificates
            .into_iter()
            .map(|(subject, grant)| (subject, caller(&grant, "certificate")))
            .collect();
        let rate = settings.first_checks_per_second_per_address;
        let first_checks = (rate > 0.0).then(|| {
            let rate = Rate {
                per_second: rate,
                burst: 2.0 * rate,
            };
            Mutex::new(Buckets::new(rate, MAX_TRACKED_ADDRESSES, 0))
        });
        Ok(Authenticator {
            jwt,
            first_checks,
            epoch: Instant::now(),
            api_keys,
            certificates,
        })
    }

    /// The JWT verifier, when JWTs are configured.
    pub fn jwt(&self) -> Option<&jwt::JwtVerifier> {
        self.jwt.as_ref()
    }

    /// Checks a bearer value: an API key, else a JWT.
    pub async fn bearer(&self, token: &str, peer: &str) -> Result<Arc<Caller>, Refusal> {
        if token.len() > MAX_BEARER_BYTES {
            return Err(Refusal::Invalid("token too large"));
        }
        // A token verified before costs one lookup; API keys next; a first check last.
        if let Some(hit) = self.jwt.as_ref().and_then(|jwt| jwt.cached(token)) {
            return Ok(hit);
        }
        if !self.api_keys.is_empty() {
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if let Some(caller) = self.api_keys.get(&digest) {
                return Ok(Arc::clone(caller));
            }
        }
        let Some(verifier) = &self.jwt else {
            return Err(Refusal::Invalid("invalid token"));
        };
        if let Some(checks) = &self.first_checks {
            let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            checks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(peer, now_ms)
                .map_err(Refusal::TooManyChecks)?;
        }
        verifier.verify(token).await
    }

    /// Checks a verified client certificate (DER): its subject must be configured.
    pub fn certificate(&self, der: &[u8]) -> Result<Arc<Caller>, Refusal> {
        let subject = tls::subject_common_name(der)
            .ok_or(Refusal::Invalid("client certificate without a common name"))?;
        self.certificates
            .get(&subject)
            .map(Arc::clone)
            .ok_or(Refusal::Invalid("client certificate not allowed"))
    }

    /// Whether client certificates can name callers.
    pub fn takes_certificates(&self) -> bool {
        !self.certificates.is_empty()
    }
}

fn caller(grant: &Grant, method: &'static str) -> Arc<Caller> {
    Arc::new(Caller {
        subject: grant.name.clone(),
        method,
        roles: grant.roles,
        scope: grant.scope.clone(),
        tenant: None,
    })
}

/// Returns the lowercase hex SHA-256 of `key`, as configured for an API key.
pub fn api_key_hash(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn hex_digest(hex: &str) -> Result<[u8; 32], String> {
    let bad = || format!("bad API key hash {hex:?}: 64 hex digits (SHA-256) expected");
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = hex.get(2 * i..2 * i + 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use control::access::Role;

    use super::*;

    #[tokio::test]
    async fn new_tokens_from_one_address_are_checked_at_a_bounded_rate() {
        let mut jwt = jwt::JwtSettings::new("https://id.test/", "greyrouter");
        jwt.algorithms = vec![jwt::Algorithm::HS256];
        jwt.hs256_secret = Some(vec![7; 32]);
        let auth = Authenticator::start(AuthSettings {
            jwt: Some(jwt),
            first_checks_per_second_per_address: 1.0,
            ..AuthSettings::default()
        })
        .await
        .expect("auth");
        // A burst of two first checks, then the address waits; another address does not.
        for n in 0..2 {
            let refusal = auth.bearer(&format!("bad.token.{n}"), "10.0.0.1").await;
            assert_eq!(refusal, Err(Refusal::Invalid("invalid token")));
        }
        let throttled = auth.bearer("bad.token.3", "10.0.0.1").await;
        assert!(
            matches!(throttled, Err(Refusal::TooManyChecks(wait)) if wait > 0),
            "{throttled:?}"
        );
        assert_eq!(
            auth.bearer("bad.token.3", "10.0.0.2").await,
            Err(Refusal::Invalid("invalid token"))
        );
    }

    #[tokio::test]
    async fn an_api_key_is_matched_by_its_hash_and_anything_else_refused() {
        let grant = Grant {
            name: "ci".into(),
            roles: Roles::NONE.with(Role::Operator),
            scope: TenantScope::All,
        };
        let settings = AuthSettings {
            api_keys: [(api_key_hash("grk_secret"), grant)].into(),
            ..AuthSettings::default()
        };
        let auth = Authenticator::start(settings).await.expect("auth");
        let caller = auth.bearer("grk_secret", "peer").await.expect("known key");
        assert_eq!(caller.subject, "ci");
        assert_eq!(caller.method, "api-key");
        assert_eq!(
            auth.bearer("grk_other", "peer").await,
            Err(Refusal::Invalid("invalid token"))
        );
        assert!(auth.bearer(&"x".repeat(64 * 1024), "peer").await.is_err());
        assert!(hex_digest("zz").is_err());
        assert!(hex_digest(&"g".repeat(64)).is_err());
    }
}
