//! Who may call an Aviary API (the scheduler's control API, the gate service): bearer tokens
//! from a file, each with a role.
//!
//! The file has one token per line, `<token> <role> <identity>`, where role is `read` (Get,
//! List, Watch) or `operator` (everything). Blank lines and `#` comments are skipped. Tokens are
//! compared in constant time and never logged; the identity is what the audit stream records.

use std::collections::HashMap;
use std::path::Path;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read rollouts and watch them.
    Read,
    /// Everything `Read` may, plus apply and every command.
    Operator,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Name recorded in audit events.
    pub identity: String,
    /// What the caller may do.
    pub role: Role,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token, or an unknown one.
    #[error("missing or unknown bearer token")]
    Unauthenticated,
    /// A known token whose role does not allow the call.
    #[error("{identity} has role {role:?}, which may not call {method}")]
    PermissionDenied {
        /// The caller.
        identity: String,
        /// The caller's role.
        role: Role,
        /// The refused method.
        method: &'static str,
    },
}

/// A tokens file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    /// The file could not be read.
    #[error("reading tokens file: {0}")]
    Io(#[from] std::io::Error),
    /// The file holds no token (empty, or only comments): taking it would open the API to
    /// every caller as operator, which is what running without a tokens file does.
    #[error(
        "tokens file has no token: it would let every caller in as operator; add a \
         `<token> <role> <identity>` line, or run without a tokens file to run open"
    )]
    Empty,
    /// A line is malformed; the token itself is not repeated in the message.
    #[error("tokens file line {line}: {message}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// The tokens the API accepts. An empty set (no file given) lets every caller in as operator.
#[derive(Clone, Default)]
pub struct Tokens {
    by_token: HashMap<String, Caller>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.by_token.len())
            .finish()
    }
}

impl Tokens {
    /// Reads a tokens file.
    ///
    /// Fails when the file cannot be read or a line is not `<token> <role> <identity>`.
    pub fn load(path: &Path) -> Result<Self, TokensFileError> {
        Self::parse(&std::fs::read_to_string(path)?)
    }

    /// Parses the tokens file format.
    ///
    /// Fails on the first malformed line, naming its number, and on a file without a token
    /// ([`TokensFileError::Empty`]).
    pub fn parse(text: &str) -> Result<Self, TokensFileError> {
        let mut by_token = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = |message: &str| TokensFileError::Syntax {
                line: index + 1,
                message: message.to_owned(),
            };
            let mut parts = line.split_whitespace();
            let (Some(token), Some(role), Some(identity), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(syntax("expected `<token> <role> <identity>`"));
            };
            let role = match role {
                "read" => Role::Read,
                "operator" => Role::Operator,
                _ => return Err(syntax("role must be `read` or `operator`")),
            };
            by_token.insert(
                token.to_owned(),
                Caller {
                    identity: identity.to_owned(),
                    role,
                },
            );
        }
        if by_token.is_empty() {
            return Err(TokensFileError::Empty);
        }
        Ok(Self { by_token })
    }

    /// Whether authentication is switched on.
    pub fn enabled(&self) -> bool {
        !self.by_token.is_empty()
    }

    /// Authenticates an `authorization` header value and checks that the role allows `method`.
    ///
    /// Errors: [`AuthError::Unauthenticated`] for a missing or unknown token,
    /// [`AuthError::PermissionDenied`] when a read-only caller calls a mutating method.
    pub fn authorize(
        &self,
        authorization: Option<&str>,
        method: &'static str,
        needs: Role,
    ) -> Result<Caller, AuthError> {
        if !self.enabled() {
            return Ok(Caller {
                identity: "anonymous".to_owned(),
                role: Role::Operator,
            });
        }
        let presented = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(AuthError::Unauthenticated)?;
        let caller = self
            .by_token
            .iter()
            .find(|(token, _)| constant_time_eq(token.as_bytes(), presented.as_bytes()))
            .map(|(_, caller)| caller.clone())
            .ok_or(AuthError::Unauthenticated)?;
        if caller.role < needs {
            return Err(AuthError::PermissionDenied {
                identity: caller.identity,
                role: caller.role,
                method,
            });
        }
        Ok(caller)
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

    const FILE: &str = "# tokens\nr3ad-token read auditor\n\nop-token operator alice\n";

    #[test]
    fn a_file_without_a_token_is_refused_rather_than_opening_the_api() {
        for text in ["", "\n\n", "# only a comment\n   # another\n"] {
            assert!(
                matches!(Tokens::parse(text), Err(TokensFileError::Empty)),
                "{text:?}"
            );
        }
    }

    #[test]
    fn roles_gate_methods() {
        let tokens = Tokens::parse(FILE).unwrap();
        assert!(tokens.enabled());
        let reader = tokens
            .authorize(Some("Bearer r3ad-token"), "Get", Role::Read)
            .unwrap();
        assert_eq!(
            reader,
            Caller {
                identity: "auditor".into(),
                role: Role::Read
            }
        );
        assert_eq!(
            tokens.authorize(Some("Bearer r3ad-token"), "Abort", Role::Operator),
            Err(AuthError::PermissionDenied {
                identity: "auditor".into(),
                role: Role::Read,
                method: "Abort"
            })
        );
        assert_eq!(
            tokens
                .authorize(Some("Bearer op-token"), "Abort", Role::Operator)
                .unwrap()
                .identity,
            "alice"
        );
    }

    #[test]
    fn unknown_or_missing_tokens_are_unauthenticated() {
        let tokens = Tokens::parse(FILE).unwrap();
        assert_eq!(
            tokens.authorize(None, "Get", Role::Read),
            Err(AuthError::Unauthenticated)
        );
        assert_eq!(
            tokens.authorize(Some("Bearer nope"), "Get", Role::Read),
            Err(AuthError::Unauthenticated)
        );
        assert_eq!(
            tokens.authorize(Some("op-token"), "Get", Role::Read),
            Err(AuthError::Unauthenticated)
        );
    }

    #[test]
    fn malformed_lines_name_the_line_not_the_token() {
        let err = Tokens::parse("good operator bob\nsecret-value admin eve\n")
            .err()
            .unwrap();
        let message = err.to_string();
        assert!(message.contains("line 2"), "{message}");
        assert!(!message.contains("secret-value"), "{message}");
    }

    #[test]
    fn no_file_means_open_api() {
        let tokens = Tokens::default();
        assert_eq!(
            tokens
                .authorize(None, "Abort", Role::Operator)
                .unwrap()
                .role,
            Role::Operator
        );
    }
}
