//! Bearer JWTs: verified against a shared HS256 secret or the public keys of a JWKS (a file
//! or a URL), checked as RFC 8725 asks.
//!
//! - The algorithm comes from the key, never from the token: a token whose header names
//!   another algorithm than its key's is refused, so an HMAC secret is never a public key's
//!   stand-in and `none` is never accepted (it is not even parsed). Keys whose algorithm is not
//!   in the configured allow-list are left out of the key set.
//! - `exp`, `iss`, `aud` and `sub` are required; `nbf` is checked when present; `leeway`
//!   allows for clock skew.
//! - An unknown `kid` triggers one fetch of the key set, at most every `jwks_min_refresh`;
//!   the key set is fetched again every `jwks_refresh` in any case.
//! - Verified tokens are cached until they expire (at most 5 minutes, and the cache is emptied
//!   when the key set changes), at most `cache_entries` of them (each at most
//!   `max_token_bytes`), so routing with a token costs a hash lookup, not a signature check.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use control::access::{Caller, Roles, TenantScope};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{DecodingKey, Validation};

pub use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::Refusal;
use crate::fetch;

/// Where the public keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS document in a file (read again on every refresh).
    File(PathBuf),
    /// A JWKS document at an `http://` or `https://` URL.
    Url(String),
}

/// How bearer JWTs are checked.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtSettings {
    /// The only accepted `iss`.
    pub issuer: String,
    /// The `aud` a token must name.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Algorithms accepted (of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA,
    /// HS256).
    pub algorithms: Vec<Algorithm>,
    /// The claim holding the roles (a dotted path such as `realm_access.roles`): a list of
    /// names or one space-separated string.
    pub roles_claim: String,
    /// The claim holding the tenant scope (a list of tenant ids, `key=value` labels or `*`);
    /// absent: every tenant.
    pub tenants_claim: String,
    /// The claim naming the tenant the token speaks for (the gateway routes by it); none:
    /// not read.
    pub tenant_claim: Option<String>,
    /// The HS256 shared secret, for small setups.
    pub hs256_secret: Option<Vec<u8>>,
    /// The public keys.
    pub jwks: Option<JwksSource>,
    /// A CA bundle (PEM) trusted for an `https://` JWKS URL besides the system's roots.
    pub jwks_ca_file: Option<PathBuf>,
    /// How often the key set is fetched again.
    pub jwks_refresh: Duration,
    /// Least time between two fetches caused by unknown key ids.
    pub jwks_min_refresh: Duration,
    /// Longest token accepted, in bytes.
    pub max_token_bytes: usize,
    /// Most verified tokens cached.
    pub cache_entries: usize,
}

impl JwtSettings {
    /// Settings for `issuer` and `audience` with the defaults for everything else.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> JwtSettings {
        JwtSettings {
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: Duration::from_secs(30),
            algorithms: vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA],
            roles_claim: "roles".into(),
            tenants_claim: "tenants".into(),
            tenant_claim: None,
            hs256_secret: None,
            jwks: None,
            jwks_ca_file: None,
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refresh: Duration::from_secs(30),
            max_token_bytes: 8 * 1024,
            cache_entries: 10_000,
        }
    }
}

/// Reads an algorithm name of the allow-list.
pub fn algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// One public key of the key set, with the one algorithm it verifies.
struct PublicKey {
    key: DecodingKey,
    algorithm: Algorithm,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<PublicKey>>,
    without_kid: Vec<Arc<PublicKey>>,
}

impl KeySet {
    fn find(&self, kid: Option<&str>, algorithm: Algorithm) -> Option<Arc<PublicKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            // Without a kid, only an unambiguous key of that algorithm will do.
            None => {
                let mut keys = self
                    .by_kid
                    .values()
                    .chain(&self.without_kid)
                    .filter(|key| key.algorithm == algorithm);
                match (keys.next(), keys.next()) {
                    (Some(key), None) => Some(Arc::clone(key)),
                    _ => None,
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }
}

/// The algorithm a JWK verifies: its `alg`, or the one its key type implies.
fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if let Some(alg) = jwk.common.key_algorithm {
        return Some(match alg {
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::RS384 => Algorithm::RS384,
            KeyAlgorithm::RS512 => Algorithm::RS512,
            KeyAlgorithm::PS256 => Algorithm::PS256,
            KeyAlgorithm::PS384 => Algorithm::PS384,
            KeyAlgorithm::PS512 => Algorithm::PS512,
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::ES384 => Algorithm::ES384,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            // Symmetric and encryption keys have no place in a set of public keys.
            _ => return None,
        });
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(params) => {
            (params.curve == EllipticCurve::Ed25519).then_some(Algorithm::EdDSA)
        }
        _ => None,
    }
}

