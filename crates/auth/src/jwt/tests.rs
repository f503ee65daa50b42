//! The bad-token corpus, and the rules of keys and claims.
//!
//! `test-rsa-key.pem` is a throwaway key made for these tests only.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use control::access::Role;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

use super::*;

const RSA_KEY: &[u8] = include_bytes!("test-rsa-key.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("test-rsa-public.pem");
const RSA_N: &str = include_str!("test-rsa-n.txt");
const ISSUER: &str = "https://id.example.com/";
const AUDIENCE: &str = "greyrouter";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An EC P-256 key: its signing key and its JWK.
fn ec_key(kid: &str) -> (EncodingKey, Value) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec key");
    let raw = pair.public_key_raw();
    let (x, y) = raw[1..].split_at(32);
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(x), "y": b64(y)});
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("ec pem");
    (key, jwk)
}

/// An Ed25519 key: its signing key and its JWK.
fn ed_key(kid: &str) -> (EncodingKey, Value) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed key");
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(pair.public_key_raw())});
    let key = EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).expect("ed pem");
    (key, jwk)
}

fn rsa_jwk(kid: &str) -> Value {
    json!({"kty": "RSA", "kid": kid, "n": RSA_N.trim(), "e": "AQAB"})
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_KEY).expect("rsa pem")
}

fn claims() -> Value {
    json!({
        "sub": "alice@example.com",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now() + 600,
        "iat": now(),
        "roles": ["operator", "unrelated"],
        "tenants": ["acme", "tier=gold"],
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).expect("sign")
}

struct Fixture {
    verifier: JwtVerifier,
    dir: tempfile::TempDir,
    ec: EncodingKey,
    ed: EncodingKey,
}

async fn fixture(secret: Option<&[u8]>) -> Fixture {
    let dir = tempfile::tempdir().expect("dir");
    let (ec, ec_jwk) = ec_key("ec-1");
    let (ed, ed_jwk) = ed_key("ed-1");
    let jwks = json!({"keys": [rsa_jwk("rsa-1"), ec_jwk, ed_jwk]});
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks.to_string()).expect("write jwks");
    let mut settings = JwtSettings::new(ISSUER, AUDIENCE);
    settings.jwks = Some(JwksSource::File(path));
    settings.leeway = Duration::from_secs(5);
    if let Some(secret) = secret {
        settings.algorithms.push(Algorithm::HS256);
        settings.hs256_secret = Some(secret.to_vec());
    }
    let verifier = JwtVerifier::new(settings).expect("verifier");
    assert_eq!(verifier.refresh().await, Ok(3));
    Fixture {
        verifier,
        dir,
        ec,
        ed,
    }
}

#[tokio::test]
async fn good_tokens_of_every_key_type_name_their_caller() {
    let secret = [7u8; 32];
    let f = fixture(Some(&secret)).await;
    let tokens = [
        sign(Algorithm::RS256, Some("rsa-1"), &claims(), &rsa_key()),
        sign(Algorithm::ES256, Some("ec-1"), &claims(), &f.ec),
        sign(Algorithm::EdDSA, Some("ed-1"), &claims(), &f.ed),
        sign(
            Algorithm::HS256,
            None,
            &claims(),
            &EncodingKey::from_secret(&secret).expect("secret"),
        ),
    ];
    for token in tokens {
        let caller = f.verifier.verify(&token).await.expect("accepted");
        assert_eq!(caller.subject, "alice@example.com");
        assert_eq!(caller.method, "jwt");
        assert!(caller.roles.grant(Role::Operator));
        assert!(!caller.roles.grant(Role::Admin));
        assert_eq!(
            caller.scope,
            TenantScope::parse(["acme", "tier=gold"]).expect("scope")
        );
    }
    // Roles from a nested claim, as one space-separated string; no tenants claim: all tenants.
    let mut settings = f.verifier.settings().clone();
    settings.roles_claim = "realm_access.roles".into();
    let nested = JwtVerifier::new(settings).expect("verifier");
    nested.refresh().await.expect("keys");
    let mut claims = claims();
    claims["realm_access"] = json!({"roles": "viewer router"});
    claims.as_object_mut().map(|c| c.remove("tenants"));
    let caller = nested
        .verify(&sign(Algorithm::RS256, Some("rsa-1"), &claims, &rsa_key()))
        .await
        .expect("accepted");
    assert!(caller.roles.grant(Role::Router) && caller.roles.grant(Role::Viewer));
    assert!(caller.scope.is_all());
}

