//! SPIFFE ID parsing and `allowed_peers` matching (per inbound request with mTLS).

use criterion::{criterion_group, criterion_main, Criterion};
use spiffe_source::{IdPattern, SpiffeId};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    c.bench_function("spiffe_id_parse", |b| {
        b.iter(|| SpiffeId::parse(black_box("spiffe://example.org/ns/team1/sa/agent")).unwrap())
    });
    let p = IdPattern::parse("spiffe://example.org/ns/*/sa/*").unwrap();
    c.bench_function("allowed_peers_match", |b| {
        b.iter(|| p.matches(black_box("spiffe://example.org/ns/team1/sa/agent")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
