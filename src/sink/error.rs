use clickhouse::error::Error as ChError;

/// Everything that can go wrong in the sink. Messages never contain the
/// password; URLs in them have credentials and query strings stripped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The destination URL is not an http(s) URL pgpipe can use.
    #[error("invalid ClickHouse URL {url:?}: {reason}")]
    InvalidUrl {
        /// The ClickHouse URL, credentials and query stripped.
        url: String,
        /// What is wrong.
        reason: String,
    },

    /// Connection refused, DNS failure, timeout, connection reset, TLS...
    /// Usually transient: retry later.
    #[error(
        "ClickHouse at {url} is unreachable: {reason} \
         (check that the server runs and that the URL and port are right)"
    )]
    Unreachable {
        /// The ClickHouse URL, credentials and query stripped.
        url: String,
        /// What is wrong.
        reason: String,
    },

    /// A TLS problem: an untrusted or mismatched certificate, a CA file that
    /// cannot be read, or a server that does not speak TLS on that port.
    #[error(
        "TLS with ClickHouse at {url} failed: {reason} \
         (check destination.ca_cert and that the server's certificate is for this host)"
    )]
    Tls {
        /// The ClickHouse URL, credentials and query stripped.
        url: String,
        /// What is wrong.
        reason: String,
    },

    /// ClickHouse refused the user or password.
    #[error(
        "ClickHouse at {url} rejected the credentials of user {user:?}: {message} \
         (check the user name and password)"
    )]
    Auth {
        /// The ClickHouse URL, credentials and query stripped.
        url: String,
        /// The ClickHouse user.
        user: String,
        /// What ClickHouse (or the check) said.
        message: String,
    },

    /// An error the server reported (`Code: N. DB::Exception: ...`).
    #[error("ClickHouse error{}: {message}", code.map(|c| format!(" {c}")).unwrap_or_default())]
    Server {
        /// ClickHouse's error code, when the message has one.
        code: Option<u32>,
        /// What ClickHouse (or the check) said.
        message: String,
    },

    /// Other client-side errors of the `clickhouse` crate.
    #[error("ClickHouse client error: {0}")]
    Client(#[source] ChError),

    /// A source value that cannot be converted to its ClickHouse column.
    #[error("table {table}, column {column:?}: {message}")]
    Value {
        /// The ClickHouse table.
        table: String,
        /// The column.
        column: String,
        /// What ClickHouse (or the check) said.
        message: String,
    },

    /// Invalid table definition, unsupported type, unknown column, or a
    /// destination table that does not match the source.
    #[error("{0}")]
    Schema(String),

    /// `fill_unchanged` found no row in ClickHouse to take an unchanged
    /// TOAST value from.
    #[error(
        "table {table}: no row with key {key} in ClickHouse to take the unchanged value of \
         column {column:?} from (the destination is missing rows: resync the table)"
    )]
    ToastRowMissing {
        /// The ClickHouse table.
        table: String,
        /// The column.
        column: String,
        /// The row's key values.
        key: String,
    },

    /// A [`super::TableWriter`] used after its insert failed.
    #[error("insert into table {table} already failed: {message}")]
    WriterFailed {
        /// The ClickHouse table.
        table: String,
        /// What ClickHouse (or the check) said.
        message: String,
    },

    /// A row has a different number of cells than the table has columns.
    #[error("table {table}: row has {got} values, the table has {want} columns")]
    RowWidth {
        /// The ClickHouse table.
        table: String,
        /// Cells in the row.
        got: usize,
        /// Columns of the table.
        want: usize,
    },
}

impl SinkError {
    /// Whether retrying the same operation later may succeed (network
    /// trouble, timeouts, server overload), as opposed to errors that need
    /// a change (credentials, schema, data).
    pub fn is_transient(&self) -> bool {
        match self {
            // A certificate or CA file can be fixed without a resync.
            SinkError::Unreachable { .. } | SinkError::Tls { .. } => true,
            // TOO_MANY_PARTS, TIMEOUT_EXCEEDED, MEMORY_LIMIT_EXCEEDED,
            // TOO_MANY_SIMULTANEOUS_QUERIES, NETWORK_ERROR, SOCKET_TIMEOUT,
            // ALL_CONNECTION_TRIES_FAILED, ABORTED.
            SinkError::Server { code: Some(c), .. } => {
                matches!(c, 252 | 159 | 241 | 202 | 210 | 209 | 279 | 236)
            }
            _ => false,
        }
    }

    /// The server's error code, if the server reported one.
    pub fn server_code(&self) -> Option<u32> {
        match self {
            SinkError::Server { code, .. } => *code,
            SinkError::Auth { .. } => Some(516),
            _ => None,
        }
    }
}

/// `Code: 60. DB::Exception: ...` → 60.
pub(crate) fn parse_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + 6..];
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

/// Codes that mean "who you are or what you claim is not accepted":
/// UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD, AUTHENTICATION_FAILED.
pub(crate) fn is_auth_code(code: u32) -> bool {
    matches!(code, 192 | 193 | 194 | 516)
}

/// Maps a crate error; `url`/`user` only go into messages.
pub(crate) fn from_ch(err: ChError, url: &str, user: &str) -> SinkError {
    match err {
        ChError::Network(e) => {
            let reason = error_chain(&*e);
            if is_tls_failure(&reason) {
                SinkError::Tls {
                    url: url.to_string(),
                    reason,
                }
            } else {
                SinkError::Unreachable {
                    url: url.to_string(),
                    reason,
                }
            }
        }
        ChError::TimedOut => SinkError::Unreachable {
            url: url.to_string(),
            reason: "timed out".into(),
        },
        ChError::BadResponse(message) => {
            let code = parse_code(&message).or_else(|| message.trim().parse().ok());
            let message = message.trim().to_string();
            match code {
                Some(c) if is_auth_code(c) => SinkError::Auth {
                    url: url.to_string(),
                    user: user.to_string(),
                    message,
                },
                _ => SinkError::Server { code, message },
            }
        }
        other => SinkError::Client(other),
    }
}

/// Whether a network error's chain is a TLS failure: rustls' messages
/// (through hyper-rustls' io::Error) for a rejected certificate, a TLS alert,
/// or a peer that does not speak TLS. Retrying would not help.
fn is_tls_failure(chain: &str) -> bool {
    const MARKERS: [&str; 5] = [
        "invalid peer certificate",
        "received fatal alert",
        "corrupt message",
        "peer is incompatible",
        "peer misbehaved",
    ];
    MARKERS.iter().any(|m| chain.contains(m))
}

/// "error: cause: cause" — hyper's top-level messages alone ("client error
/// (Connect)") do not say what happened.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(
            parse_code("Code: 60. DB::Exception: Table x does not exist"),
            Some(60)
        );
        assert_eq!(parse_code("nothing"), None);
        let e = from_ch(
            ChError::BadResponse("Code: 516. DB::Exception: u: Authentication failed".into()),
            "http://h:8123",
            "u",
        );
        assert!(matches!(e, SinkError::Auth { .. }), "{e:?}");
        let e = from_ch(
            ChError::BadResponse("Code: 60. DB::Exception: nope".into()),
            "u",
            "u",
        );
        assert_eq!(e.server_code(), Some(60));
        assert!(!e.is_transient());
    }
}
