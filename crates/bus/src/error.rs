//! [`BusError`]: every way a bus operation can fail, with kinds tests can compare.

/// An error from the bus. Every variant carries plain data, so errors compare with `==` and
/// [`BusError::kind`] gives a field-less kind for `assert_eq!`.
///
/// No variant ever carries a password, token, seed or credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// A namespace, name or ingress cannot be used as a subject token or KV key part.
    #[error("invalid {what} {token:?}: {reason}")]
    InvalidToken {
        /// Which token: `namespace`, `name`, `ingress`, …
        what: &'static str,
        /// The rejected value.
        token: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The NATS flags are inconsistent or a file they name cannot be read.
    #[error("invalid NATS configuration: {0}")]
    Config(String),
    /// The connection to NATS could not be made (URL shown without credentials).
    #[error("connecting to NATS at {url}: {reason}")]
    Connect {
        /// The server URL(s), credentials removed.
        url: String,
        /// The client's explanation.
        reason: String,
    },
    /// A request got no reply in time, although someone listens on the subject.
    #[error("request on {subject} timed out")]
    Timeout {
        /// The request subject.
        subject: String,
    },
    /// Nobody listens on the request subject (NATS answered 503 at once).
    #[error("no responders on {subject}")]
    NoResponders {
        /// The request subject.
        subject: String,
    },
    /// A payload did not decode into the expected type.
    #[error("malformed message on {subject}: {reason}")]
    Decode {
        /// The subject (or `bucket/key` for KV values) it came from.
        subject: String,
        /// What the decoder said.
        reason: String,
    },
    /// A value could not be encoded.
    #[error("encoding a message for {subject}: {reason}")]
    Encode {
        /// Where it was going.
        subject: String,
        /// What the encoder said.
        reason: String,
    },
    /// The responder answered with an error (`Nats-Service-Error` headers) instead of a reply.
    #[error("responder on {subject} answered {code}: {description}")]
    Remote {
        /// The request subject.
        subject: String,
        /// `Nats-Service-Error-Code` (HTTP-like: 400 malformed request, 500 responder failed).
        code: u16,
        /// `Nats-Service-Error`.
        description: String,
    },
    /// A compare-and-swap lost: the key is not at the expected revision (or, for a create,
    /// already exists). Re-read and re-decide; never overwrite.
    #[error("compare-and-swap on {key} lost: current revision is {current_revision}")]
    Conflict {
        /// `bucket/key`.
        key: String,
        /// The revision the key is at now; 0 when it does not exist.
        current_revision: u64,
    },
    /// A stream or bucket exists with settings this code cannot work with.
    #[error("{what} exists with incompatible settings: {reason}")]
    Incompatible {
        /// The stream or bucket.
        what: String,
        /// What differs.
        reason: String,
    },
    /// Any other failure of a NATS or JetStream operation.
    #[error("{op} {target}: {reason}")]
    Nats {
        /// The operation: `publish`, `subscribe`, `kv get`, …
        op: &'static str,
        /// The subject, stream, bucket or key.
        target: String,
        /// The client's explanation.
        reason: String,
    },
}

/// The kind of a [`BusError`], without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BusErrorKind {
    /// [`BusError::InvalidToken`]
    InvalidToken,
    /// [`BusError::Config`]
    Config,
    /// [`BusError::Connect`]
    Connect,
    /// [`BusError::Timeout`]
    Timeout,
    /// [`BusError::NoResponders`]
    NoResponders,
    /// [`BusError::Decode`]
    Decode,
    /// [`BusError::Encode`]
    Encode,
    /// [`BusError::Remote`]
    Remote,
    /// [`BusError::Conflict`]
    Conflict,
    /// [`BusError::Incompatible`]
    Incompatible,
    /// [`BusError::Nats`]
    Nats,
}

impl BusError {
    /// This error's kind.
    pub fn kind(&self) -> BusErrorKind {
        match self {
            Self::InvalidToken { .. } => BusErrorKind::InvalidToken,
            Self::Config(_) => BusErrorKind::Config,
            Self::Connect { .. } => BusErrorKind::Connect,
            Self::Timeout { .. } => BusErrorKind::Timeout,
            Self::NoResponders { .. } => BusErrorKind::NoResponders,
            Self::Decode { .. } => BusErrorKind::Decode,
            Self::Encode { .. } => BusErrorKind::Encode,
            Self::Remote { .. } => BusErrorKind::Remote,
            Self::Conflict { .. } => BusErrorKind::Conflict,
            Self::Incompatible { .. } => BusErrorKind::Incompatible,
            Self::Nats { .. } => BusErrorKind::Nats,
        }
    }

    /// Whether retrying the same operation later may succeed (timeouts, no responders yet,
    /// connection trouble), as opposed to bad input or a lost race.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind(),
            BusErrorKind::Timeout
                | BusErrorKind::NoResponders
                | BusErrorKind::Connect
                | BusErrorKind::Nats
        )
    }

    pub(crate) fn nats(op: &'static str, target: impl Into<String>, err: impl ToString) -> Self {
        Self::Nats {
            op,
            target: target.into(),
            reason: err.to_string(),
        }
    }
}
