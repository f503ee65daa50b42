//! What checking credentials costs a call: a cached token (every call after the first), an API
//! key, and a first check of a JWT by algorithm (signature and claims).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auth::jwt::{Algorithm, JwksSource, JwtSettings, JwtVerifier};
use auth::{AuthSettings, Authenticator, Grant, api_key_hash};
use control::access::{Roles, TenantScope};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jsonwebtoken::{EncodingKey, Header};

const SECRET: &[u8] = b"a shared secret of at least 32 bytes, for the bench";

fn claims() -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    serde_json::json!({"sub": "gateway-eu", "iss": "https://id.bench/", "aud": "greyrouter",
        "exp": now + 3600, "roles": ["router"], "tenants": ["acme", "tier=gold"]})
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let raw = pair.public_key_raw();
    let b64 = |bytes: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    };
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "ec",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..])}]});
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks.to_string()).expect("jwks");
    let mut settings = JwtSettings::new("https://id.bench/", "greyrouter");
    settings.algorithms = vec![Algorithm::ES256, Algorithm::HS256];
    settings.hs256_secret = Some(SECRET.to_vec());
    settings.jwks = Some(JwksSource::File(path));
    let auth = runtime
        .block_on(Authenticator::start(AuthSettings {
            jwt: Some(settings.clone()),
            api_keys: [(
                api_key_hash("grk_bench_key"),
                Grant {
                    name: "bench".into(),
                    roles: Roles::ALL,
                    scope: TenantScope::All,
                },
            )]
            .into(),
            ..AuthSettings::default()
        }))
        .expect("auth");
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(SECRET).expect("secret"),
    )
    .expect("hs token");
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ec".into());
    let es = jsonwebtoken::encode(
        &header,
        &claims(),
        &EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("ec"),
    )
    .expect("es token");

    let mut group = c.benchmark_group("credentials");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(3));
    runtime
        .block_on(auth.bearer(&hs, "127.0.0.1"))
        .expect("first check");
    // What block_on itself costs, to subtract from the others.
    group.bench_function("runtime_floor", |b| {
        b.iter(|| runtime.block_on(async { std::hint::black_box(1) }));
    });
    group.bench_function("jwt_cached", |b| {
        b.iter(|| {
            runtime
                .block_on(auth.bearer(&hs, "127.0.0.1"))
                .expect("cached")
        });
    });
    group.bench_function("api_key", |b| {
        b.iter(|| {
            runtime
                .block_on(auth.bearer("grk_bench_key", "127.0.0.1"))
                .expect("key")
        });
    });
    // A first check: a verifier without a cache hit (each iteration is a new verifier's first).
    for (name, token) in [("jwt_first_hs256", &hs), ("jwt_first_es256", &es)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let verifier = JwtVerifier::new(settings.clone()).expect("verifier");
                    runtime.block_on(verifier.refresh()).expect("keys");
                    verifier
                },
                |verifier| runtime.block_on(verifier.verify(token)).expect("verified"),
                criterion::BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
