//! Who may read the HTTP listener, following the Prometheus exporters' web configuration
//! (exporter-toolkit's `web.config.file`): optional TLS (a PEM certificate chain and key)
//! and optional HTTP basic authentication against bcrypt hashes
//! (`htpasswd -nBC 10 USER`, or Python's `bcrypt.hashpw`). With users configured, every
//! request — the UI, `/api/v1/*`, `/metrics`, `/healthz` — without valid credentials is
//! answered 401 with `WWW-Authenticate: Basic`, never data.
//!
//! bcrypt is slow on purpose (≈ 50–100 ms at cost 10 on these hosts), so a verified
//! (user, password) pair is remembered for [`VERIFIED_TTL`] by its SHA-256 (the password is
//! not kept) and checked off the async threads.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use axum::{
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use base64::Engine as _;
use serde::Deserialize;

/// How long a verified (user, password) pair skips bcrypt.
pub const VERIFIED_TTL: Duration = Duration::from_secs(300);

/// TLS for the listener: both files PEM, read at start.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Checks `user → bcrypt hash` entries at load time: each hash is a bcrypt hash
/// (`$2a$`, `$2b$` or `$2y$`, cost, 53 characters of salt and hash).
pub fn validate_users(users: &BTreeMap<String, String>) -> Result<(), (String, String)> {
    for (user, hash) in users {
        let field = format!("metrics.basic_auth_users.{user}");
        if user.is_empty() || user.contains(':') {
            return Err((field, "a user name is not empty and has no ':'".into()));
        }
        let ok = ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
            && hash.len() == 60
            && hash.parse::<bcrypt::HashParts>().is_ok();
        if !ok {
            return Err((
                field,
                "is not a bcrypt hash (make one with `htpasswd -nBC 10 USER`)".into(),
            ));
        }
    }
    Ok(())
}

/// The users of `basic_auth_users` and the pairs verified lately.
pub struct Users {
    hashes: BTreeMap<String, String>,
    verified: moka::sync::Cache<[u8; 32], ()>,
}

impl Users {
    /// `None` when no user is configured (no authentication).
    pub fn new(hashes: &BTreeMap<String, String>) -> Option<Arc<Users>> {
        (!hashes.is_empty()).then(|| {
            Arc::new(Users {
                hashes: hashes.clone(),
                verified: moka::sync::Cache::builder()
                    .max_capacity(1024)
                    .time_to_live(VERIFIED_TTL)
                    .build(),
            })
        })
    }

    /// Whether `authorization` (the header's value) names a user with the right password.
    pub async fn check(self: &Arc<Self>, authorization: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = authorization.and_then(decode) else {
            return false;
        };
        let Some(hash) = self.hashes.get(&user).cloned() else {
            return false;
        };
        let key = digest(&user, &password, &hash);
        if self.verified.contains_key(&key) {
            return true;
        }
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        if ok {
            self.verified.insert(key, ());
        }
        ok
    }
}

/// `Basic base64(user:password)` → (user, password).
fn decode(v: &HeaderValue) -> Option<(String, String)> {
    let b64 = v.to_str().ok()?.strip_prefix("Basic ")?.trim();
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn digest(user: &str, password: &str, hash: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [user, password, hash] {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The layer in front of every route when users are configured.
pub async fn require_user(State(users): State<Arc<Users>>, req: Request, next: Next) -> Response {
    if users.check(req.headers().get(header::AUTHORIZATION)).await {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [
                (
                    header::WWW_AUTHENTICATE,
                    "Basic realm=\"pgmon\", charset=\"UTF-8\"",
                ),
                (header::CONTENT_TYPE, "text/plain"),
            ],
            "401 Unauthorized\n",
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bcrypt_user_is_let_in_and_nobody_else() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let users = Users::new(&[("dba".to_owned(), hash.clone())].into()).unwrap();
        validate_users(&[("dba".to_owned(), hash)].into()).unwrap();
        let header = |s: &str| {
            HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            ))
            .unwrap()
        };
        assert!(users.check(Some(&header("dba:s3cret"))).await);
        assert!(users.check(Some(&header("dba:s3cret"))).await, "cached");
        assert!(!users.check(Some(&header("dba:wrong"))).await);
        assert!(!users.check(Some(&header("other:s3cret"))).await);
        assert!(!users.check(None).await);
        assert!(
            !users
                .check(Some(&HeaderValue::from_static("Bearer x")))
                .await
        );
        assert!(validate_users(&[("dba".to_owned(), "plain".to_owned())].into()).is_err());
    }
}
