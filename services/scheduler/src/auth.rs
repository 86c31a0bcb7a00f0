//! Who may call the control API: the bearer tokens of `--tokens-file`, as every Aviary API
//! reads them ([`aviary_runtime::tokens`]).

pub use aviary_runtime::tokens::{AuthError, Caller, Role, Tokens, TokensFileError};
