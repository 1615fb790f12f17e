//! Micro-benchmarks for the outbound hot path: route matching (10 and 1000 routes) and an
//! exchanged-token cache hit.
use criterion::{criterion_group, criterion_main, Criterion};
use outbound_exchange::cache::{CacheConfig, CacheKey, TokenCache};
use outbound_exchange::glob::normalize_host;
use outbound_exchange::routes::{parse_routes_yaml, Action, RouteTable};
use std::hint::black_box;
use std::sync::Arc;

fn table(n: usize) -> RouteTable {
    let mut yaml = String::new();
    for i in 0..n {
        match i % 4 {
            0 => yaml.push_str(&format!(
                "- host: \"tool-{i}-mcp**\"\n  target_audience: tool-{i}\n"
            )),
            1 => yaml.push_str(&format!(
                "- host: \"*.ns{i}.svc.cluster.local\"\n  passthrough: true\n"
            )),
            2 => yaml.push_str(&format!(
                "- host: \"api{i}.example.{{com,org}}\"\n  action: deny\n"
            )),
            _ => yaml.push_str(&format!("- host: \"10.{i}.*.*\"\n  action: passthrough\n")),
        }
    }
    RouteTable::new(
        parse_routes_yaml(&yaml, "bench").unwrap(),
        Action::Passthrough,
    )
}

fn routes(c: &mut Criterion) {
    for n in [10usize, 1000] {
        let t = table(n);
        let last = format!("tool-{}-mcp.team1.svc.cluster.local", (n - 4) / 4 * 4);
        c.bench_function(&format!("route_match/{n}_routes/last_match"), |b| {
            b.iter(|| black_box(t.lookup(black_box(&last)).index))
        });
        c.bench_function(&format!("route_match/{n}_routes/no_match"), |b| {
            b.iter(|| black_box(t.lookup(black_box("unmatched.example.net")).index))
        });
    }
    c.bench_function("normalize_host/with_port", |b| {
        b.iter(|| black_box(normalize_host(black_box("GitHub-Tool-MCP.team1.svc:8080"))))
    });
}

fn cache_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let cache: TokenCache<String> = TokenCache::new(CacheConfig::default());
    let subject = "eyJhbGciOiJSUzI1NiJ9.".to_string() + &"x".repeat(800);
    let key = CacheKey::new(
        Some(&subject),
        Some("github-tool"),
        Some("openid"),
        "http://sts/token",
    );
    let _ = rt.block_on(cache.get_or_fetch(key, || async { Ok((Arc::from("tok"), None)) }));
    c.bench_function("exchange_cache/hit_incl_key_hash", |b| {
        b.iter(|| {
            let key = CacheKey::new(
                Some(black_box(&subject)),
                Some("github-tool"),
                Some("openid"),
                "http://sts/token",
            );
            rt.block_on(cache.get_or_fetch(key, || async { Err("miss".to_string()) }))
        })
    });
}

criterion_group!(benches, routes, cache_hit);
criterion_main!(benches);
