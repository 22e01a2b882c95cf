//! JWT authentication: access tokens (who the socket or HTTP caller is) and room tokens (which room a user may join).
//!
//! # Access tokens
//! Verified with one pinned algorithm ([`JwtAlgorithm`]): HS256 with a shared secret (the default), or RS256 / ES256
//! with a PEM public key. A token whose header names any other algorithm, `none` included, is rejected with
//! `invalid algorithm` before any signature work. `exp` and `sub` are required; `nbf` is checked when present;
//! `iss` and `aud` are checked only when configured ([`AuthConfig::issuer`], [`AuthConfig::audience`]).
//!
//! Claims the framework reads:
//!
//! | claim | type | meaning |
//! |---|---|---|
//! | `sub` | string, required, non-empty | the user id ([`AuthenticatedUser::id`]) |
//! | `exp` | number, required | expiry, seconds since the epoch |
//! | `companies` | array of strings, or one string; optional | companies whose data the user may read and write (access rules of the demo services) |
//! | `iat` | any JSON, optional | kept in [`AuthenticatedUser::claims`] (a number: held inline, no allocation) |
//! | `nbf`, `iss`, `aud`, `jti` | | checked when configured (see above), then not kept |
//! | anything else | any JSON | kept in [`AuthenticatedUser::claims`] for services |
//!
//! A socket holds its [`AuthenticatedUser`] for as long as it is connected, so the user is kept compact: strings of
//! exact length, no map for the claims ([`Claims`] is one boxed slice of the application claims, none allocated for
//! a token that has none).
//!
//! # Room tokens
//! The server signs `{sub, name, exp}` with its own HS256 key ([`RoomTokens`]); the key should differ from the access
//! secret. Verification binds the token to the socket's user and to the room name being joined.
//!
//! # Error texts
//! The [`Display`](std::fmt::Display) text of [`TokenError`] is exactly what goes on the wire, in
//! `unauthorized {err}` and `realtime:join:error {error}`. Texts follow the node `jsonwebtoken` package:
//!
//! | case | text |
//! |---|---|
//! | empty or absent token | `jwt must be provided` |
//! | longer than [`AuthConfig::token_bytes_max`] | `jwt too long` |
//! | not three base64url parts of JSON | `jwt malformed` |
//! | header `alg` not the pinned one (`none` included) | `invalid algorithm` |
//! | bad signature | `invalid signature` |
//! | `exp` in the past (beyond leeway) | `jwt expired` |
//! | `nbf` in the future (beyond leeway) | `jwt not active` |
//! | required claim absent | `jwt claim missing: <claim>` |
//! | claim of the wrong type | `jwt claim invalid: <claim>` |
//! | `iss` / `aud` mismatch | `jwt issuer invalid` / `jwt audience invalid` |
//! | room token for another user / room | `room token is for another user` / `room token is for another room` |
//!
//! **Secrets never reach Debug output or logs**: [`Secret`], [`AccessVerifier`], [`AccessSigner`] and [`RoomTokens`]
//! print `<redacted>` instead of key material.

use std::collections::HashSet;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Default clock-skew leeway for `exp` and `nbf`, seconds.
pub const LEEWAY_S_DEFAULT: u64 = 30;
/// Default upper bound on the length of a token, bytes. Real tokens are a few hundred bytes; this stops a client from
/// making the server base64-decode and parse megabytes.
pub const TOKEN_BYTES_MAX_DEFAULT: usize = 8 * 1024;
/// Default lifetime of room tokens handed out by REST responses, seconds.
pub const ROOM_TOKEN_TTL_S_DEFAULT: u64 = 3600;

/// Key material that must never be printed. `Debug` shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps bytes as a secret.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// 32 bytes from the operating system's random generator (e.g. a per-process room-token key).
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes[..]);
        Self(bytes.to_vec())
    }

    /// The raw bytes. Do not log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<redacted, {} bytes>)", self.0.len())
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().to_vec())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s.into_bytes())
    }
}

/// The one algorithm access tokens are verified with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with [`AuthConfig::secret`].
    #[default]
    #[serde(rename = "HS256")]
    Hs256,
    /// RSASSA-PKCS1-v1_5 SHA-256 with [`AuthConfig::public_key_pem`].
    #[serde(rename = "RS256")]
    Rs256,
    /// ECDSA P-256 SHA-256 with [`AuthConfig::public_key_pem`].
    #[serde(rename = "ES256")]
    Es256,
}

impl JwtAlgorithm {
    fn jwt(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::Rs256 => Algorithm::RS256,
            Self::Es256 => Algorithm::ES256,
        }
    }

    /// The header `alg` value (`HS256`, `RS256`, `ES256`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }
}

impl std::str::FromStr for JwtAlgorithm {
    type Err = AuthConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "HS256" => Ok(Self::Hs256),
            "RS256" => Ok(Self::Rs256),
            "ES256" => Ok(Self::Es256),
            _ => Err(AuthConfigError::UnknownAlgorithm(s.to_owned())),
        }
    }
}

