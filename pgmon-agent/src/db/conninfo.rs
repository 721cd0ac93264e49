//! The parts of a libpq connection string that `tokio_postgres::Config` does not take:
//! `sslmode` `verify-ca` and `verify-full`, `sslrootcert` and `passfile` (PostgreSQL docs,
//! 34.1.2 "Parameter Key Words"), and the password file format of 34.16 "The Password
//! File". They are taken out of the string, which `tokio_postgres::Config` then parses.

use std::path::{Path, PathBuf};

/// How the server's certificate is checked, from `sslmode` (34.19.1 "Client Verification
/// of Server Certificates"). `allow` is read as `prefer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// `disable`: never TLS.
    Disable,
    /// `allow`, `prefer` (libpq's default): TLS when the server offers it, certificate
    /// not checked.
    Prefer,
    /// `require`: TLS or no session, certificate not checked.
    Require,
    /// `verify-ca`: TLS, the certificate chains to `sslrootcert`; any host name.
    VerifyCa,
    /// `verify-full`: as `verify-ca`, and the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// A connection string split in two: what `tokio_postgres::Config` parses (`rest`, in the
/// same form, keyword/value or URI) and the keywords pgmon handles itself.
#[derive(Debug, PartialEq)]
pub struct Split {
    /// The connection string without `sslmode`, `sslrootcert` and `passfile`.
    pub rest: String,
    /// `sslmode`; `Prefer` when absent, as in libpq.
    pub ssl_mode: SslMode,
    /// `sslrootcert`: a PEM file of trusted certificates, or `system` for the system's.
    pub ssl_root_cert: Option<String>,
    /// `passfile`.
    pub passfile: Option<PathBuf>,
}

/// Splits `conninfo`, a keyword/value string (`host=db port=5432 sslmode='verify-full'`)
/// or a URI (`postgresql://db/app?sslmode=verify-full`). Errors: an unterminated quote, a
/// keyword without `=`, an unknown `sslmode`; the message names the keyword.
pub fn split(conninfo: &str) -> Result<Split, String> {
    let trimmed = conninfo.trim_start();
    let (rest, pairs) =
        if trimmed.starts_with("postgresql://") || trimmed.starts_with("postgres://") {
            split_uri(trimmed)?
        } else {
            split_keywords(conninfo)?
        };
    let mut out = Split {
        rest,
        ssl_mode: SslMode::Prefer,
        ssl_root_cert: None,
        passfile: None,
    };
    for (key, value) in pairs {
        match key.as_str() {
            "sslmode" => {
                out.ssl_mode = SslMode::parse(&value).ok_or_else(|| {
                    format!(
                        "sslmode {value:?} is not disable, allow, prefer, require, verify-ca or verify-full"
                    )
                })?
            }
            "sslrootcert" => out.ssl_root_cert = Some(value),
            _ => out.passfile = Some(PathBuf::from(value)),
        }
    }
    Ok(out)
}

const OURS: [&str; 3] = ["sslmode", "sslrootcert", "passfile"];

/// Keyword/value form: `key = value` pairs separated by spaces; a value is bare (ended by
/// a space, `\` escapes the next character) or single-quoted (`\'` and `\\` inside).
fn split_keywords(s: &str) -> Result<(String, Vec<(String, String)>), String> {
    let mut chars = s.chars().peekable();
    let mut rest = String::new();
    let mut ours = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("{key:?} is not followed by ="));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(format!("the value of {key} has no closing quote")),
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        if OURS.contains(&key.as_str()) {
            ours.push((key, value));
        } else {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            rest.push_str(&format!("{key}='{quoted}' "));
        }
    }
    Ok((rest.trim_end().to_owned(), ours))
}

