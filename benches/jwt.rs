//! JWT verification cost: one `authenticate` or `realtime:join` costs one verification.
//!
//! `cargo bench --bench jwt`. Keys are the test keys in `src/realtime/testdata/`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Map, Value};
use shardcast::realtime::auth::{
    AccessSigner, AccessVerifier, AuthConfig, JwtAlgorithm, RoomTokens, Secret,
};

const RSA_PRIVATE: &str = include_str!("../src/realtime/testdata/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("../src/realtime/testdata/rsa_public.pem");
const EC_PRIVATE: &str = include_str!("../src/realtime/testdata/ec_private.pem");
const EC_PUBLIC: &str = include_str!("../src/realtime/testdata/ec_public.pem");

fn config(algorithm: JwtAlgorithm) -> AuthConfig {
    match algorithm {
        JwtAlgorithm::Hs256 => AuthConfig::hs256("bench-secret-bench-secret-bench-secret"),
        JwtAlgorithm::Rs256 => AuthConfig {
            private_key_pem: Some(Secret::from(RSA_PRIVATE)),
            ..AuthConfig::public_key(algorithm, RSA_PUBLIC)
        },
        JwtAlgorithm::Es256 => AuthConfig {
            private_key_pem: Some(Secret::from(EC_PRIVATE)),
            ..AuthConfig::public_key(algorithm, EC_PUBLIC)
        },
    }
}

fn verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("jwt_verify_access");
    let mut claims = Map::new();
    claims.insert("companies".into(), Value::from(vec!["acme", "globex"]));
    for algorithm in [
        JwtAlgorithm::Hs256,
        JwtAlgorithm::Rs256,
        JwtAlgorithm::Es256,
    ] {
        let cfg = config(algorithm);
        let token = AccessSigner::new(&cfg)
            .expect("signer")
            .sign("user-1", 3600, &claims)
            .expect("token");
        let verifier = AccessVerifier::new(&cfg).expect("verifier");
        assert!(verifier.verify(&token).is_ok());
        group.bench_function(algorithm.name(), |b| {
            b.iter(|| verifier.verify(black_box(&token)))
        });
    }
    group.finish();

    let rooms = RoomTokens::new(
        &Secret::from("bench-room-secret-bench-room-secret"),
        3600,
        30,
    )
    .expect("rooms");
    let token = rooms
        .sign("user-1", "/channels/general/messages")
        .expect("room token");
    c.bench_function("jwt_verify_room_HS256", |b| {
        b.iter(|| rooms.verify(black_box(&token), "user-1", "/channels/general/messages"))
    });
}

criterion_group!(benches, verify);
criterion_main!(benches);