/// How access tokens are verified (and, for the CLI, signed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    /// The pinned algorithm. Default HS256.
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret (required for HS256, ignored otherwise).
    pub secret: Option<Secret>,
    /// PEM public key (SPKI `BEGIN PUBLIC KEY`, or PKCS#1 `BEGIN RSA PUBLIC KEY` for RS256); required for RS256/ES256.
    pub public_key_pem: Option<String>,
    /// PEM private key (PKCS#8) for signing RS256/ES256 access tokens with `shardcast token`; never needed to verify.
    pub private_key_pem: Option<Secret>,
    /// Clock-skew tolerance applied to `exp` and `nbf`, seconds. Default [`LEEWAY_S_DEFAULT`].
    pub leeway_s: u64,
    /// When set, `iss` must be present and equal.
    pub issuer: Option<String>,
    /// When set, `aud` must be present and contain it.
    pub audience: Option<String>,
    /// Longest accepted token, bytes. Default [`TOKEN_BYTES_MAX_DEFAULT`].
    pub token_bytes_max: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            algorithm: JwtAlgorithm::Hs256,
            secret: None,
            public_key_pem: None,
            private_key_pem: None,
            leeway_s: LEEWAY_S_DEFAULT,
            issuer: None,
            audience: None,
            token_bytes_max: TOKEN_BYTES_MAX_DEFAULT,
        }
    }
}

impl AuthConfig {
    /// HS256 with the given secret and every other field at its default.
    pub fn hs256(secret: impl Into<Secret>) -> Self {
        Self {
            secret: Some(secret.into()),
            ..Self::default()
        }
    }

    /// RS256 or ES256 with the given PEM public key and every other field at its default.
    pub fn public_key(algorithm: JwtAlgorithm, public_key_pem: impl Into<String>) -> Self {
        Self {
            algorithm,
            public_key_pem: Some(public_key_pem.into()),
            ..Self::default()
        }
    }
}

/// Shortest HS256 access-token secret accepted, bytes: a shorter one can be brute-forced from any token.
pub const HS256_SECRET_BYTES_MIN: usize = 32;

fn check_hs256_secret(secret: &[u8]) -> Result<(), AuthConfigError> {
    if secret.is_empty() {
        return Err(AuthConfigError::EmptySecret);
    }
    if secret.len() < HS256_SECRET_BYTES_MIN {
        return Err(AuthConfigError::ShortSecret(secret.len()));
    }
    Ok(())
}

/// A configuration that cannot produce a verifier or signer. The texts say what to set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthConfigError {
    /// HS256 without a secret.
    #[error(
        "no JWT secret configured: set auth.jwt_secret in the config file or SHARDCAST_JWT_SECRET"
    )]
    MissingSecret,
    /// An empty secret.
    #[error("the JWT secret is empty: set a secret of at least 32 random bytes")]
    EmptySecret,
    /// An HS256 secret shorter than [`HS256_SECRET_BYTES_MIN`] (its length in bytes).
    #[error(
        "the HS256 JWT secret is {0} bytes; it must be at least 32 bytes (generate one with `openssl rand -base64 32`)"
    )]
    ShortSecret(usize),
    /// RS256/ES256 without a public key.
    #[error("algorithm {0} needs a PEM public key: set auth.jwt_public_key_file")]
    MissingPublicKey(&'static str),
    /// Signing RS256/ES256 without a private key.
    #[error("signing {0} tokens needs a PEM private key: set auth.jwt_private_key_file")]
    MissingPrivateKey(&'static str),
    /// The PEM did not parse as a key of the algorithm's type.
    #[error("the {0} key is not a valid PEM key for that algorithm")]
    InvalidKey(&'static str),
    /// An algorithm name other than HS256, RS256, ES256.
    #[error("unknown JWT algorithm {0:?}: use HS256, RS256 or ES256")]
    UnknownAlgorithm(String),
}

/// Why a token was refused. `Display` is the wire text (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Empty or absent.
    #[error("jwt must be provided")]
    Missing,
    /// Longer than the configured maximum.
    #[error("jwt too long")]
    TooLong,
    /// Not a JWT.
    #[error("jwt malformed")]
    Malformed,
    /// Header `alg` is not the pinned algorithm.
    #[error("invalid algorithm")]
    InvalidAlgorithm,
    /// Signature does not verify.
    #[error("invalid signature")]
    InvalidSignature,
    /// `exp` is past.
    #[error("jwt expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("jwt not active")]
    NotYetValid,
    /// A required claim is absent.
    #[error("jwt claim missing: {0}")]
    MissingClaim(String),
    /// A claim has the wrong type or an empty value.
    #[error("jwt claim invalid: {0}")]
    InvalidClaim(String),
    /// `iss` mismatch.
    #[error("jwt issuer invalid")]
    InvalidIssuer,
    /// `aud` mismatch.
    #[error("jwt audience invalid")]
    InvalidAudience,
    /// Room token's `sub` is not the socket's user.
    #[error("room token is for another user")]
    WrongUser,
    /// Room token's `name` is not the room being joined.
    #[error("room token is for another room")]
    WrongRoom,
}

impl From<jsonwebtoken::errors::Error> for TokenError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        match e.into_kind() {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::Signing(_) => Self::InvalidSignature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm => Self::InvalidAlgorithm,
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::MissingRequiredClaim(c) => Self::MissingClaim(c),
            ErrorKind::InvalidClaimFormat(c) => Self::InvalidClaim(c),
            ErrorKind::InvalidIssuer => Self::InvalidIssuer,
            ErrorKind::InvalidAudience => Self::InvalidAudience,
            ErrorKind::InvalidSubject => Self::WrongUser,
            _ => Self::Malformed,
        }
    }
}

/// Who a verified access token says the caller is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthenticatedUser {
    /// The `sub` claim.
    pub id: String,
    /// The `companies` claim (empty when absent).
    pub companies: Vec<String>,
    /// The `exp` claim, seconds since the epoch.
    pub expires_at_s: u64,
    /// The claims a service may still read: `iat` and the application claims (every claim but the registered ones
    /// the verifier already checked: `sub`, `exp`, `nbf`, `iss`, `aud`, `jti`, and `companies`).
    pub claims: Claims,
}

