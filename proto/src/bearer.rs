//! The control API's client-side credential: a gRPC interceptor that sends
//! `authorization: Bearer <token>` with every call. The CLI and the controller share it.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Adds `authorization: Bearer <token>` to each request (nothing without a token).
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

/// The token has characters a header cannot carry. The token itself is not in the message:
/// it may be a secret with one bad character.
#[derive(Debug, thiserror::Error)]
#[error("the token has characters not allowed in a header")]
pub struct InvalidToken;

impl BearerToken {
    /// The interceptor for `token`, trimmed; an empty or absent token sends nothing.
    ///
    /// # Errors
    /// [`InvalidToken`].
    pub fn new(token: Option<&str>) -> Result<Self, InvalidToken> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(BearerToken(None)),
            Some(t) => MetadataValue::try_from(format!("Bearer {t}"))
                .map(|v| BearerToken(Some(v)))
                .map_err(|_| InvalidToken),
        }
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
