//! What a pipe connects with: libpq connection strings (passwords and TLS
//! parameters taken out of them) and the passwords kept apart from events.
//!
//! Pure text handling, written once: the request checks redact with it and
//! the source connects with what it returns.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A pipe's passwords, split off its request and stored apart from the
/// events (`store::SecretStore` keeps them on disk in this form).
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PipeSecrets {
    /// Source password, from `source.password` or taken out of the
    /// connection string (None: there is none).
    pub source_password: Option<String>,
    /// Password of the ClickHouse user (None: there is none).
    pub destination_password: Option<String>,
}

impl PipeSecrets {
    /// No password at all.
    pub fn is_empty(&self) -> bool {
        self.source_password.is_none() && self.destination_password.is_none()
    }
}

impl std::fmt::Debug for PipeSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the values, only whether they are set.
        f.debug_struct("PipeSecrets")
            .field(
                "source_password",
                &self.source_password.as_ref().map(|_| "***"),
            )
            .field(
                "destination_password",
                &self.destination_password.as_ref().map(|_| "***"),
            )
            .finish()
    }
}

/// Removes the password from a libpq connection string (URL or key=value
/// form), returning the redacted string and the password it held.
pub fn split_password(conn: &str) -> (String, Option<String>) {
    let trimmed = conn.trim();
    let mut password = None;
    let mut rest = trimmed.to_owned();
    if is_url(trimmed) {
        let Ok(mut url) = url::Url::parse(trimmed) else {
            return (trimmed.to_owned(), None);
        };
        password = url.password().map(percent_decode);
        let _ = url.set_password(None);
        rest = url.to_string();
    }
    let (rest, taken) = take_params(&rest, &["password"]);
    if let Some((_, p)) = taken.into_iter().last() {
        password = Some(p);
    }
    (rest, password)
}

fn is_url(conn: &str) -> bool {
    conn.starts_with("postgres://") || conn.starts_with("postgresql://")
}

/// Removes the parameters named in `keys` from a libpq connection string
/// (URL query or key=value form); returns the rest and the removed pairs in
/// order, values unquoted/decoded. A URL that does not parse is returned
/// unchanged (the caller's parser will name the problem).
pub fn take_params(conn: &str, keys: &[&str]) -> (String, Vec<(String, String)>) {
    let trimmed = conn.trim();
    let mut taken = Vec::new();
    if is_url(trimmed) {
        let Ok(mut url) = url::Url::parse(trimmed) else {
            return (trimmed.to_owned(), taken);
        };
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if pairs.iter().any(|(k, _)| keys.contains(&k.as_str())) {
            let mut kept = 0;
            let mut q = url.query_pairs_mut();
            q.clear();
            for (k, v) in pairs {
                if keys.contains(&k.as_str()) {
                    taken.push((k, v));
                } else {
                    q.append_pair(&k, &v);
                    kept += 1;
                }
            }
            drop(q);
            if kept == 0 {
                url.set_query(None);
            }
        }
        return (url.to_string(), taken);
    }
    // key=value form: values may be single-quoted with \' and \\ escapes.
    let mut out = Vec::new();
    let mut rest = trimmed;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let Some(eq) = rest.find('=') else {
            out.push(rest.to_owned());
            break;
        };
        let key = rest[..eq].trim().to_owned();
        let after = rest[eq + 1..].trim_start();
        let (value, raw, remaining) = if let Some(stripped) = after.strip_prefix('\'') {
            let mut v = String::new();
            let mut end = stripped.len();
            let mut it = stripped.char_indices();
            while let Some((i, c)) = it.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = it.next() {
                            v.push(n);
                        }
                    }
                    '\'' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            let raw = &after[..(end + 1).min(after.len())];
            (v, raw.to_owned(), &stripped[end.min(stripped.len())..])
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (
                after[..end].to_owned(),
                after[..end].to_owned(),
                &after[end..],
            )
        };
        if keys.contains(&key.as_str()) {
            taken.push((key, value));
        } else {
            out.push(format!("{key}={raw}"));
        }
        rest = remaining;
    }
    (out.join(" "), taken)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// libpq's `sslmode`, less `allow` (plaintext first, then TLS), which
/// protects nothing and tokio-postgres cannot do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(
                    "sslmode=allow is not supported; use disable, prefer, require, verify-ca or verify-full"
                        .into(),
                );
            }
            other => {
                return Err(format!(
                    "sslmode={:?} is not one of disable, prefer, require, verify-ca, verify-full",
                    other.chars().take(40).collect::<String>()
                ));
            }
        })
    }

    /// Whether the server's certificate is checked.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// The TLS settings of a connection string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsParams {
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file of trusted CAs; None: the system's roots.
    pub root_cert: Option<PathBuf>,
}

/// Takes `sslmode` and `sslrootcert` out of a connection string (URL or
/// key=value form). The error names the bad parameter, never other values.
pub fn split_tls(conn: &str) -> Result<(String, TlsParams), String> {
    let (rest, taken) = take_params(conn, &["sslmode", "sslrootcert"]);
    let mut params = TlsParams::default();
    // The last occurrence wins, as in libpq.
    for (key, value) in taken {
        if key == "sslmode" {
            params.mode = SslMode::parse(&value)?;
        } else {
            params.root_cert = match value.as_str() {
                "" | "system" => None,
                path => Some(PathBuf::from(path)),
            };
        }
    }
    Ok((rest, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_params_are_taken_from_both_forms() {
        let (rest, p) = split_tls(
            "postgres://app@db:5432/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=5",
        )
        .unwrap();
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(rest, "postgres://app@db:5432/app?connect_timeout=5");

        let (rest, p) =
            split_tls("host=db sslmode=verify-ca sslrootcert='/a b/ca.pem' dbname=app").unwrap();
        assert_eq!(p.mode, SslMode::VerifyCa);
        assert_eq!(p.root_cert, Some(PathBuf::from("/a b/ca.pem")));
        assert_eq!(rest, "host=db dbname=app");

        let (rest, p) = split_tls("postgres://db/app").unwrap();
        assert_eq!(p, TlsParams::default());
        assert_eq!(rest, "postgres://db/app");
        assert_eq!(
            split_tls("host=db sslrootcert=system sslmode=require")
                .unwrap()
                .1,
            TlsParams {
                mode: SslMode::Require,
                root_cert: None
            }
        );
    }

    #[test]
    fn unknown_ssl_modes_are_named() {
        let e = split_tls("host=db sslmode=verify password=x").unwrap_err();
        assert!(e.contains("sslmode=\"verify\""), "{e}");
        assert!(!e.contains("password"), "{e}");
        assert!(split_tls("host=db sslmode=allow").is_err());
    }

    /// `conn` splits into `rest` and `password`.
    fn splits(conn: &str, rest: &str, password: Option<&str>) {
        let (r, p) = split_password(conn);
        assert_eq!((r.as_str(), p.as_deref()), (rest, password), "{conn}");
    }

    #[test]
    fn passwords_are_split_from_url_connection_strings() {
        splits(
            "postgres://alice:s%40cret@db:5432/app?sslmode=require",
            "postgres://alice@db:5432/app?sslmode=require",
            Some("s@cret"),
        );
        splits(
            "postgres://alice@db/app?password=x",
            "postgres://alice@db/app",
            Some("x"),
        );
    }

    #[test]
    fn passwords_are_split_from_key_value_connection_strings() {
        splits(
            "host=db password='a b\\'c' dbname=app",
            "host=db dbname=app",
            Some("a b'c"),
        );
        splits(
            "host=db password=plain user=u",
            "host=db user=u",
            Some("plain"),
        );
    }
}
