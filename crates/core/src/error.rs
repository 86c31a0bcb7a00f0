//! Validation errors that name the field they are about.
//!
//! Every problem found in a spec becomes one [`FieldError`] with a path such as
//! `spec.analysis.stepWeights[2]`; a parse or validation returns all of them at once in
//! [`ValidationErrors`], so a user fixes a file in one pass.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One problem with one field of a spec.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FieldError {
    /// Where the problem is: dotted field names with `[index]` for list items, e.g.
    /// `spec.analysis.match[0].headers.x-canary.regex`. YAML syntax errors use `yaml`.
    pub path: String,
    /// What is wrong, in a few words.
    pub message: String,
}

impl FieldError {
    /// A problem `message` at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for FieldError {}

/// A field that was accepted but has no effect, or a value Aviary could not map. Decoding
/// returns these beside the result (`aviary validate` and `aviary plan` print them).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Warning {
    /// Where, in the same form as [`FieldError::path`].
    pub path: String,
    /// Why it has no effect.
    pub message: String,
}

impl Warning {
    /// A warning `message` at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a spec: structural ones (types, unknown fields) first, then semantic
/// ones. Never empty when returned as an error.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// The individual problems.
    pub fn errors(&self) -> &[FieldError] {
        &self.0
    }

    /// True when some problem is reported at exactly `path`.
    pub fn has_path(&self, path: &str) -> bool {
        self.0.iter().any(|e| e.path == path)
    }
}

impl fmt::Display for ValidationErrors {
    /// One problem per line, `<path>: <message>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Collects errors while walking a spec, building paths as it goes.
#[derive(Default, Debug)]
pub(crate) struct Collector {
    pub(crate) errors: Vec<FieldError>,
}

impl Collector {
    pub(crate) fn push(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    pub(crate) fn finish(self) -> Result<(), ValidationErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.errors))
        }
    }
}

/// `parent.field`, or `field` at the root.
pub(crate) fn field(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

/// `parent[index]`.
pub(crate) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}
