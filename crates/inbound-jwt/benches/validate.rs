//! Validation cost: RS256 and ES256, cold (full parse + signature + claims; cache disabled) and
//! cached (SHA-256 + lookup), plus the whole per-request `authorize` on a cached token and the
//! bypass matcher.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use inbound_jwt::{BypassPaths, JwtAuth, Validator};
use proxy_core::metrics::Metrics;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// Validation only suspends for an unknown-`kid` refetch, which a fixed key set never does:
/// poll once instead of paying for a runtime per iteration.
fn now_or_never<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("validation suspended"),
    }
}

fn validators() -> (Validator, Validator) {
    let k = keys();
    let jwks = jwks_doc(&[k.rsa.public.clone(), k.p256.public.clone()]);
    let mut cold = config("");
    cold.verified_cache_size = 0;
    (
        Validator::with_static_jwks(cold, &jwks).unwrap(),
        Validator::with_static_jwks(config(""), &jwks).unwrap(),
    )
}

fn bench(c: &mut Criterion) {
    let k = keys();
    let (cold, cached) = validators();
    for (name, key) in [("rs256", &k.rsa), ("es256", &k.p256)] {
        let token = key.sign(&claims());
        now_or_never(cached.validate(&token)).unwrap();
        c.bench_function(&format!("{name}/cold"), |b| {
            b.iter(|| now_or_never(cold.validate(black_box(&token))).unwrap())
        });
        c.bench_function(&format!("{name}/cached"), |b| {
            b.iter(|| now_or_never(cached.validate(black_box(&token))).unwrap())
        });
    }

    let metrics = Metrics::new();
    let bypass = BypassPaths::new(&[
        "/.well-known/*".to_string(),
        "/healthz".to_string(),
        "/readyz".to_string(),
        "/livez".to_string(),
    ])
    .unwrap();
    let auth = JwtAuth::new(Arc::new(cached), bypass.clone(), &metrics);
    let bearer = HeaderValue::from_str(&format!("Bearer {}", k.rsa.sign(&claims()))).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("authorization", bearer);
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("host", HeaderValue::from_static("agent:8000"));
    now_or_never(auth.authorize(&mut headers.clone(), "/v1/chat")).unwrap();
    c.bench_function("authorize/cached_rs256", |b| {
        b.iter_batched_ref(
            || headers.clone(),
            |h| now_or_never(auth.authorize(h, black_box("/v1/chat/completions"))).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("bypass/plain_path", |b| {
        b.iter(|| bypass.matches(black_box("/v1/chat/completions")))
    });
    c.bench_function("bypass/encoded_path", |b| {
        b.iter(|| bypass.matches(black_box("/.well-known/%61gent.json")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