impl AuthenticatedUser {
    /// True when the `companies` claim names `company`.
    pub fn is_member_of(&self, company: &str) -> bool {
        self.companies.iter().any(|c| c == company)
    }
}

/// Registered claims the verifier checks (when configured) and does not keep in [`Claims`].
const CLAIMS_NOT_KEPT: [&str; 4] = ["nbf", "iss", "aud", "jti"];

/// The claims of a token kept for services, compact: `iat` inline, the others in one boxed slice in the token's
/// order (none allocated when there are none). Lookups are linear: tokens carry a handful of claims.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// `iat`, held apart: it is in most tokens and a number needs no allocation.
    iat: Option<Value>,
    others: Box<[(Box<str>, Value)]>,
}

/// What [`Claims`]'s `Index` gives for a claim that is absent, as `serde_json::Map` does.
static NO_CLAIM: Value = Value::Null;

impl Claims {
    /// The claim `name`, if the token had it (and it is kept).
    pub fn get(&self, name: &str) -> Option<&Value> {
        if name == "iat" {
            return self.iat.as_ref();
        }
        self.others
            .iter()
            .find(|(k, _)| &**k == name)
            .map(|(_, v)| v)
    }

    /// True when the claim `name` is kept.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Sets the claim `name` (services and tests building a user by hand); returns the value it replaces.
    pub fn insert(&mut self, name: String, value: Value) -> Option<Value> {
        if name == "iat" {
            return self.iat.replace(value);
        }
        if let Some((_, v)) = self.others.iter_mut().find(|(k, _)| **k == *name) {
            return Some(std::mem::replace(v, value));
        }
        let mut others = std::mem::take(&mut self.others).into_vec();
        others.push((name.into_boxed_str(), value));
        self.others = others.into_boxed_slice();
        None
    }

    /// Number of claims kept.
    pub fn len(&self) -> usize {
        usize::from(self.iat.is_some()) + self.others.len()
    }

    /// True when no claim is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The kept claims: `iat` first, then the others in the token's order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.iat
            .iter()
            .map(|v| ("iat", v))
            .chain(self.others.iter().map(|(k, v)| (&**k, v)))
    }
}

impl std::ops::Index<&str> for Claims {
    type Output = Value;
    /// The claim `name`, or `null` when absent (as `serde_json::Map` indexes).
    fn index(&self, name: &str) -> &Value {
        self.get(name).unwrap_or(&NO_CLAIM)
    }
}

impl From<Map<String, Value>> for Claims {
    /// Keeps `iat` and the application claims of `map`; `sub`, `exp`, `companies`, `nbf`, `iss`, `aud` and `jti`
    /// are dropped (the verifier read or checked them).
    fn from(map: Map<String, Value>) -> Self {
        let mut iat = None;
        let mut others = Vec::new();
        for (k, mut v) in map {
            match k.as_str() {
                "iat" => iat = Some(v),
                "sub" | "exp" | "companies" => {}
                k if CLAIMS_NOT_KEPT.contains(&k) => {}
                _ => {
                    shrink_value(&mut v);
                    others.push((k.into_boxed_str(), v));
                }
            }
        }
        Self {
            iat,
            others: others.into_boxed_slice(),
        }
    }
}

/// Drops the spare capacity of the strings and arrays in `v` (a value held for a connection's lifetime).
fn shrink_value(v: &mut Value) {
    match v {
        Value::String(s) => s.shrink_to_fit(),
        Value::Array(items) => {
            items.iter_mut().for_each(shrink_value);
            items.shrink_to_fit();
        }
        Value::Object(map) => map.values_mut().for_each(shrink_value),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads the header's `alg` without trusting anything else, so `none` and unknown names get `invalid algorithm`
/// instead of a JSON error, and so the pinned algorithm is enforced before any signature work.
fn check_header(token: &str, pinned: Algorithm) -> Result<(), TokenError> {
    #[derive(Deserialize)]
    struct AlgOnly {
        alg: Option<String>,
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed)?;
    let parsed: AlgOnly = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    let pinned_name = match pinned {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        _ => return Err(TokenError::InvalidAlgorithm),
    };
    match parsed.alg {
        Some(alg) if alg == pinned_name => Ok(()),
        Some(_) => Err(TokenError::InvalidAlgorithm),
        None => Err(TokenError::Malformed),
    }
}

fn check_length(token: &str, token_bytes_max: usize) -> Result<(), TokenError> {
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    if token.len() > token_bytes_max {
        return Err(TokenError::TooLong);
    }
    Ok(())
}

/// Verifies access tokens. Build once at start-up (or once per shard); `verify` takes `&self`.
#[derive(Clone)]
pub struct AccessVerifier {
    key: DecodingKey,
    validation: Validation,
    algorithm: Algorithm,
    token_bytes_max: usize,
}

impl fmt::Debug for AccessVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessVerifier")
            .field("algorithm", &self.algorithm)
            .field("key", &"<redacted>")
            .field("leeway_s", &self.validation.leeway)
            .field("issuer", &self.validation.iss)
            .field("audience", &self.validation.aud)
            .field("token_bytes_max", &self.token_bytes_max)
            .finish()
    }
}