/// URI form: the query's `key=value` pairs, percent-decoded; the others are kept as they
/// were written.
fn split_uri(s: &str) -> Result<(String, Vec<(String, String)>), String> {
    let Some((head, query)) = s.split_once('?') else {
        return Ok((s.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut ours = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        let key = decode(key)?;
        if OURS.contains(&key.as_str()) {
            ours.push((key, decode(value)?));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        head.to_owned()
    } else {
        format!("{head}?{}", kept.join("&"))
    };
    Ok((rest, ours))
}

fn decode(s: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| format!("{s:?} is not UTF-8 once percent-decoded"))
}

/// The password file libpq would read: `passfile`, else `PGPASSFILE`, else `~/.pgpass`
/// (34.16). None when none is named and `HOME` is unset.
pub fn passfile_path(passfile: Option<&Path>) -> Option<PathBuf> {
    passfile
        .map(Path::to_owned)
        .or_else(|| std::env::var_os("PGPASSFILE").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")))
}

/// The password of the first line of `text` (a password file, 34.16) that matches: each
/// line `hostname:port:database:username:password`, `*` matching anything in the first
/// four fields, `\:` and `\\` escapes, `#` lines comments. A Unix-socket `host` (a path)
/// also matches `localhost`, as libpq does for its default socket directory.
pub fn pgpass_lookup(
    text: &str,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    let port = port.to_string();
    let socket = host.starts_with('/');
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .find_map(|line| {
            let fields = pgpass_fields(line);
            let [h, p, d, u, password] = <[String; 5]>::try_from(fields).ok()?;
            let host_ok = h == "*" || h == host || (socket && h == "localhost");
            let ok = host_ok
                && (p == "*" || p == port)
                && (d == "*" || d == dbname)
                && (u == "*" || u == user);
            ok.then_some(password)
        })
}

/// Splits one password-file line at unescaped colons into exactly as many fields as it
/// has (the password keeps any further escaped colons).
fn pgpass_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().expect("one").extend(chars.next()),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("one").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_value_strings_lose_only_pgmons_keywords() {
        let s = split(
            "host=db.example.com port = 5433 user=pgmon sslmode=verify-full \
             sslrootcert='/etc/pgmon/ca dir/root.crt' password='it\\'s' passfile=/p",
        )
        .unwrap();
        assert_eq!(s.ssl_mode, SslMode::VerifyFull);
        assert_eq!(
            s.ssl_root_cert.as_deref(),
            Some("/etc/pgmon/ca dir/root.crt")
        );
        assert_eq!(s.passfile.as_deref(), Some(Path::new("/p")));
        assert_eq!(
            s.rest,
            "host='db.example.com' port='5433' user='pgmon' password='it\\'s'"
        );
        let c: tokio_postgres::Config = s.rest.parse().unwrap();
        assert_eq!(c.get_password(), Some(&b"it's"[..]));
        assert_eq!(split("host=/tmp").unwrap().ssl_mode, SslMode::Prefer);
        assert!(split("host='open").unwrap_err().contains("closing quote"));
        assert!(split("sslmode=maybe").unwrap_err().contains("verify-full"));
        assert!(split("host").unwrap_err().contains("="));
    }

    #[test]
    fn uris_keep_their_other_parameters() {
        let s = split("postgresql://pgmon@db:5433/app?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=3")
            .unwrap();
        assert_eq!(s.ssl_mode, SslMode::VerifyCa);
        assert_eq!(s.ssl_root_cert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(s.rest, "postgresql://pgmon@db:5433/app?connect_timeout=3");
        assert_eq!(
            split("postgres://db/app").unwrap().rest,
            "postgres://db/app"
        );
    }

    #[test]
    fn password_files_match_like_libpq() {
        let file = "# comment\n\
                    other:5432:*:pgmon:wrong\n\
                    db.example.com:*:postgres:pgmon:a\\:b\\\\c\n\
                    localhost:5432:*:*:socket\n\
                    *:*:*:*:fallback\n";
        assert_eq!(
            pgpass_lookup(file, "db.example.com", 5432, "postgres", "pgmon").as_deref(),
            Some("a:b\\c")
        );
        assert_eq!(
            pgpass_lookup(file, "/var/run/postgresql", 5432, "x", "y").as_deref(),
            Some("socket")
        );
        assert_eq!(
            pgpass_lookup(file, "db.example.com", 5432, "app", "pgmon").as_deref(),
            Some("fallback")
        );
        assert_eq!(pgpass_lookup("h:1:d:u\n", "h", 1, "d", "u"), None);
    }
}
