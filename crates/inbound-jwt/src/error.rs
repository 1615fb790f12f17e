//! Why a token was refused. Messages are fixed strings: they never carry token contents.

/// A token was refused. [`JwtError::message`] is safe for a response body;
/// [`JwtError::reason`] is a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Longer than [`crate::MAX_TOKEN_LEN`].
    #[error("token is too large")]
    TooLarge,
    /// Not three base64url segments, bad header JSON, or a header field of the wrong type.
    #[error("malformed token")]
    Malformed,
    /// `none`, HMAC (`HS*`) or an algorithm this proxy does not support.
    #[error("token algorithm is not accepted")]
    UnsupportedAlgorithm,
    /// The header carries `crit` extensions, which are not supported.
    #[error("token header has unsupported critical parameters")]
    UnsupportedHeader,
    /// The header's `alg` does not fit the key named by `kid` (key type, curve or the key's `alg`).
    #[error("token algorithm does not match the signing key")]
    AlgorithmMismatch,
    /// `kid` names no key of the issuer, even after refreshing the key set.
    #[error("token signing key is unknown")]
    UnknownKid,
    /// No key (of the token's algorithm) is available.
    #[error("no signing key available for the token")]
    NoKeys,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// The payload is not a JSON object, or a registered claim has the wrong JSON type.
    #[error("token claims are malformed")]
    InvalidClaims,
    /// A required claim (`iss`, `aud` or `exp`) is absent.
    #[error("token is missing a required claim")]
    MissingClaim(&'static str),
    /// `iss` is not the configured issuer.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// No `aud` value is an accepted audience.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// `exp` (plus clock skew) has passed.
    #[error("token has expired")]
    Expired,
    /// `nbf` is later than now plus clock skew.
    #[error("token is not valid yet")]
    NotYetValid,
    /// `iat` is later than now plus clock skew.
    #[error("token is issued in the future")]
    IssuedInFuture,
    /// `sub`, `iss` or the client id cannot be carried in an HTTP header.
    #[error("token claims cannot be forwarded")]
    UnforwardableClaim,
}

impl JwtError {
    /// Every variant's reason, in [`JwtError::index`] order (for pre-resolved counters).
    pub(crate) const REASONS: [&'static str; 16] = [
        "too_large",
        "malformed",
        "unsupported_alg",
        "unsupported_header",
        "alg_mismatch",
        "unknown_kid",
        "no_keys",
        "bad_signature",
        "invalid_claims",
        "missing_claim",
        "wrong_issuer",
        "wrong_audience",
        "expired",
        "not_yet_valid",
        "issued_in_future",
        "unforwardable_claim",
    ];

    pub(crate) fn index(&self) -> usize {
        match self {
            Self::TooLarge => 0,
            Self::Malformed => 1,
            Self::UnsupportedAlgorithm => 2,
            Self::UnsupportedHeader => 3,
            Self::AlgorithmMismatch => 4,
            Self::UnknownKid => 5,
            Self::NoKeys => 6,
            Self::BadSignature => 7,
            Self::InvalidClaims => 8,
            Self::MissingClaim(_) => 9,
            Self::WrongIssuer => 10,
            Self::WrongAudience => 11,
            Self::Expired => 12,
            Self::NotYetValid => 13,
            Self::IssuedInFuture => 14,
            Self::UnforwardableClaim => 15,
        }
    }

    /// A short metrics label, e.g. `"expired"`.
    pub fn reason(&self) -> &'static str {
        Self::REASONS[self.index()]
    }

    /// A short fixed sentence for the JSON error body; never contains token contents.
    pub fn message(&self) -> &'static str {
        match self {
            Self::TooLarge => "token is too large",
            Self::Malformed => "malformed token",
            Self::UnsupportedAlgorithm => "token algorithm is not accepted",
            Self::UnsupportedHeader => "token header has unsupported critical parameters",
            Self::AlgorithmMismatch => "token algorithm does not match the signing key",
            Self::UnknownKid => "token signing key is unknown",
            Self::NoKeys => "no signing key available for the token",
            Self::BadSignature => "token signature is invalid",
            Self::InvalidClaims => "token claims are malformed",
            Self::MissingClaim("iss") => "token has no iss claim",
            Self::MissingClaim("aud") => "token has no aud claim",
            Self::MissingClaim("exp") => "token has no exp claim",
            Self::MissingClaim(_) => "token is missing a required claim",
            Self::WrongIssuer => "token issuer is not accepted",
            Self::WrongAudience => "token audience is not accepted",
            Self::Expired => "token has expired",
            Self::NotYetValid => "token is not valid yet",
            Self::IssuedInFuture => "token is issued in the future",
            Self::UnforwardableClaim => "token claims cannot be forwarded",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_line_up() {
        let all = [
            JwtError::TooLarge,
            JwtError::Malformed,
            JwtError::UnsupportedAlgorithm,
            JwtError::UnsupportedHeader,
            JwtError::AlgorithmMismatch,
            JwtError::UnknownKid,
            JwtError::NoKeys,
            JwtError::BadSignature,
            JwtError::InvalidClaims,
            JwtError::MissingClaim("exp"),
            JwtError::WrongIssuer,
            JwtError::WrongAudience,
            JwtError::Expired,
            JwtError::NotYetValid,
            JwtError::IssuedInFuture,
            JwtError::UnforwardableClaim,
        ];
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.index(), i);
            assert!(!e.message().is_empty());
        }
        assert_eq!(JwtError::Expired.reason(), "expired");
        assert_eq!(
            JwtError::MissingClaim("aud").message(),
            "token has no aud claim"
        );
    }
}