/// Parses a JWKS document, keeping the keys of allowed algorithms.
fn key_set(document: &[u8], allowed: &[Algorithm]) -> Result<KeySet, String> {
    let set: JwkSet =
        serde_json::from_slice(document).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = KeySet::default();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone();
        let Some(algorithm) = jwk_algorithm(jwk).filter(|alg| allowed.contains(alg)) else {
            tracing::warn!(?kid, "JWKS key left out: its algorithm is not allowed");
            continue;
        };
        let key = match DecodingKey::from_jwk(jwk) {
            Ok(key) => key,
            Err(err) => {
                tracing::warn!(?kid, %err, "JWKS key left out: unreadable");
                continue;
            }
        };
        let key = Arc::new(PublicKey { key, algorithm });
        match kid {
            Some(kid) => {
                keys.by_kid.insert(kid, key);
            }
            None => keys.without_kid.push(key),
        }
    }
    Ok(keys)
}

/// Fetches the key set of the verifier `owner` holds every `every`, for as long as the owner
/// lives; on failure the last keys stay in use.
pub fn refresh_every<T: Send + Sync + 'static>(
    owner: std::sync::Weak<T>,
    every: Duration,
    verifier: fn(&T) -> Option<&JwtVerifier>,
) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(owner) = owner.upgrade() else {
                return;
            };
            if let Some(jwt) = verifier(&owner)
                && let Err(err) = jwt.refresh().await
            {
                tracing::warn!(%err, "cannot refresh the JWKS; the last keys stay in use");
            }
        }
    });
}

/// Verified tokens: the caller each names, and until when it is trusted without a check.
type TokenCache = HashMap<Box<str>, (Arc<Caller>, Instant)>;