impl AccessVerifier {
    /// Builds the verifier, or says which setting is missing or wrong.
    pub fn new(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        let algorithm = config.algorithm.jwt();
        let key = match config.algorithm {
            JwtAlgorithm::Hs256 => {
                let secret = config
                    .secret
                    .as_ref()
                    .ok_or(AuthConfigError::MissingSecret)?;
                check_hs256_secret(secret.expose())?;
                DecodingKey::from_secret(secret.expose())
                    .map_err(|_| AuthConfigError::InvalidKey("HS256"))?
            }
            JwtAlgorithm::Rs256 => {
                let pem = config
                    .public_key_pem
                    .as_ref()
                    .ok_or(AuthConfigError::MissingPublicKey("RS256"))?;
                DecodingKey::from_rsa_pem(pem.as_bytes())
                    .map_err(|_| AuthConfigError::InvalidKey("RS256"))?
            }
            JwtAlgorithm::Es256 => {
                let pem = config
                    .public_key_pem
                    .as_ref()
                    .ok_or(AuthConfigError::MissingPublicKey("ES256"))?;
                DecodingKey::from_ec_pem(pem.as_bytes())
                    .map_err(|_| AuthConfigError::InvalidKey("ES256"))?
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.leeway_s;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Self {
            key,
            validation,
            algorithm,
            token_bytes_max: config.token_bytes_max,
        })
    }

    /// Verifies `token` and returns the user it names. The error's `Display` is the `unauthorized {err}` text.
    pub fn verify(&self, token: &str) -> Result<AuthenticatedUser, TokenError> {
        check_length(token, self.token_bytes_max)?;
        check_header(token, self.algorithm)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)?;
        let mut claims = data.claims;
        let id = match claims.remove("sub") {
            Some(Value::String(mut s)) if !s.is_empty() => {
                s.shrink_to_fit();
                s
            }
            Some(_) => return Err(TokenError::InvalidClaim("sub".into())),
            None => return Err(TokenError::MissingClaim("sub".into())),
        };
        let expires_at_s = match claims.remove("exp") {
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.is_finite() && *f >= 0.0)
                        .map(|f| f as u64)
                })
                .ok_or_else(|| TokenError::InvalidClaim("exp".into()))?,
            _ => return Err(TokenError::InvalidClaim("exp".into())),
        };
        let mut companies = match claims.remove("companies") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s],
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(TokenError::InvalidClaim("companies".into())),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(TokenError::InvalidClaim("companies".into())),
        };
        // Held for the socket's lifetime: exact sizes (a collected vector may keep its source's capacity).
        companies.iter_mut().for_each(String::shrink_to_fit);
        companies.shrink_to_fit();
        Ok(AuthenticatedUser {
            id,
            companies,
            expires_at_s,
            claims: Claims::from(claims),
        })
    }
}

/// Signs access tokens (the `shardcast token` CLI and tests). Servers only need [`AccessVerifier`].
#[derive(Clone)]
pub struct AccessSigner {
    key: EncodingKey,
    algorithm: Algorithm,
    issuer: Option<String>,
    audience: Option<String>,
}

impl fmt::Debug for AccessSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessSigner")
            .field("algorithm", &self.algorithm)
            .field("key", &"<redacted>")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl AccessSigner {
    /// HS256 signs with [`AuthConfig::secret`]; RS256/ES256 with [`AuthConfig::private_key_pem`]. The configured
    /// issuer and audience are added to every token.
    pub fn new(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        let algorithm = config.algorithm.jwt();
        let key = match config.algorithm {
            JwtAlgorithm::Hs256 => {
                let secret = config
                    .secret
                    .as_ref()
                    .ok_or(AuthConfigError::MissingSecret)?;
                check_hs256_secret(secret.expose())?;
                EncodingKey::from_secret(secret.expose())
                    .map_err(|_| AuthConfigError::InvalidKey("HS256"))?
            }
            JwtAlgorithm::Rs256 => {
                let pem = config
                    .private_key_pem
                    .as_ref()
                    .ok_or(AuthConfigError::MissingPrivateKey("RS256"))?;
                EncodingKey::from_rsa_pem(pem.expose())
                    .map_err(|_| AuthConfigError::InvalidKey("RS256"))?
            }
            JwtAlgorithm::Es256 => {
                let pem = config
                    .private_key_pem
                    .as_ref()
                    .ok_or(AuthConfigError::MissingPrivateKey("ES256"))?;
                EncodingKey::from_ec_pem(pem.expose())
                    .map_err(|_| AuthConfigError::InvalidKey("ES256"))?
            }
        };
        Ok(Self {
            key,
            algorithm,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
        })
    }

    /// Signs `{sub, iat, exp = now + ttl_s, iss?, aud?}` plus `extra` claims. `extra` cannot override `sub`, `iat`
    /// or `exp`.
    pub fn sign(
        &self,
        sub: &str,
        ttl_s: u64,
        extra: &Map<String, Value>,
    ) -> Result<String, SignError> {
        let now = now_s();
        let mut claims = extra.clone();
        if let Some(iss) = &self.issuer {
            claims
                .entry("iss")
                .or_insert_with(|| Value::String(iss.clone()));
        }
        if let Some(aud) = &self.audience {
            claims
                .entry("aud")
                .or_insert_with(|| Value::String(aud.clone()));
        }
        claims.insert("sub".into(), Value::String(sub.to_owned()));
        claims.insert("iat".into(), Value::from(now));
        claims.insert("exp".into(), Value::from(now.saturating_add(ttl_s)));
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.key)
            .map_err(|e| SignError(e.to_string()))
    }
}

/// Parses one `--claim k=v` argument: `v` is taken as JSON when it parses (`companies=["c1","c2"]`, `admin=true`,
/// `n=3`), otherwise as a plain string (`team=blue`).
pub fn parse_claim_arg(arg: &str) -> Result<(String, Value), String> {
    let (k, v) = arg
        .split_once('=')
        .ok_or_else(|| format!("claim {arg:?} is not of the form key=value"))?;
    if k.is_empty() {
        return Err(format!("claim {arg:?} has an empty key"));
    }
    let value = serde_json::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.to_owned()));
    Ok((k.to_owned(), value))
}

