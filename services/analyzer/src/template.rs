//! Query templates: `{{ name }}` placeholders filled from a variable map.
//!
//! A placeholder whose variable is missing is an error, never an empty string: an empty label
//! value would silently select every series (or none) and judge the wrong thing.

use std::collections::BTreeMap;

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template uses a variable the request does not define.
    #[error("query template uses undefined variable `{0}`")]
    Undefined(String),
    /// A `{{` without its `}}`, or an empty `{{ }}`.
    #[error("malformed placeholder at byte {0} of the query template")]
    Malformed(usize),
}

/// The variables a query template may use.
pub type Variables = BTreeMap<String, String>;

/// Replaces every `{{ var }}` (whitespace inside the braces optional) with its value.
///
/// # Errors
/// [`TemplateError::Undefined`] naming the first variable that is not in `vars`;
/// [`TemplateError::Malformed`] for an unclosed or empty placeholder.
pub fn render(template: &str, vars: &Variables) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut offset = 0;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or(TemplateError::Malformed(offset + open))?;
        let name = after[..close].trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(TemplateError::Malformed(offset + open));
        }
        let value = vars
            .get(name)
            .ok_or_else(|| TemplateError::Undefined(name.to_owned()))?;
        out.push_str(value);
        let consumed = open + 2 + close + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A window length as a Prometheus duration: whole seconds when it has no sub-second part
/// (`60s`), milliseconds otherwise (`1500ms`), so the range never rounds into the previous step.
pub fn prometheus_duration(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Variables {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn fills_placeholders_with_or_without_spaces() {
        let v = vars(&[
            ("namespace", "test"),
            ("canary", "podinfo-v2"),
            ("interval", "1m"),
        ]);
        let q = render(
            r#"rate(x{ns="{{ namespace }}",b="{{canary}}"}[{{  interval }}])"#,
            &v,
        )
        .unwrap();
        assert_eq!(q, r#"rate(x{ns="test",b="podinfo-v2"}[1m])"#);
    }

    #[test]
    fn missing_variable_is_an_error_not_empty() {
        let v = vars(&[("namespace", "test")]);
        assert_eq!(
            render("x{a=\"{{ namespace }}\", b=\"{{ missing }}\"}", &v),
            Err(TemplateError::Undefined("missing".into()))
        );
    }

    #[test]
    fn malformed_placeholders_are_errors() {
        let v = vars(&[("a", "1")]);
        assert_eq!(render("x {{ a", &v), Err(TemplateError::Malformed(2)));
        assert_eq!(render("x {{ }}", &v), Err(TemplateError::Malformed(2)));
        assert_eq!(render("{{ a b }}", &v), Err(TemplateError::Malformed(0)));
        assert_eq!(render("no placeholders", &v).unwrap(), "no placeholders");
    }

    #[test]
    fn durations_never_round() {
        assert_eq!(prometheus_duration(60_000), "60s");
        assert_eq!(prometheus_duration(1_500), "1500ms");
        assert_eq!(prometheus_duration(250), "250ms");
    }
}