/// Every token of the corpus is refused; the count is printed.
#[tokio::test]
async fn the_bad_token_corpus_is_refused_whole() {
    let secret = [9u8; 32];
    let f = fixture(Some(&secret)).await;
    let good = sign(Algorithm::RS256, Some("rsa-1"), &claims(), &rsa_key());
    assert!(f.verifier.verify(&good).await.is_ok(), "the control token");
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = claims();
        change(&mut claims);
        sign(Algorithm::RS256, Some("rsa-1"), &claims, &rsa_key())
    };
    let parts: Vec<&str> = good.split('.').collect();
    let (header, payload, signature) = (parts[0], parts[1], parts[2]);
    let mut tampered_payload = claims();
    tampered_payload["roles"] = json!(["admin"]);
    let flip = |text: &str| {
        let mut bytes = URL_SAFE_NO_PAD.decode(text).expect("b64");
        if let Some(first) = bytes.first_mut() {
            *first ^= 1;
        }
        b64(&bytes)
    };
    let (other_ec, _) = ec_key("ec-1");
    let corpus: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(claims().to_string().as_bytes())
            ),
        ),
        (
            "HS256 signed with the RSA public key",
            sign(
                Algorithm::HS256,
                Some("rsa-1"),
                &claims(),
                &EncodingKey::from_secret(RSA_PUBLIC).expect("secret"),
            ),
        ),
        (
            "RS256 header on an EC key",
            sign(Algorithm::RS256, Some("ec-1"), &claims(), &rsa_key()),
        ),
        ("expired", with(&|c| c["exp"] = json!(now() - 3600))),
        (
            "nbf in the future",
            with(&|c| c["nbf"] = json!(now() + 3600)),
        ),
        (
            "wrong iss",
            with(&|c| c["iss"] = json!("https://evil.example.com/")),
        ),
        ("wrong aud", with(&|c| c["aud"] = json!("another-service"))),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().map(|c| c.remove("exp"));
            }),
        ),
        (
            "no aud",
            with(&|c| {
                c.as_object_mut().map(|c| c.remove("aud"));
            }),
        ),
        (
            "no sub",
            with(&|c| {
                c.as_object_mut().map(|c| c.remove("sub"));
            }),
        ),
        (
            "unknown kid",
            sign(Algorithm::RS256, Some("rsa-9"), &claims(), &rsa_key()),
        ),
        (
            "tampered payload",
            format!(
                "{header}.{}.{signature}",
                b64(tampered_payload.to_string().as_bytes())
            ),
        ),
        (
            "tampered signature",
            format!("{header}.{payload}.{}", flip(signature)),
        ),
        (
            "a token for another key set",
            sign(Algorithm::ES256, Some("ec-1"), &claims(), &other_ec),
        ),
        (
            "HS256 with another secret",
            sign(
                Algorithm::HS256,
                None,
                &claims(),
                &EncodingKey::from_secret(&[1u8; 32]).expect("secret"),
            ),
        ),
        (
            "oversized (64 KiB)",
            with(&|c| c["pad"] = json!("x".repeat(64 * 1024))),
        ),
        ("garbage", "not a token at all".to_owned()),
        ("empty", String::new()),
        ("two parts", format!("{header}.{payload}")),
    ];
    let mut refused = 0;
    for (name, token) in &corpus {
        match f.verifier.verify(token).await {
            Ok(caller) => panic!("{name}: accepted as {caller:?}"),
            Err(Refusal::Invalid(_) | Refusal::Missing) => refused += 1,
            Err(Refusal::TooManyChecks(_)) => panic!("{name}: throttled, not checked"),
        }
    }
    println!(
        "bad-token corpus: {refused} of {} tokens refused",
        corpus.len()
    );
    assert_eq!(refused, corpus.len());
    // Only what is safe to say: expiry and not-yet-valid, nothing about which key or claim.
    assert_eq!(
        f.verifier.verify(&corpus[3].1).await,
        Err(Refusal::Invalid("token expired"))
    );
    assert_eq!(
        f.verifier.verify(&corpus[5].1).await,
        Err(Refusal::Invalid("invalid token"))
    );
}

