//! Validation rules against a fixed key set, with tokens from an independent signer.

mod common;

use common::*;
use inbound_jwt::{JwtConfig, JwtError, Validator, MAX_TOKEN_LEN};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use std::time::Duration;

fn all_keys_jwks() -> String {
    let k = keys();
    jwks_doc(&[
        k.rsa.public.clone(),
        k.p256.public.clone(),
        k.p384.public.clone(),
        k.ed.public.clone(),
    ])
}

fn validator_with(cfg: JwtConfig, jwks: &str) -> Validator {
    Validator::with_static_jwks(cfg, jwks).unwrap()
}

fn validator() -> Validator {
    validator_with(config(""), &all_keys_jwks())
}

async fn err(v: &Validator, token: &str) -> JwtError {
    v.validate(token).await.expect_err("token must be refused")
}

#[tokio::test]
async fn accepts_every_supported_algorithm() {
    let k = keys();
    let v = validator();
    for (name, key) in [
        ("RS256", k.rsa.clone()),
        ("RS384", k.rsa.with(Some("rsa-1"), Algorithm::RS384)),
        ("RS512", k.rsa.with(Some("rsa-1"), Algorithm::RS512)),
        ("PS256", k.rsa.with(Some("rsa-1"), Algorithm::PS256)),
        ("PS384", k.rsa.with(Some("rsa-1"), Algorithm::PS384)),
        ("PS512", k.rsa.with(Some("rsa-1"), Algorithm::PS512)),
        ("ES256", k.p256.clone()),
        ("ES384", k.p384.clone()),
        ("EdDSA", k.ed.clone()),
    ] {
        let token = key.sign(&claims());
        let c = v
            .validate(&token)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(c.iss, ISS);
        assert_eq!(c.sub.as_deref(), Some("user-42"));
        assert_eq!(c.client_id.as_deref(), Some("web-app"));
        assert_eq!(c.aud, vec![AUD.to_string()]);
        // and without kid: tried against the keys of its algorithm
        let token = key.with(None, key.alg).sign(&claims());
        v.validate(&token)
            .await
            .unwrap_or_else(|e| panic!("{name} without kid: {e:?}"));
    }
}

#[tokio::test]
async fn refuses_none_and_hmac() {
    let k = keys();
    let v = validator();
    let payload = claims().to_string();
    // alg none, with and without a signature segment
    let unsigned = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&payload)
    );
    assert_eq!(err(&v, &unsigned).await, JwtError::UnsupportedAlgorithm);
    let unsigned = format!(
        "{}.{}.{}",
        b64(r#"{"alg":"none","kid":"rsa-1"}"#),
        b64(&payload),
        b64("x")
    );
    assert_eq!(err(&v, &unsigned).await, JwtError::UnsupportedAlgorithm);
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let mut h = jsonwebtoken::Header::new(alg);
        h.kid = Some("rsa-1".into());
        let t = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(b"secret")).unwrap();
        assert_eq!(err(&v, &t).await, JwtError::UnsupportedAlgorithm);
    }
    // The classic confusion attack: HS256 keyed with the issuer's public key material.
    let n = k.rsa.public["n"].as_str().unwrap();
    for secret in [n.as_bytes().to_vec(), k.rsa.public.to_string().into_bytes()] {
        let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
        h.kid = Some("rsa-1".into());
        let t = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(&secret)).unwrap();
        assert_eq!(err(&v, &t).await, JwtError::UnsupportedAlgorithm);
        let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
        h.kid = None;
        let t = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(&secret)).unwrap();
        assert_eq!(err(&v, &t).await, JwtError::UnsupportedAlgorithm);
    }
    // An "oct" key in the JWKS is never used.
    let with_oct = jwks_doc(&[
        k.rsa.public.clone(),
        json!({"kty":"oct","kid":"h","k":b64("secret"),"alg":"HS256"}),
    ]);
    let v = validator_with(config(""), &with_oct);
    let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
    h.kid = Some("h".into());
    let t = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(b"secret")).unwrap();
    assert_eq!(err(&v, &t).await, JwtError::UnsupportedAlgorithm);
}

