//! JWT-SVIDs used as the agent's client assertion in token exchange (`jwt-spiffe`).

use crate::{IdentityError, SpiffeId};
use base64::Engine;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A JWT-SVID and what we need to know about it (the token itself is never logged).
#[derive(Clone)]
pub struct JwtSvid {
    pub token: String,
    pub spiffe_id: SpiffeId,
    pub expiry: SystemTime,
}

impl std::fmt::Debug for JwtSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("expiry", &self.expiry)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl JwtSvid {
    /// Reads `sub` and `exp` from a compact JWT (not verifying it: it is our own credential,
    /// the STS verifies it). Errors say what is wrong without echoing the token.
    pub fn from_compact(token: &str, source_name: &str) -> Result<JwtSvid, IdentityError> {
        let err = |message: String| IdentityError::Source {
            source_name: source_name.to_string(),
            message,
        };
        let token = token.trim();
        let mut parts = token.split('.');
        let (Some(_h), Some(p), Some(_s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err(
                "not a compact JWT (expected three dot-separated parts)".into(),
            ));
        };
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p.trim_end_matches('='))
            .map_err(|_| err("JWT payload is not base64url".into()))?;
        let claims: serde_json::Value =
            serde_json::from_slice(&payload).map_err(|_| err("JWT payload is not JSON".into()))?;
        let sub = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .ok_or_else(|| err("JWT-SVID has no string \"sub\" claim".into()))?;
        let spiffe_id = SpiffeId::parse(sub).map_err(|e| err(format!("JWT-SVID \"sub\": {e}")))?;
        let exp = claims
            .get("exp")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| err("JWT-SVID has no numeric \"exp\" claim".into()))?;
        Ok(JwtSvid {
            token: token.to_string(),
            spiffe_id,
            expiry: UNIX_EPOCH + Duration::from_secs(exp),
        })
    }

    pub fn is_expired(&self) -> bool {
        self.expiry <= SystemTime::now()
    }
}

/// Where JWT-SVIDs come from.
#[derive(Debug, Clone)]
pub enum JwtSvidProvider {
    /// spiffe-helper's `jwt_svid.token`, re-read on every use so rotations (rename-over or a
    /// `..data` symlink swap) apply at once. Exchanges are cache misses, so this is rare.
    File { path: PathBuf },
    /// An in-memory signer (the `authbridge dev` trust domain): called with the audience on
    /// every use and returns a freshly minted JWT-SVID.
    InMemory(SvidMinter),
    /// The SPIFFE Workload API: one JWT-SVID per audience, cached until half its lifetime.
    WorkloadApi(Arc<crate::workload::WorkloadJwt>),
    /// No identity: exchanges that need a client assertion fail closed.
    None,
}

/// Mints a JWT-SVID for the given audience.
pub type MintFn = dyn Fn(&str) -> Result<JwtSvid, IdentityError> + Send + Sync;

/// An in-memory JWT-SVID signer. Its `Debug` shows no key material.
#[derive(Clone)]
pub struct SvidMinter(pub Arc<MintFn>);

impl std::fmt::Debug for SvidMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SvidMinter(<in-memory signer>)")
    }
}

impl JwtSvidProvider {
    /// A current, unexpired JWT-SVID for `audience`. The file source holds one JWT-SVID whose
    /// audience spiffe-helper chose, so `audience` is not used there; the in-memory signer
    /// mints one for `audience`.
    pub async fn fetch(&self, audience: &str) -> Result<JwtSvid, IdentityError> {
        match self {
            JwtSvidProvider::File { path } => {
                let name = path.display().to_string();
                let raw =
                    tokio::fs::read_to_string(path)
                        .await
                        .map_err(|e| IdentityError::Source {
                            source_name: name.clone(),
                            message: format!("cannot read JWT-SVID: {e}"),
                        })?;
                let svid = JwtSvid::from_compact(&raw, &name)?;
                if svid.is_expired() {
                    return Err(IdentityError::Source {
                        source_name: name,
                        message: "JWT-SVID has expired (is spiffe-helper running?)".into(),
                    });
                }
                Ok(svid)
            }
            JwtSvidProvider::WorkloadApi(w) => w.fetch(audience).await,
            JwtSvidProvider::InMemory(mint) => {
                let svid = (mint.0)(audience)?;
                if svid.is_expired() {
                    return Err(IdentityError::Source {
                        source_name: "in-memory signer".into(),
                        message: "minted JWT-SVID is already expired".into(),
                    });
                }
                Ok(svid)
            }
            JwtSvidProvider::None => Err(IdentityError::None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(br#"{"alg":"ES256"}"#),
            e.encode(claims.to_string())
        )
    }

    #[tokio::test]
    async fn file_source_rereads_and_checks_expiry() {
        let dir = std::env::temp_dir().join(format!("ab-jwtsvid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jwt_svid.token");
        let far = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        std::fs::write(
            &path,
            jwt(serde_json::json!({"sub":"spiffe://example.org/a","exp":far})) + "\n",
        )
        .unwrap();
        let p = JwtSvidProvider::File { path: path.clone() };
        assert_eq!(
            p.fetch("x").await.unwrap().spiffe_id.as_str(),
            "spiffe://example.org/a"
        );
        std::fs::write(
            &path,
            jwt(serde_json::json!({"sub":"spiffe://example.org/b","exp":far})),
        )
        .unwrap();
        assert_eq!(
            p.fetch("x").await.unwrap().spiffe_id.as_str(),
            "spiffe://example.org/b"
        );
        std::fs::write(
            &path,
            jwt(serde_json::json!({"sub":"spiffe://example.org/b","exp":1})),
        )
        .unwrap();
        let e = p.fetch("x").await.unwrap_err().to_string();
        assert!(e.contains("expired") && e.contains("jwt_svid.token"), "{e}");
        std::fs::write(&path, "garbage").unwrap();
        let e = p.fetch("x").await.unwrap_err().to_string();
        assert!(e.contains("not a compact JWT"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
