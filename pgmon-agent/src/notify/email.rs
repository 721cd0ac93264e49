//! The email sink: one message per payload over SMTP with the `lettre` crate (its tokio
//! transport, TLS by rustls with the system's CA store: no OpenSSL on the host). The
//! subject is the payload's one-line text, the body its details, as plain UTF-8 text.

use std::path::PathBuf;

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
    transport::smtp::authentication::Credentials,
};
use serde::Deserialize;

use super::Payload;

/// How the SMTP session is protected.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Security {
    /// Plain SMTP, then STARTTLS, refused if the server does not offer it (default; port
    /// 587 unless `port` says otherwise, RFC 6409).
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS; port 465 unless `port` says otherwise, RFC 8314).
    Tls,
    /// No encryption at all (port 25 unless `port` says otherwise): for a relay on the
    /// same host or a trusted network only.
    None,
}

/// `email:` in a notifier list.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The sink's name in logs and in the `sink` label (default `email`).
    #[serde(default)]
    pub name: Option<String>,
    /// The SMTP server's host name (checked against its certificate under TLS).
    pub host: String,
    /// Its port (default by `security`: 587, 465 or 25).
    #[serde(default)]
    pub port: Option<u16>,
    /// `starttls` (default), `tls` or `none`.
    #[serde(default)]
    pub security: Security,
    /// SMTP user, when the server asks for authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// File whose content (trailing newline removed) is the SMTP password, so the policy
    /// file need not hold it. Read at start.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The sender, `pgmon <pgmon@example.com>` or a bare address.
    pub from: String,
    /// The recipients (at least one).
    pub to: Vec<String>,
}

/// An email sink that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    /// `from` or a `to` address does not parse (RFC 5322 mailbox).
    #[error("{field}: {value:?} is not an email address: {source}")]
    Address {
        field: String,
        value: String,
        #[source]
        source: lettre::address::AddressError,
    },
    /// No recipient.
    #[error("to: needs at least one address")]
    NoRecipient,
    /// `password_file` cannot be read.
    #[error("password_file: cannot read {path}")]
    Password {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TLS parameters for `host` could not be built.
    #[error("host: {0}")]
    Transport(#[source] lettre::transport::smtp::Error),
}

impl EmailConfig {
    /// The parsed sender and recipients.
    pub fn mailboxes(&self) -> Result<(Mailbox, Vec<Mailbox>), EmailError> {
        let parse = |field: String, v: &str| {
            v.parse::<Mailbox>().map_err(|source| EmailError::Address {
                field,
                value: v.to_owned(),
                source,
            })
        };
        if self.to.is_empty() {
            return Err(EmailError::NoRecipient);
        }
        let from = parse("from".into(), &self.from)?;
        let to = self
            .to
            .iter()
            .enumerate()
            .map(|(i, t)| parse(format!("to[{i}]"), t))
            .collect::<Result<_, _>>()?;
        Ok((from, to))
    }
}

/// A ready email sink.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// Builds the transport (no connection is made until the first message); `timeout` is
    /// lettre's per-command timeout.
    pub fn new(config: &EmailConfig, timeout: std::time::Duration) -> Result<Self, EmailError> {
        let (from, to) = config.mailboxes()?;
        let host = config.host.as_str();
        let builder = match config.security {
            Security::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .map_err(EmailError::Transport)?,
            Security::Tls => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(host).map_err(EmailError::Transport)?
            }
            Security::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
        };
        let mut builder = builder.timeout(Some(timeout));
        if let Some(port) = config.port {
            builder = builder.port(port);
        }
        if let Some(user) = &config.username {
            let password = match &config.password_file {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|source| EmailError::Password {
                        path: path.clone(),
                        source,
                    })?
                    .trim_end_matches(['\n', '\r'])
                    .to_owned(),
                None => String::new(),
            };
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            to,
        })
    }

    /// The message for `payload`: subject its text (at most 200 characters), body its
    /// details.
    pub fn message(&self, payload: &Payload) -> Result<Message, String> {
        let mut m = Message::builder()
            .from(self.from.clone())
            .subject(payload.text.chars().take(200).collect::<String>())
            .header(ContentType::TEXT_PLAIN)
            .user_agent("pgmon-agent".into());
        for to in &self.to {
            m = m.to(to.clone());
        }
        let body = match &payload.link {
            Some(url) => format!("{}\nOpen in pgmon: {url}\n", payload.details),
            None => payload.details.clone(),
        };
        m.body(body).map_err(|e| e.to_string())
    }

    /// Sends `payload`; the error is the SMTP failure as text.
    pub async fn send(&self, payload: &Payload) -> Result<(), String> {
        let m = self.message(payload)?;
        self.transport
            .send(m)
            .await
            .map(|_| ())
            .map_err(|e| crate::util::error_chain(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(to: &[&str]) -> EmailConfig {
        EmailConfig {
            name: None,
            host: "localhost".into(),
            port: Some(2525),
            security: Security::None,
            username: None,
            password_file: None,
            from: "pgmon <pgmon@db1.example>".into(),
            to: to.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn the_message_carries_text_as_subject_and_details_as_body() {
        let m = Mailer::new(
            &config(&["dba@example.com", "Ops <ops@example.com>"]),
            std::time::Duration::from_secs(5),
        )
        .unwrap();
        let p = Payload {
            key: "k".into(),
            text: "[FIRING warning] PostgresLongTransaction: open for 6m".into(),
            details: "alert: PostgresLongTransaction\nvalue: 360".into(),
            json: serde_json::Value::Null,
            link: Some("https://db1:8181/#/overview".into()),
        };
        let raw = String::from_utf8(m.message(&p).unwrap().formatted()).unwrap();
        assert!(
            raw.contains("Open in pgmon: https://db1:8181/#/overview"),
            "{raw}"
        );
        assert!(raw.contains("From: pgmon <pgmon@db1.example>"), "{raw}");
        assert!(
            raw.contains("To: dba@example.com, Ops <ops@example.com>"),
            "{raw}"
        );
        assert!(
            raw.contains("Subject: [FIRING warning] PostgresLongTransaction: open for 6m"),
            "{raw}"
        );
        assert!(
            raw.contains("Content-Type: text/plain; charset=utf-8"),
            "{raw}"
        );
        assert!(
            raw.contains("\r\n\r\nalert: PostgresLongTransaction\r\nvalue: 360"),
            "{raw}"
        );
    }

    #[test]
    fn bad_addresses_name_the_field() {
        let e = config(&["dba@example.com", "not an address"])
            .mailboxes()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("to[1]: \"not an address\" is not an email address"),
            "{e}"
        );
        assert_eq!(
            config(&[]).mailboxes().unwrap_err().to_string(),
            "to: needs at least one address"
        );
    }
}
