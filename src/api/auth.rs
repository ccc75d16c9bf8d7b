//! Bearer-token check for every RPC but health.

use std::sync::Arc;

use tonic::{Request, Status};

/// Interceptor requiring `authorization: Bearer <token>` when a token is set.
#[derive(Clone)]
pub struct BearerAuth {
    token: Option<Arc<[u8]>>,
}

impl BearerAuth {
    pub fn new(token: Option<&str>) -> Self {
        Self {
            token: token
                .filter(|t| !t.is_empty())
                .map(|t| Arc::from(t.as_bytes())),
        }
    }

    #[allow(clippy::result_large_err)]
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(t) if constant_time_eq(t.as_bytes(), expected) => Ok(req),
            Some(_) => {
                // The presented value is never logged.
                tracing::warn!(reason = "wrong token", "rejected unauthenticated request");
                Err(Status::unauthenticated("invalid bearer token"))
            }
            None => {
                tracing::warn!(reason = "no token", "rejected unauthenticated request");
                Err(Status::unauthenticated(
                    "this server requires `authorization: Bearer <token>` metadata",
                ))
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    }

    #[test]
    fn no_token_configured_lets_everything_in() {
        assert!(BearerAuth::new(None).check(req(None)).is_ok());
    }

    #[test]
    fn token_must_match_exactly() {
        let a = BearerAuth::new(Some("s3cret"));
        assert!(a.check(req(Some("Bearer s3cret"))).is_ok());
        let e = a.check(req(Some("Bearer s3cre"))).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(!e.message().contains("s3cre"));
        assert!(a.check(req(None)).is_err());
        assert!(a.check(req(Some("s3cret"))).is_err());
    }
}