#[tokio::test]
async fn an_unknown_kid_fetches_the_key_set_once_within_the_interval() {
    let f = fixture(None).await;
    let path = f.dir.path().join("jwks.json");
    let (new_key, new_jwk) = ec_key("ec-2");
    let token = sign(Algorithm::ES256, Some("ec-2"), &claims(), &new_key);
    // Published after the last fetch, within jwks_min_refresh: not fetched, refused.
    let mut jwks: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    if let Some(keys) = jwks["keys"].as_array_mut() {
        keys.push(new_jwk);
    }
    std::fs::write(&path, jwks.to_string()).expect("write");
    assert!(f.verifier.verify(&token).await.is_err());
    // With no least interval, the unknown kid fetches the set, and the token passes.
    let mut settings = f.verifier.settings().clone();
    settings.jwks_min_refresh = Duration::ZERO;
    let eager = JwtVerifier::new(settings).expect("verifier");
    *eager.fetched.lock().await = Some(Instant::now());
    assert!(eager.verify(&token).await.is_ok());
}

#[tokio::test]
async fn verified_tokens_are_cached_and_the_cache_is_bounded() {
    let f = fixture(None).await;
    let mut settings = f.verifier.settings().clone();
    settings.cache_entries = 4;
    let verifier = JwtVerifier::new(settings).expect("verifier");
    verifier.refresh().await.expect("keys");
    for i in 0..10 {
        let mut claims = claims();
        claims["jti"] = json!(i);
        let token = sign(Algorithm::RS256, Some("rsa-1"), &claims, &rsa_key());
        verifier.verify(&token).await.expect("accepted");
        assert!(verifier.cached_tokens() <= 4);
    }
    assert!(verifier.cached_tokens() > 0);
}

#[test]
fn settings_refuse_a_short_secret_and_no_keys() {
    let mut settings = JwtSettings::new(ISSUER, AUDIENCE);
    assert!(JwtVerifier::new(settings.clone()).is_err());
    settings.algorithms.push(Algorithm::HS256);
    settings.hs256_secret = Some(b"short".to_vec());
    assert!(JwtVerifier::new(settings).is_err());
    assert!(algorithms(["RS256", "none"]).is_err());
    assert_eq!(
        algorithms(["RS256", "RS256", "EdDSA"]),
        Ok(vec![Algorithm::RS256, Algorithm::EdDSA])
    );
}

/// Serves `body` as the answer to every HTTP request on a local port; counts the requests.
async fn jwks_server(body: String) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().expect("addr")
    );
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&served);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = vec![0u8; 4096];
            let _ = socket.read(&mut request).await;
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    (url, served)
}

#[tokio::test]
async fn keys_are_fetched_from_a_jwks_url_and_an_unknown_kid_fetches_once() {
    let (ec, ec_jwk) = ec_key("ec-url");
    let (url, served) = jwks_server(json!({"keys": [ec_jwk]}).to_string()).await;
    let mut settings = JwtSettings::new(ISSUER, AUDIENCE);
    settings.jwks = Some(JwksSource::Url(url));
    let verifier = JwtVerifier::new(settings).expect("verifier");
    assert_eq!(verifier.refresh().await, Ok(1));
    let token = sign(Algorithm::ES256, Some("ec-url"), &claims(), &ec);
    assert!(verifier.verify(&token).await.is_ok());
    let fetched = served.load(std::sync::atomic::Ordering::SeqCst);
    // Unknown kids within jwks_min_refresh of the last fetch: refused, no fetch at all.
    for _ in 0..5 {
        let unknown = sign(Algorithm::ES256, Some("nobody"), &claims(), &ec);
        assert!(verifier.verify(&unknown).await.is_err());
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), fetched);
}
