//! How the commands that talk to a running agent (`status`, `unlock`, `cost forget`) reach
//! it: plain HTTP by default, HTTPS with `--https` when the agent serves `metrics.tls`, and
//! HTTP basic authentication with `--user` when it has `metrics.basic_auth_users` (the
//! password from the environment, never from the command line, where `ps` would show it).
//!
//! Over HTTPS the agent's certificate is checked against `--ca-file` (a PEM file: the
//! certificate itself when it is self-signed, or the CA that signed it), or against the
//! system's roots without it; its names must include the host of `--addr` (for
//! `127.0.0.1`, an `IP:127.0.0.1` subject alternative name).

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Method, StatusCode, header};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

/// The environment variable that holds the password of `--user`.
pub const PASSWORD_VAR: &str = "PGMON_HTTP_PASSWORD";

/// Where the running agent listens and how to speak to it.
#[derive(Clone, Debug, clap::Args)]
pub struct AgentArgs {
    /// The agent's HTTP address (its metrics.listen).
    #[arg(long, default_value = "127.0.0.1:8181")]
    pub addr: SocketAddr,
    /// Speak HTTPS (the agent serves metrics.tls).
    #[arg(long)]
    pub https: bool,
    /// With --https: trust the certificates of this PEM file (the agent's own certificate
    /// when self-signed, or its CA) instead of the system's roots.
    #[arg(long, requires = "https")]
    pub ca_file: Option<PathBuf>,
    /// HTTP basic-auth user (one of metrics.basic_auth_users); the password is read from
    /// the environment variable PGMON_HTTP_PASSWORD.
    #[arg(long)]
    pub user: Option<String>,
}

impl AgentArgs {
    /// `http://ADDR` or `https://ADDR`.
    pub fn base(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Sends `method path_and_query` with an empty body and returns the answer's text.
    ///
    /// # Errors
    /// The agent is not there or gave no answer within `timeout`; the TLS handshake failed
    /// (the message says why: an unknown issuer, a name mismatch); `--ca-file` cannot be
    /// read or holds no certificate; `--user` without PGMON_HTTP_PASSWORD; any non-2xx
    /// answer, with its text (401 says how to give credentials).
    pub fn request(
        &self,
        method: Method,
        path_and_query: &str,
        timeout: std::time::Duration,
    ) -> anyhow::Result<String> {
        let authorization = self.authorization()?;
        let tls = self.tls_config()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let addr = self.addr;
        rt.block_on(async {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .build();
            let client = Client::builder(TokioExecutor::new()).build(connector);
            let uri: hyper::Uri = format!("{}{path_and_query}", self.base()).parse()?;
            let mut req = hyper::Request::builder().method(method).uri(uri);
            if let Some(a) = &authorization {
                req = req.header(header::AUTHORIZATION, a);
            }
            let req = req.body(Empty::<bytes::Bytes>::new())?;
            let resp = tokio::time::timeout(timeout, client.request(req))
                .await
                .with_context(|| format!("no answer from the agent at {addr} within {timeout:?}"))?
                .map_err(|e| anyhow::anyhow!(crate::util::error_chain(&e)))
                .with_context(|| {
                    format!(
                        "cannot reach the agent at {} (is `pgmon-agent run` running? does it \
                         serve {}?)",
                        self.base(),
                        if self.https {
                            "HTTPS"
                        } else {
                            "plain HTTP: add --https if it has metrics.tls"
                        }
                    )
                })?;
            let code = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            let text = String::from_utf8_lossy(&body).trim().to_owned();
            if code == StatusCode::UNAUTHORIZED {
                bail!(
                    "the agent at {addr} wants credentials (HTTP 401): pass --user NAME and \
                     set {PASSWORD_VAR}{}",
                    if authorization.is_some() {
                        " (the ones given were refused)"
                    } else {
                        ""
                    }
                );
            }
            if !code.is_success() {
                bail!("{text} (HTTP {code})");
            }
            Ok(text)
        })
    }

    /// `Basic base64(user:password)` when `--user` is given.
    fn authorization(&self) -> anyhow::Result<Option<String>> {
        let Some(user) = &self.user else {
            return Ok(None);
        };
        let password = std::env::var(PASSWORD_VAR)
            .with_context(|| format!("--user {user} needs its password in {PASSWORD_VAR}"))?;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Ok(Some(format!("Basic {token}")))
    }

    /// The TLS client settings: `--ca-file`'s certificates, else the system's roots (read
    /// only with `--https`).
    fn tls_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        let mut roots = rustls::RootCertStore::empty();
        match (&self.ca_file, self.https) {
            (Some(path), _) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .and_then(|i| i.collect())
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .with_context(|| format!("--ca-file {}", path.display()))?;
                if certs.is_empty() {
                    bail!("--ca-file {}: no PEM certificate in it", path.display());
                }
                for c in certs {
                    roots
                        .add(c)
                        .with_context(|| format!("--ca-file {}", path.display()))?;
                }
            }
            (None, true) => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    bail!(
                        "no system root certificate to check the agent's against: pass --ca-file"
                    );
                }
            }
            (None, false) => {}
        }
        crate::util::tls_provider();
        Ok(rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}