#[tokio::test]
async fn refuses_unknown_algorithms() {
    let v = validator();
    let k = keys();
    for alg in ["ES512", "RSA-OAEP", "EdDSA25519", "rs256", "", "HS256 "] {
        let header = json!({"alg": alg, "kid": "rsa-1"}).to_string();
        // Signed with RS256 bytes: the header alg alone decides.
        let t = k.rsa.sign_raw(&header, &claims().to_string());
        assert_eq!(err(&v, &t).await, JwtError::UnsupportedAlgorithm, "{alg}");
    }
}

#[tokio::test]
async fn header_alg_must_fit_the_key() {
    let k = keys();
    let v = validator();
    let payload = claims().to_string();
    // kid of the RSA key, header says ES256 (signed with the EC key)
    let t = k
        .p256
        .sign_raw(r#"{"alg":"ES256","kid":"rsa-1"}"#, &payload);
    assert_eq!(err(&v, &t).await, JwtError::AlgorithmMismatch);
    // kid of the P-256 key, header says ES384
    let t = k
        .p384
        .sign_raw(r#"{"alg":"ES384","kid":"ec-256"}"#, &payload);
    assert_eq!(err(&v, &t).await, JwtError::AlgorithmMismatch);
    // kid of the Ed25519 key, header says RS256
    let t = k.rsa.sign_raw(r#"{"alg":"RS256","kid":"ed-1"}"#, &payload);
    assert_eq!(err(&v, &t).await, JwtError::AlgorithmMismatch);

    // JWK `alg` pins the algorithm: an RS256-pinned key refuses PS256 tokens.
    let pinned = jwks_doc(&[k.rsa.jwk_with(json!({"alg":"RS256","use":"sig"}))]);
    let v = validator_with(config(""), &pinned);
    v.validate(&k.rsa.sign(&claims())).await.unwrap();
    let ps = k.rsa.with(Some("rsa-1"), Algorithm::PS256).sign(&claims());
    assert_eq!(err(&v, &ps).await, JwtError::AlgorithmMismatch);
    let ps_nokid = k.rsa.with(None, Algorithm::PS256).sign(&claims());
    assert_eq!(err(&v, &ps_nokid).await, JwtError::NoKeys);
    // No key of the token's algorithm at all (no kid).
    let t = k.p256.with(None, Algorithm::ES256).sign(&claims());
    assert_eq!(err(&v, &t).await, JwtError::NoKeys);
}

#[tokio::test]
async fn kid_selects_exactly_one_key() {
    let k = keys();
    let v = validator_with(
        config(""),
        &jwks_doc(&[k.rsa.public.clone(), k.rsa2.public.clone()]),
    );
    v.validate(&k.rsa.sign(&claims())).await.unwrap();
    v.validate(&k.rsa2.sign(&claims())).await.unwrap();
    // Signed by rsa-2 but claims kid rsa-1: verified with rsa-1 only → refused.
    let forged = k.rsa2.with(Some("rsa-1"), Algorithm::RS256).sign(&claims());
    assert_eq!(err(&v, &forged).await, JwtError::BadSignature);
    // Without kid, every RSA key is tried.
    let nokid = k.rsa2.with(None, Algorithm::RS256).sign(&claims());
    v.validate(&nokid).await.unwrap();
    // Unknown kid with a fixed key set: no refetch possible → unknown.
    let unknown = k.rsa.with(Some("nope"), Algorithm::RS256).sign(&claims());
    assert_eq!(err(&v, &unknown).await, JwtError::UnknownKid);
    // Signed by a key not in the set, no kid.
    let other = TestKey::new(Kind::P256, None);
    let v = validator();
    assert_eq!(
        err(&v, &other.sign(&claims())).await,
        JwtError::BadSignature
    );
}

#[tokio::test]
async fn tampering_breaks_the_signature() {
    let k = keys();
    let v = validator();
    for key in [&k.rsa, &k.p256, &k.ed] {
        let t = key.sign(&claims());
        let (msg, _sig) = t.rsplit_once('.').unwrap();
        let (h, _p) = msg.split_once('.').unwrap();
        let evil = claims_with(json!({"sub":"admin"})).to_string();
        let tampered = format!("{h}.{}.{}", b64(&evil), t.rsplit_once('.').unwrap().1);
        assert_eq!(err(&v, &tampered).await, JwtError::BadSignature);
        // flip one signature character
        let mut bytes = t.clone().into_bytes();
        let i = bytes.len() - 5;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(bytes).unwrap();
        assert_eq!(err(&v, &flipped).await, JwtError::BadSignature);
        // signature from another token
        let other = key.sign(&claims_with(json!({"sub":"x"})));
        let swapped = format!("{msg}.{}", other.rsplit_once('.').unwrap().1);
        assert_eq!(err(&v, &swapped).await, JwtError::BadSignature);
    }
}

#[tokio::test]
async fn malformed_tokens() {
    let k = keys();
    let v = validator();
    let good = k.rsa.sign(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    let (h, p, s) = (parts[0], parts[1], parts[2]);
    let cases = [
        String::new(),
        "abc".into(),
        format!("{h}.{p}"),
        format!("{h}.{p}.{s}.{s}"),
        format!("{h}..{s}"),
        format!(".{p}.{s}"),
        format!("{h}.{p}."),
        format!("{h}=.{p}.{s}"),
        format!("{h}.{p}.{s}="),
        format!("{h}.{p}==.{s}"),
        format!("{h}.{p}.{}", s.replace('-', "+").replace('_', "/") + "+/"),
        format!("{h}.{p} .{s}"),
        format!("{h}.{p}.{s}\n"),
        format!("{}.{p}.{s}", b64("not json")),
        format!("{}.{p}.{s}", b64("[\"RS256\"]")),
        format!("{}.{p}.{s}", b64(r#"{"typ":"JWT"}"#)),
        format!("{}.{p}.{s}", b64(r#"{"alg":["RS256"]}"#)),
        format!("{}.{p}.{s}", b64(r#"{"alg":"RS256","kid":1}"#)),
        format!("{}.{p}.{s}", b64(r#"{"alg":"RS256","alg":"RS256"}"#)),
        format!("{}.{p}.{s}", b64([0xff, 0xfe, b'{'])),
        "é.é.é".into(),
    ];
    for t in &cases {
        assert_eq!(err(&v, t).await, JwtError::Malformed, "{t:?}");
    }
    // crit is not supported
    let t = k.rsa.sign_raw(
        r#"{"alg":"RS256","kid":"rsa-1","crit":["x"],"x":1}"#,
        &claims().to_string(),
    );
    assert_eq!(err(&v, &t).await, JwtError::UnsupportedHeader);
    // Correctly signed, but the payload is not a claims object.
    for payload in ["not json", "[1,2,3]", "\"string\"", "42", " "] {
        let t = k.rsa.sign_raw(r#"{"alg":"RS256","kid":"rsa-1"}"#, payload);
        assert_eq!(err(&v, &t).await, JwtError::InvalidClaims, "{payload:?}");
    }
    // Payload segment not base64url, with a signature over those exact bytes.
    let msg = format!("{h}.{}", "eyJ!!!");
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &k.rsa.enc, Algorithm::RS256).unwrap();
    assert_eq!(err(&v, &format!("{msg}.{sig}")).await, JwtError::Malformed);
}

#[tokio::test]
async fn oversized_tokens() {
    let k = keys();
    let v = validator();
    // A validly signed token over the limit is refused before decoding.
    let big = claims_with(json!({"pad": "x".repeat(MAX_TOKEN_LEN)}));
    let t = k.rsa.sign(&big);
    assert!(t.len() > MAX_TOKEN_LEN);
    assert_eq!(err(&v, &t).await, JwtError::TooLarge);
    assert_eq!(
        err(&v, &"a".repeat(MAX_TOKEN_LEN + 1)).await,
        JwtError::TooLarge
    );
    // Just under the limit is fine.
    let mut pad = 5000;
    loop {
        let t = k.p256.sign(&claims_with(json!({ "pad": "y".repeat(pad) })));
        if t.len() > MAX_TOKEN_LEN {
            pad -= 1;
        } else if t.len() <= MAX_TOKEN_LEN - 64 {
            pad += 8;
        } else {
            v.validate(&t).await.unwrap();
            break;
        }
    }
}

#[tokio::test]
async fn issuer_rules() {
    let k = keys();
    let v = validator();
    for iss in [
        json!(null),
        json!(""),
        json!(format!("{ISS}/")),
        json!(ISS.to_uppercase()),
        json!("https://evil.example/realms/agents"),
    ] {
        let t = k.rsa.sign(&claims_with(json!({ "iss": iss })));
        let want = if iss.is_null() {
            JwtError::MissingClaim("iss")
        } else {
            JwtError::WrongIssuer
        };
        assert_eq!(err(&v, &t).await, want, "{iss}");
    }
    for bad in [json!(1), json!([ISS]), json!({"x":1}), json!(true)] {
        let t = k.rsa.sign(&claims_with(json!({ "iss": bad })));
        assert_eq!(err(&v, &t).await, JwtError::InvalidClaims, "{bad}");
    }
    let t = k.rsa.sign_raw(
        r#"{"alg":"RS256","kid":"rsa-1"}"#,
        &format!(r#"{{"iss":null,"aud":"{AUD}","exp":{}}}"#, now() + 60),
    );
    assert_eq!(err(&v, &t).await, JwtError::InvalidClaims);
}

#[tokio::test]
async fn audience_rules() {
    let k = keys();
    let mut cfg = config("");
    cfg.audiences = vec![AUD.to_string(), "second".to_string()];
    let v = validator_with(cfg, &all_keys_jwks());
    for ok in [
        json!(AUD),
        json!("second"),
        json!([AUD]),
        json!(["other", "second"]),
        json!(["x", "y", AUD]),
    ] {
        let t = k.rsa.sign(&claims_with(json!({ "aud": ok })));
        let c = v
            .validate(&t)
            .await
            .unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        assert!(!c.aud.is_empty());
    }
    for (aud, want) in [
        (json!(null), JwtError::MissingClaim("aud")),
        (json!("other"), JwtError::WrongAudience),
        (json!([]), JwtError::WrongAudience),
        (json!(["a", "b"]), JwtError::WrongAudience),
        (json!(AUD.to_uppercase()), JwtError::WrongAudience),
        (json!(1), JwtError::InvalidClaims),
        (json!([AUD, 1]), JwtError::InvalidClaims),
        (json!({"aud": AUD}), JwtError::InvalidClaims),
        (json!([[AUD]]), JwtError::InvalidClaims),
    ] {
        let t = k.rsa.sign(&claims_with(json!({ "aud": aud })));
        assert_eq!(err(&v, &t).await, want, "{aud}");
    }
    // No audience configured: everything is refused.
    let mut cfg = config("");
    cfg.audiences.clear();
    let v = validator_with(cfg, &all_keys_jwks());
    assert_eq!(
        err(&v, &k.rsa.sign(&claims())).await,
        JwtError::WrongAudience
    );
}

#[tokio::test]
async fn time_rules() {
    let k = keys();
    let v = validator(); // 30 s skew
    let n = now();
    let ok = [
        json!({"exp": n + 5}),
        json!({"exp": n - 10}),             // expired, but within skew
        json!({"exp": (n as f64) + 100.5}), // fractional NumericDate
        json!({"nbf": n + 20}),             // in the future, within skew
        json!({"iat": n + 20}),
        json!({"nbf": null, "iat": null}), // both optional
        json!({"nbf": 0, "iat": 0}),
    ];
    for patch in ok {
        let t = k.p256.sign(&claims_with(patch.clone()));
        v.validate(&t)
            .await
            .unwrap_or_else(|e| panic!("{patch}: {e:?}"));
    }
    let bad = [
        (json!({"exp": null}), JwtError::MissingClaim("exp")),
        (json!({"exp": n - 31}), JwtError::Expired),
        (json!({"exp": n - 3600}), JwtError::Expired),
        (json!({"exp": 0}), JwtError::Expired),
        (json!({"exp": -1}), JwtError::Expired),
        (json!({"nbf": n + 60}), JwtError::NotYetValid),
        (json!({"iat": n + 60}), JwtError::IssuedInFuture),
        (
            json!({"exp": (n + 60).to_string()}),
            JwtError::InvalidClaims,
        ),
        (json!({"exp": [n + 60]}), JwtError::InvalidClaims),
        (json!({"exp": true}), JwtError::InvalidClaims),
        (json!({"nbf": "0"}), JwtError::InvalidClaims),
        (json!({"iat": {"t": 0}}), JwtError::InvalidClaims),
    ];
    for (patch, want) in bad {
        let t = k.p256.sign(&claims_with(patch.clone()));
        assert_eq!(err(&v, &t).await, want, "{patch}");
    }
    // Zero skew: just-expired is refused.
    let mut cfg = config("");
    cfg.clock_skew = Duration::ZERO;
    let v = validator_with(cfg, &all_keys_jwks());
    let t = k.p256.sign(&claims_with(json!({"exp": n - 1})));
    assert_eq!(err(&v, &t).await, JwtError::Expired);
    let t = k.p256.sign(&claims_with(json!({"nbf": n + 2})));
    assert_eq!(err(&v, &t).await, JwtError::NotYetValid);
}

#[tokio::test]
async fn other_claim_types() {
    let k = keys();
    let v = validator();
    for patch in [
        json!({"sub": 42}),
        json!({"azp": ["a"]}),
        json!({"client_id": false}),
    ] {
        let t = k.rsa.sign(&claims_with(patch.clone()));
        assert_eq!(err(&v, &t).await, JwtError::InvalidClaims, "{patch}");
    }
    // client_id when there is no azp; absent both → None
    let t = k
        .rsa
        .sign(&claims_with(json!({"azp": null, "client_id": "svc"})));
    assert_eq!(
        v.validate(&t).await.unwrap().client_id.as_deref(),
        Some("svc")
    );
    let t = k.rsa.sign(&claims_with(json!({"azp": null, "sub": null})));
    let c = v.validate(&t).await.unwrap();
    assert_eq!((c.sub.as_deref(), c.client_id.as_deref()), (None, None));
    // Unknown claims of any type are ignored.
    let t = k.rsa.sign(&claims_with(
        json!({"scope": ["a"], "realm_access": {"roles": 1}}),
    ));
    v.validate(&t).await.unwrap();
    // Claims that cannot be forwarded as header values.
    for patch in [
        json!({"sub": "a\r\nx-authbridge-sub: admin"}),
        json!({"azp": "a\u{0}"}),
        json!({"sub": "tab\u{7f}"}),
    ] {
        let t = k.rsa.sign(&claims_with(patch.clone()));
        assert_eq!(err(&v, &t).await, JwtError::UnforwardableClaim, "{patch}");
    }
}

#[tokio::test]
async fn cache_hit_never_outlives_exp() {
    let k = keys();
    let mut cfg = config("");
    cfg.clock_skew = Duration::ZERO;
    let v = validator_with(cfg, &all_keys_jwks());
    let exp = now() + 2;
    let t = k.p256.sign(&claims_with(json!({ "exp": exp })));
    let first = v.validate(&t).await.unwrap();
    assert_eq!(v.cached_tokens(), 1);
    let second = v.validate(&t).await.unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&first, &second),
        "second validation is a cache hit"
    );
    let wait = exp as f64 - now_f() + 0.1;
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    assert_eq!(err(&v, &t).await, JwtError::Expired);
    assert_eq!(v.cached_tokens(), 0, "the expired entry is dropped");
}

#[tokio::test]
async fn cache_can_be_disabled_and_is_bounded() {
    let k = keys();
    let mut cfg = config("");
    cfg.verified_cache_size = 0;
    let v = validator_with(cfg, &all_keys_jwks());
    let t = k.ed.sign(&claims());
    let a = v.validate(&t).await.unwrap();
    let b = v.validate(&t).await.unwrap();
    assert!(!std::sync::Arc::ptr_eq(&a, &b));
    assert_eq!(v.cached_tokens(), 0);

    let mut cfg = config("");
    cfg.verified_cache_size = 64;
    let v = validator_with(cfg, &all_keys_jwks());
    for i in 0..300 {
        let t = k.ed.sign(&claims_with(json!({ "jti": i })));
        v.validate(&t).await.unwrap();
        assert!(v.cached_tokens() <= 64);
    }
    // Refused tokens are not cached.
    let before = v.cached_tokens();
    let t = k.ed.sign(&claims_with(json!({"aud": "other"})));
    assert_eq!(err(&v, &t).await, JwtError::WrongAudience);
    assert_eq!(err(&v, &t).await, JwtError::WrongAudience);
    assert!(v.cached_tokens() <= before);
}

#[tokio::test]
async fn errors_never_carry_the_token() {
    let k = keys();
    let v = validator();
    let t = k.rsa.sign(&claims_with(json!({"aud": "other"})));
    let e = err(&v, &t).await;
    for s in [e.message().to_string(), e.to_string(), format!("{e:?}")] {
        assert!(!s.contains(&t[..20]));
        assert!(!s.contains("user-42"));
    }
}