/// Signing failed (a key of the wrong kind); the text names no key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signing the token failed: {0}")]
pub struct SignError(String);

#[derive(Serialize, Deserialize)]
struct RoomClaims {
    sub: String,
    name: String,
    exp: u64,
}

/// Signs and verifies room tokens `{sub, name, exp}` with the server's own HS256 key.
#[derive(Clone)]
pub struct RoomTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_s: u64,
    token_bytes_max: usize,
}

impl fmt::Debug for RoomTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoomTokens")
            .field("key", &"<redacted>")
            .field("ttl_s", &self.ttl_s)
            .field("leeway_s", &self.validation.leeway)
            .finish()
    }
}

impl RoomTokens {
    /// `secret`: the room-token key (all shards and all servers sharing rooms must use the same one; use
    /// [`Secret::random`] for a single process). `ttl_s`: lifetime of issued tokens. `leeway_s`: clock skew allowed.
    pub fn new(secret: &Secret, ttl_s: u64, leeway_s: u64) -> Result<Self, AuthConfigError> {
        if secret.is_empty() {
            return Err(AuthConfigError::EmptySecret);
        }
        let encoding = EncodingKey::from_secret(secret.expose())
            .map_err(|_| AuthConfigError::InvalidKey("HS256"))?;
        let decoding = DecodingKey::from_secret(secret.expose())
            .map_err(|_| AuthConfigError::InvalidKey("HS256"))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway_s;
        validation.validate_aud = false;
        validation.required_spec_claims = ["exp", "sub"]
            .iter()
            .map(|s| s.to_string())
            .collect::<HashSet<_>>();
        Ok(Self {
            encoding,
            decoding,
            validation,
            ttl_s,
            token_bytes_max: TOKEN_BYTES_MAX_DEFAULT,
        })
    }

    /// Lifetime of issued tokens, seconds.
    pub fn ttl_s(&self) -> u64 {
        self.ttl_s
    }

    /// A token letting `user` join `room` for [`RoomTokens::ttl_s`] seconds.
    pub fn sign(&self, user: &str, room: &str) -> Result<String, SignError> {
        self.sign_until(user, room, now_s().saturating_add(self.ttl_s))
    }

    /// A token letting `user` join `room` until `exp_s` (seconds since the epoch).
    pub fn sign_until(&self, user: &str, room: &str, exp_s: u64) -> Result<String, SignError> {
        let claims = RoomClaims {
            sub: user.to_owned(),
            name: room.to_owned(),
            exp: exp_s,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| SignError(e.to_string()))
    }

    /// Checks that `token` is a valid, unexpired room token for `user` and `room`. The error's `Display` is the
    /// `realtime:join:error {error}` text.
    pub fn verify(&self, token: &str, user: &str, room: &str) -> Result<(), TokenError> {
        check_length(token, self.token_bytes_max)?;
        check_header(token, Algorithm::HS256)?;
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &self.decoding, &self.validation)?;
        let claims = data.claims;
        match claims.get("sub") {
            Some(Value::String(s)) if s == user => {}
            Some(Value::String(_)) => return Err(TokenError::WrongUser),
            _ => return Err(TokenError::InvalidClaim("sub".into())),
        }
        match claims.get("name") {
            Some(Value::String(s)) if s == room => Ok(()),
            Some(Value::String(_)) => Err(TokenError::WrongRoom),
            Some(_) => Err(TokenError::InvalidClaim("name".into())),
            None => Err(TokenError::MissingClaim("name".into())),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) const SECRET: &str = "test-secret-of-at-least-thirty-two-bytes!";
    pub(crate) const RSA_PRIVATE: &str = include_str!("testdata/rsa_private.pem");
    pub(crate) const RSA_PUBLIC: &str = include_str!("testdata/rsa_public.pem");
    pub(crate) const EC_PRIVATE: &str = include_str!("testdata/ec_private.pem");
    pub(crate) const EC_PUBLIC: &str = include_str!("testdata/ec_public.pem");

    fn hs() -> AuthConfig {
        AuthConfig::hs256(SECRET)
    }

    fn raw(header: &Value, claims: &Value, key: &[u8]) -> String {
        use hmac_sign::sign;
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let c = URL_SAFE_NO_PAD.encode(claims.to_string());
        let msg = format!("{h}.{c}");
        let sig = sign(key, msg.as_bytes());
        format!("{msg}.{sig}")
    }

    /// HS256 by hand through jsonwebtoken's own signer, so tests can forge arbitrary headers.
    mod hmac_sign {
        pub(super) fn sign(key: &[u8], msg: &[u8]) -> String {
            let k = jsonwebtoken::EncodingKey::from_secret(key).unwrap();
            jsonwebtoken::crypto::sign(msg, &k, jsonwebtoken::Algorithm::HS256).unwrap()
        }
    }

    fn verify(cfg: &AuthConfig, token: &str) -> Result<AuthenticatedUser, String> {
        AccessVerifier::new(cfg)
            .unwrap()
            .verify(token)
            .map_err(|e| e.to_string())
    }

    fn sign(cfg: &AuthConfig, sub: &str, ttl: u64, extra: Value) -> String {
        let Value::Object(extra) = extra else {
            panic!("object")
        };
        AccessSigner::new(cfg)
            .unwrap()
            .sign(sub, ttl, &extra)
            .unwrap()
    }