/// Checks bearer JWTs.
pub struct JwtVerifier {
    settings: JwtSettings,
    secret: Option<DecodingKey>,
    keys: RwLock<Arc<KeySet>>,
    /// When the key set was last fetched; one fetch at a time.
    fetched: tokio::sync::Mutex<Option<Instant>>,
    /// Verified tokens, by the token itself: a hit costs a hash of the token, no signature.
    cache: RwLock<TokenCache>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.settings.issuer)
            .field("audience", &self.settings.audience)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// A verifier; the key set is fetched by [`JwtVerifier::refresh`].
    pub fn new(settings: JwtSettings) -> Result<JwtVerifier, String> {
        let secret = match &settings.hs256_secret {
            Some(secret) if settings.algorithms.contains(&Algorithm::HS256) => {
                if secret.len() < 32 {
                    return Err("the HS256 secret must be at least 32 bytes".into());
                }
                Some(DecodingKey::from_secret(secret).map_err(|e| e.to_string())?)
            }
            Some(_) => return Err("an HS256 secret is set but HS256 is not allowed".into()),
            None => None,
        };
        if secret.is_none() && settings.jwks.is_none() {
            return Err("JWT auth needs a JWKS (file or URL) or an HS256 secret".into());
        }
        Ok(JwtVerifier {
            settings,
            secret,
            keys: RwLock::new(Arc::new(KeySet::default())),
            fetched: tokio::sync::Mutex::new(None),
            cache: RwLock::new(HashMap::new()),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    /// Fetches the key set again (when there is one); on failure the last one is kept.
    pub async fn refresh(&self) -> Result<usize, String> {
        let mut fetched = self.fetched.lock().await;
        self.fetch(&mut fetched).await
    }

    async fn fetch(&self, fetched: &mut Option<Instant>) -> Result<usize, String> {
        let Some(source) = &self.settings.jwks else {
            return Ok(0);
        };
        *fetched = Some(Instant::now());
        let document = match source {
            JwksSource::File(path) => {
                let file = path.clone();
                tokio::task::spawn_blocking(move || std::fs::read(file))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            }
            JwksSource::Url(url) => {
                fetch::get(url, self.settings.jwks_ca_file.as_deref(), 1024 * 1024).await?
            }
        };
        let keys = key_set(&document, &self.settings.algorithms)?;
        let count = keys.len();
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        // Tokens of keys that left the set must not stay accepted from the cache.
        self.cache
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        Ok(count)
    }

    /// Fetches the key set for an unknown kid, unless fetched within `jwks_min_refresh`.
    async fn fetch_for_unknown_kid(&self) {
        let mut fetched = self.fetched.lock().await;
        let recent = fetched.is_some_and(|at| at.elapsed() < self.settings.jwks_min_refresh);
        if !recent && let Err(err) = self.fetch(&mut fetched).await {
            tracing::warn!(%err, "cannot fetch the JWKS for an unknown key id");
        }
    }

    /// Verifies `token` and answers who it names.
    pub async fn verify(&self, token: &str) -> Result<Arc<Caller>, Refusal> {
        if token.len() > self.settings.max_token_bytes {
            return Err(Refusal::Invalid("token too large"));
        }
        if let Some(caller) = self.cached(token) {
            return Ok(caller);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|err| {
            tracing::debug!(%err, "token refused: bad header");
            Refusal::Invalid("invalid token")
        })?;
        if !self.settings.algorithms.contains(&header.alg) {
            tracing::debug!(alg = ?header.alg, "token refused: algorithm not allowed");
            return Err(Refusal::Invalid("invalid token"));
        }
        let key = if header.alg == Algorithm::HS256 {
            self.secret
                .clone()
                .ok_or(Refusal::Invalid("invalid token"))?
        } else {
            let kid = header.kid.as_deref();
            let found = self.current_keys().find(kid, header.alg);
            let found = match found {
                Some(key) => key,
                None => {
                    self.fetch_for_unknown_kid().await;
                    self.current_keys().find(kid, header.alg).ok_or_else(|| {
                        tracing::debug!(?kid, "token refused: unknown key");
                        Refusal::Invalid("invalid token")
                    })?
                }
            };
            // The key decides the algorithm, never the token.
            if found.algorithm != header.alg {
                tracing::debug!(?kid, "token refused: algorithm differs from its key's");
                return Err(Refusal::Invalid("invalid token"));
            }
            found.key.clone()
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_nbf = true;
        validation.validate_exp = true;
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|err| {
            tracing::debug!(%err, "token refused");
            match err.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    Refusal::Invalid("token expired")
                }
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                    Refusal::Invalid("token not yet valid")
                }
                _ => Refusal::Invalid("invalid token"),
            }
        })?;
        let caller = Arc::new(self.caller(&data.claims)?);
        let exp = data.claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        self.remember(token, &caller, exp);
        Ok(caller)
    }

    fn current_keys(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The caller a verified token's claims name.
    fn caller(&self, claims: &Value) -> Result<Caller, Refusal> {
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if subject.is_empty() || routing_core::validate::actor("sub", subject).is_err() {
            return Err(Refusal::Invalid("invalid token"));
        }
        let roles = Roles::parse(
            strings(claim(claims, &self.settings.roles_claim))
                .iter()
                .map(String::as_str),
        );
        let scope = match claim(claims, &self.settings.tenants_claim) {
            None => TenantScope::All,
            Some(value) => TenantScope::parse(strings(Some(value)).iter().map(String::as_str))
                .map_err(|_| Refusal::Invalid("invalid token"))?,
        };
        let tenant = match &self.settings.tenant_claim {
            None => None,
            Some(path) => match claim(claims, path) {
                None => None,
                Some(Value::String(tenant))
                    if routing_core::validate::name("tenant", tenant).is_ok() =>
                {
                    Some(tenant.clone())
                }
                Some(_) => return Err(Refusal::Invalid("invalid token")),
            },
        };
        Ok(Caller {
            subject: subject.to_owned(),
            method: "jwt",
            roles,
            scope,
            tenant,
        })
    }

    /// The caller of a token verified before and still trusted.
    pub(crate) fn cached(&self, token: &str) -> Option<Arc<Caller>> {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        cache
            .get(token)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(caller, _)| Arc::clone(caller))
    }

    fn remember(&self, token: &str, caller: &Arc<Caller>, exp: u64) {
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // Until the token expires (with the leeway it was accepted under), at most 5 minutes.
        let left = (exp + self.settings.leeway.as_secs())
            .saturating_sub(now_unix)
            .min(300);
        if left == 0 {
            return;
        }
        let until = Instant::now() + Duration::from_secs(left);
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= self.settings.cache_entries {
            let now = Instant::now();
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= self.settings.cache_entries {
                cache.clear();
            }
        }
        cache.insert(token.into(), (Arc::clone(caller), until));
    }

    /// Tokens cached now.
    pub fn cached_tokens(&self) -> usize {
        self.cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The claim at a dotted path.
fn claim<'v>(claims: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.')
        .try_fold(claims, |value, part| value.get(part))
}

/// A claim's strings: a list of strings, or one space-separated string (as `scope` is).
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(text)) => text.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// The distinct algorithms named in `names`, or the first unknown name.
pub fn algorithms<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Vec<Algorithm>, String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for name in names {
        let alg =
            algorithm(name).ok_or_else(|| format!("unknown or refused algorithm {name:?}"))?;
        if seen.insert(name.to_owned()) {
            out.push(alg);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
