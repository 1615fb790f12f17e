//! JWT-SVID signing keys: minting, JWKS, validation (ES256 only, like SPIRE's default).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};

pub(crate) struct JwtKey {
    pub(crate) kid: String,
    encoding: EncodingKey,
    x: String,
    y: String,
}

impl JwtKey {
    /// A fresh P-256 key; `seq` only makes the `kid` easy to read in test output.
    pub(crate) fn generate(seq: u64) -> Self {
        let key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("JWT signing key");
        // Uncompressed SEC1 point: 0x04 || X (32) || Y (32).
        let point = key.public_key_raw();
        assert_eq!(point.len(), 65, "P-256 public key is an uncompressed point");
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..]);
        let kid = format!("fake-jwt-{seq}-{}", &x[..8]);
        Self {
            kid,
            encoding: EncodingKey::from_ec_der(key.serialized_der()),
            x,
            y,
        }
    }

    /// The public JWK, shaped like the SPIRE agent's (no `use`, no `alg`).
    pub(crate) fn jwk(&self) -> Value {
        json!({ "kty": "EC", "crv": "P-256", "kid": self.kid, "x": self.x, "y": self.y })
    }

    fn decoding(&self) -> DecodingKey {
        DecodingKey::from_ec_components(&self.x, &self.y).expect("own public key")
    }

    /// A JWT-SVID: header `{alg: ES256, kid, typ: JWT}`, claims `sub`, `aud`, `exp`, `iat`.
    pub(crate) fn mint(&self, sub: &str, audiences: &[String], ttl: Duration) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let claims = json!({
            "sub": sub,
            "aud": audiences,
            "exp": now + ttl.as_secs().max(1),
            "iat": now,
        });
        jsonwebtoken::encode(&header, &claims, &self.encoding).expect("sign JWT-SVID")
    }
}

/// `{"keys": [...]}` of all `keys`.
pub(crate) fn jwks(keys: &[JwtKey]) -> String {
    json!({ "keys": keys.iter().map(JwtKey::jwk).collect::<Vec<_>>() }).to_string()
}

/// Verifies `token` with one of `keys` (by `kid`), for `audience`; returns its claims.
pub(crate) fn validate(
    keys: &[JwtKey],
    token: &str,
    audience: &str,
) -> Result<BTreeMap<String, Value>, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
    let kid = header.kid.ok_or("token has no kid")?;
    let key = keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or_else(|| format!("unknown kid {kid:?}"))?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "sub", "aud"]);
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<BTreeMap<String, Value>>(token, &key.decoding(), &validation)
        .map_err(|e| format!("invalid JWT-SVID: {e}"))?;
    Ok(data.claims)
}

/// JSON → `google.protobuf.Value`.
pub(crate) fn to_proto_value(v: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(to_proto_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o
                .iter()
                .map(|(k, v)| (k.clone(), to_proto_value(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}