    #[test]
    fn hs256_round_trip_with_companies_and_extra_claims() {
        let cfg = hs();
        let t = sign(
            &cfg,
            "u1",
            60,
            json!({"companies": ["c1", "c2"], "team": "blue"}),
        );
        let user = verify(&cfg, &t).unwrap();
        assert_eq!(user.id, "u1");
        assert_eq!(user.companies, vec!["c1", "c2"]);
        assert!(user.is_member_of("c2") && !user.is_member_of("c3"));
        assert_eq!(user.claims.get("team"), Some(&json!("blue")));
        assert!(user.claims.contains_key("iat"));
        assert!(user.expires_at_s >= now_s() + 59);
    }

    #[test]
    fn only_iat_and_application_claims_are_kept() {
        let cfg = AuthConfig {
            issuer: Some("twake".into()),
            ..hs()
        };
        let t = sign(
            &cfg,
            "u1",
            60,
            json!({"companies": ["c1"], "admin": ["c1"], "jti": "j", "aud": "x", "team": "blue"}),
        );
        let user = verify(&cfg, &t).unwrap();
        let kept: Vec<&str> = user.claims.iter().map(|(k, _)| k).collect();
        assert_eq!(kept, ["iat", "admin", "team"]);
        assert_eq!(user.claims.len(), 3);
        assert_eq!(user.claims["admin"], json!(["c1"]));
        for dropped in ["sub", "exp", "companies", "iss", "aud", "jti", "nbf"] {
            assert!(!user.claims.contains_key(dropped), "{dropped}");
            assert_eq!(user.claims[dropped], Value::Null, "{dropped}");
        }
        // A token with only the claims the verifier reads keeps nothing but `iat`, inline.
        let t = sign(&hs(), "u2", 60, json!({"companies": ["c1"]}));
        let user = verify(&hs(), &t).unwrap();
        assert_eq!(user.claims.len(), 1);
        assert!(user.claims["iat"].is_u64());
        assert_eq!(user.companies.capacity(), 1);
    }

    #[test]
    fn claims_insert_replaces_and_appends() {
        let mut c = Claims::default();
        assert!(c.is_empty());
        assert_eq!(c.insert("team".into(), json!("blue")), None);
        assert_eq!(c.insert("iat".into(), json!(5)), None);
        assert_eq!(c.insert("team".into(), json!("red")), Some(json!("blue")));
        assert_eq!(c.insert("n".into(), json!(3)), None);
        let all: Vec<(&str, &Value)> = c.iter().collect();
        assert_eq!(
            all,
            [
                ("iat", &json!(5)),
                ("team", &json!("red")),
                ("n", &json!(3))
            ]
        );
    }

    #[test]
    fn companies_claim_as_single_string_and_wrong_type() {
        let cfg = hs();
        let t = sign(&cfg, "u1", 60, json!({"companies": "c1"}));
        assert_eq!(verify(&cfg, &t).unwrap().companies, vec!["c1"]);
        let t = sign(&cfg, "u1", 60, json!({"companies": [1]}));
        assert_eq!(
            verify(&cfg, &t).unwrap_err(),
            "jwt claim invalid: companies"
        );
    }

    #[test]
    fn missing_and_too_long() {
        let cfg = hs();
        assert_eq!(verify(&cfg, "").unwrap_err(), "jwt must be provided");
        let long = "a".repeat(TOKEN_BYTES_MAX_DEFAULT + 1);
        assert_eq!(verify(&cfg, &long).unwrap_err(), "jwt too long");
    }

    #[test]
    fn malformed_tokens() {
        let cfg = hs();
        for t in [
            "abc",
            "a.b",
            "a.b.c.d",
            "!!!.e30.sig",
            "e30.e30.sig",
            "bm90IGpzb24.e30.sig",
        ] {
            assert_eq!(verify(&cfg, t).unwrap_err(), "jwt malformed", "token {t}");
        }
        // Valid header, payload not base64 JSON.
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        let msg = format!("{h}.bm90IGpzb24");
        let t = format!(
            "{msg}.{}",
            hmac_sign::sign(SECRET.as_bytes(), msg.as_bytes())
        );
        assert_eq!(verify(&cfg, &t).unwrap_err(), "jwt malformed");
    }

    #[test]
    fn expired_and_leeway() {
        let cfg = hs();
        let now = now_s();
        let expired = raw(
            &json!({"alg":"HS256"}),
            &json!({"sub":"u","exp": now - 3600}),
            SECRET.as_bytes(),
        );
        assert_eq!(verify(&cfg, &expired).unwrap_err(), "jwt expired");
        // Expired 5 s ago: inside the default 30 s leeway, outside a zero leeway.
        let recent = raw(
            &json!({"alg":"HS256"}),
            &json!({"sub":"u","exp": now - 5}),
            SECRET.as_bytes(),
        );
        assert!(verify(&cfg, &recent).is_ok());
        let strict = AuthConfig {
            leeway_s: 0,
            ..hs()
        };
        assert_eq!(verify(&strict, &recent).unwrap_err(), "jwt expired");
    }

    #[test]
    fn not_before_in_future() {
        let now = now_s();
        let t = raw(
            &json!({"alg":"HS256"}),
            &json!({"sub":"u","exp": now + 600, "nbf": now + 300}),
            SECRET.as_bytes(),
        );
        assert_eq!(verify(&hs(), &t).unwrap_err(), "jwt not active");
    }

    #[test]
    fn wrong_signature() {
        let t = sign(
            &AuthConfig::hs256("another-secret-another-secret-xx"),
            "u1",
            60,
            json!({}),
        );
        assert_eq!(verify(&hs(), &t).unwrap_err(), "invalid signature");
        // Tampered payload.
        let good = sign(&hs(), "u1", 60, json!({}));
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(json!({"sub":"admin","exp": now_s() + 60}).to_string());
        parts[1] = &forged;
        assert_eq!(
            verify(&hs(), &parts.join(".")).unwrap_err(),
            "invalid signature"
        );
    }

    #[test]
    fn alg_none_is_rejected() {
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let c = URL_SAFE_NO_PAD.encode(json!({"sub":"u","exp": now_s() + 60}).to_string());
        for t in [format!("{h}.{c}."), format!("{h}.{c}.c2ln")] {
            assert_eq!(verify(&hs(), &t).unwrap_err(), "invalid algorithm");
        }
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"None"}"#);
        assert_eq!(
            verify(&hs(), &format!("{h}.{c}.")).unwrap_err(),
            "invalid algorithm"
        );
    }

    #[test]
    fn wrong_alg_is_rejected() {
        // HS384 with the right secret: still refused, only HS256 is pinned.
        let k = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        let claims = json!({"sub":"u","exp": now_s() + 60});
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS384), &claims, &k).unwrap();
        assert_eq!(verify(&hs(), &t).unwrap_err(), "invalid algorithm");
        // RS256 token offered to an HS256 server, and HS256 token (signed with the public key as secret: the
        // classic confusion attack) offered to an RS256 server.
        let rs = AuthConfig {
            algorithm: JwtAlgorithm::Rs256,
            private_key_pem: Some(Secret::from(RSA_PRIVATE)),
            public_key_pem: Some(RSA_PUBLIC.into()),
            ..AuthConfig::default()
        };
        let t = sign(&rs, "u", 60, json!({}));
        assert_eq!(verify(&hs(), &t).unwrap_err(), "invalid algorithm");
        let confused = raw(&json!({"alg":"HS256"}), &claims, RSA_PUBLIC.as_bytes());
        assert_eq!(verify(&rs, &confused).unwrap_err(), "invalid algorithm");
    }

    #[test]
    fn missing_claims() {
        let now = now_s();
        let no_exp = raw(
            &json!({"alg":"HS256"}),
            &json!({"sub":"u"}),
            SECRET.as_bytes(),
        );
        assert_eq!(
            verify(&hs(), &no_exp).unwrap_err(),
            "jwt claim missing: exp"
        );
        let no_sub = raw(
            &json!({"alg":"HS256"}),
            &json!({"exp": now + 60}),
            SECRET.as_bytes(),
        );
        assert_eq!(
            verify(&hs(), &no_sub).unwrap_err(),
            "jwt claim missing: sub"
        );
        let bad_exp = raw(
            &json!({"alg":"HS256"}),
            &json!({"sub":"u","exp":"soon"}),
            SECRET.as_bytes(),
        );
        assert_eq!(
            verify(&hs(), &bad_exp).unwrap_err(),
            "jwt claim missing: exp"
        );
        let empty_sub = raw(
            &json!({"alg":"HS256"}),
            &json!({"sub":"","exp": now + 60}),
            SECRET.as_bytes(),
        );
        assert_eq!(
            verify(&hs(), &empty_sub).unwrap_err(),
            "jwt claim invalid: sub"
        );
    }

    #[test]
    fn issuer_and_audience() {
        let cfg = AuthConfig {
            issuer: Some("twake".into()),
            audience: Some("shardcast".into()),
            ..hs()
        };
        let good = sign(&cfg, "u", 60, json!({}));
        assert!(verify(&cfg, &good).is_ok());
        let wrong_iss = sign(&hs(), "u", 60, json!({"iss": "other", "aud": "shardcast"}));
        assert_eq!(verify(&cfg, &wrong_iss).unwrap_err(), "jwt issuer invalid");
        let wrong_aud = sign(&hs(), "u", 60, json!({"iss": "twake", "aud": "other"}));
        assert_eq!(
            verify(&cfg, &wrong_aud).unwrap_err(),
            "jwt audience invalid"
        );
        let no_iss = sign(&hs(), "u", 60, json!({"aud": "shardcast"}));
        assert_eq!(verify(&cfg, &no_iss).unwrap_err(), "jwt claim missing: iss");
        // Without configured checks an `aud` claim is ignored.
        assert!(verify(&hs(), &wrong_aud).is_ok());
    }

    #[test]
    fn rs256_and_es256() {
        for (alg, private, public) in [
            (JwtAlgorithm::Rs256, RSA_PRIVATE, RSA_PUBLIC),
            (JwtAlgorithm::Es256, EC_PRIVATE, EC_PUBLIC),
        ] {
            let cfg = AuthConfig {
                algorithm: alg,
                private_key_pem: Some(Secret::from(private)),
                public_key_pem: Some(public.into()),
                ..AuthConfig::default()
            };
            let t = sign(&cfg, "u9", 60, json!({"companies": ["c"]}));
            let user = verify(&cfg, &t).unwrap();
            assert_eq!((user.id.as_str(), user.companies.len()), ("u9", 1));
            let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
            parts[2] = URL_SAFE_NO_PAD.encode([7u8; 64]);
            assert_eq!(
                verify(&cfg, &parts.join(".")).unwrap_err(),
                "invalid signature",
                "{alg:?}"
            );
        }
    }

    #[test]
    fn config_errors_say_what_to_set() {
        assert_eq!(
            AccessVerifier::new(&AuthConfig::default()).unwrap_err(),
            AuthConfigError::MissingSecret
        );
        assert_eq!(
            AccessVerifier::new(&AuthConfig::hs256("")).unwrap_err(),
            AuthConfigError::EmptySecret
        );
        for short in ["x", "0123456789abcdef0123456789abcde"] {
            let e = AccessVerifier::new(&AuthConfig::hs256(short)).unwrap_err();
            assert_eq!(e, AuthConfigError::ShortSecret(short.len()));
            assert!(e.to_string().contains("at least 32 bytes"), "{e}");
            assert_eq!(
                AccessSigner::new(&AuthConfig::hs256(short)).unwrap_err(),
                AuthConfigError::ShortSecret(short.len())
            );
        }
        assert!(
            AccessVerifier::new(&AuthConfig::hs256("0123456789abcdef0123456789abcdef")).is_ok()
        );
        let rs = AuthConfig {
            algorithm: JwtAlgorithm::Rs256,
            ..AuthConfig::default()
        };
        assert_eq!(
            AccessVerifier::new(&rs).unwrap_err(),
            AuthConfigError::MissingPublicKey("RS256")
        );
        let bad = AuthConfig::public_key(JwtAlgorithm::Es256, "not a pem");
        assert_eq!(
            AccessVerifier::new(&bad).unwrap_err(),
            AuthConfigError::InvalidKey("ES256")
        );
        assert_eq!(
            AccessSigner::new(&rs).unwrap_err(),
            AuthConfigError::MissingPrivateKey("RS256")
        );
        assert_eq!(
            "es256".parse::<JwtAlgorithm>().unwrap(),
            JwtAlgorithm::Es256
        );
        assert!("none".parse::<JwtAlgorithm>().is_err());
    }

    #[test]
    fn debug_output_never_contains_secrets() {
        let cfg = AuthConfig {
            private_key_pem: Some(Secret::from(RSA_PRIVATE)),
            ..hs()
        };
        let rooms =
            RoomTokens::new(&Secret::from("room-secret-room-secret-room-sec"), 60, 30).unwrap();
        let outputs = [
            format!("{cfg:?}"),
            format!("{:?}", AccessVerifier::new(&cfg).unwrap()),
            format!("{:?}", AccessSigner::new(&cfg).unwrap()),
            format!("{rooms:?}"),
        ];
        for out in outputs {
            assert!(!out.contains(SECRET), "{out}");
            assert!(!out.contains("room-secret"), "{out}");
            assert!(!out.contains("PRIVATE KEY"), "{out}");
        }
    }

    #[test]
    fn claim_args() {
        assert_eq!(
            parse_claim_arg("companies=[\"a\",\"b\"]").unwrap(),
            ("companies".into(), json!(["a", "b"]))
        );
        assert_eq!(
            parse_claim_arg("team=blue").unwrap(),
            ("team".into(), json!("blue"))
        );
        assert_eq!(parse_claim_arg("n=3").unwrap(), ("n".into(), json!(3)));
        assert!(parse_claim_arg("novalue").is_err());
        assert!(parse_claim_arg("=x").is_err());
    }

    fn rooms() -> RoomTokens {
        RoomTokens::new(&Secret::from("room-secret-room-secret-room-sec"), 60, 0).unwrap()
    }

    #[test]
    fn room_token_round_trip() {
        let r = rooms();
        let t = r.sign("u1", "/channels").unwrap();
        assert_eq!(r.verify(&t, "u1", "/channels"), Ok(()));
    }

    #[test]
    fn room_token_negative_cases() {
        let r = rooms();
        let t = r.sign("u1", "/channels").unwrap();
        assert_eq!(
            r.verify(&t, "u2", "/channels").unwrap_err().to_string(),
            "room token is for another user"
        );
        assert_eq!(
            r.verify(&t, "u1", "/messages").unwrap_err().to_string(),
            "room token is for another room"
        );
        let expired = r.sign_until("u1", "/channels", now_s() - 10).unwrap();
        assert_eq!(
            r.verify(&expired, "u1", "/channels")
                .unwrap_err()
                .to_string(),
            "jwt expired"
        );
        assert_eq!(
            r.verify("", "u1", "/channels").unwrap_err().to_string(),
            "jwt must be provided"
        );
        assert_eq!(
            r.verify("twake", "u1", "/channels")
                .unwrap_err()
                .to_string(),
            "jwt malformed"
        );
        // A room token signed with another key (e.g. by a client) is refused.
        let other =
            RoomTokens::new(&Secret::from("client-forged-key-client-forged-k"), 60, 0).unwrap();
        let forged = other.sign("u1", "/channels").unwrap();
        assert_eq!(
            r.verify(&forged, "u1", "/channels")
                .unwrap_err()
                .to_string(),
            "invalid signature"
        );
        // An access token (no `name`) signed with the room key is not a room token.
        let access = sign(
            &AuthConfig::hs256("room-secret-room-secret-room-sec"),
            "u1",
            60,
            json!({}),
        );
        assert_eq!(
            r.verify(&access, "u1", "/channels")
                .unwrap_err()
                .to_string(),
            "jwt claim missing: name"
        );
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let c = URL_SAFE_NO_PAD
            .encode(json!({"sub":"u1","name":"/channels","exp": now_s() + 60}).to_string());
        assert_eq!(
            r.verify(&format!("{h}.{c}."), "u1", "/channels")
                .unwrap_err()
                .to_string(),
            "invalid algorithm"
        );
    }

    #[test]
    fn random_secrets_differ() {
        let (a, b) = (Secret::random(), Secret::random());
        assert_eq!(a.expose().len(), 32);
        assert_ne!(a, b);
    }
}
