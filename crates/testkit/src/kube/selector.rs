//! Label and field selectors as list and watch requests carry them (`labelSelector=`,
//! `fieldSelector=`), parsed once per request and matched against stored JSON objects.

use serde_json::Value;

/// One label requirement.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq(String),
    Ne(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

/// A parsed `labelSelector`: every requirement must hold. Empty matches everything.
#[derive(Debug, Clone, Default)]
pub(super) struct LabelSelector(Vec<(String, Op)>);

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k`; the error says which part is bad.
    pub(super) fn parse(selector: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(selector) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let requirement = if let Some(key) = part.strip_prefix('!') {
                (key.trim().to_owned(), Op::NotExists)
            } else if let Some(open) = part.find('(') {
                let close = part
                    .rfind(')')
                    .filter(|close| *close > open && part[close + 1..].trim().is_empty())
                    .ok_or_else(|| format!("unbalanced parentheses in {part:?}"))?;
                let values: Vec<String> = part[open + 1..close]
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .collect();
                let mut head = part[..open].split_whitespace();
                match (head.next(), head.next(), head.next()) {
                    (Some(key), Some("in"), None) => (key.to_owned(), Op::In(values)),
                    (Some(key), Some("notin"), None) => (key.to_owned(), Op::NotIn(values)),
                    _ => {
                        return Err(format!(
                            "expected `key in (…)` or `key notin (…)`: {part:?}"
                        ));
                    }
                }
            } else if let Some((key, value)) = part.split_once("!=") {
                (key.trim().to_owned(), Op::Ne(value.trim().to_owned()))
            } else if let Some((key, value)) = part.split_once("==").or(part.split_once('=')) {
                (key.trim().to_owned(), Op::Eq(value.trim().to_owned()))
            } else {
                (part.to_owned(), Op::Exists)
            };
            check_label(&requirement.0, true, part)?;
            match &requirement.1 {
                Op::Eq(v) | Op::Ne(v) => check_label(v, false, part)?,
                Op::In(vs) | Op::NotIn(vs) => {
                    for v in vs {
                        check_label(v, false, part)?;
                    }
                }
                Op::Exists | Op::NotExists => {}
            }
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    /// Whether `object`'s `metadata.labels` satisfy every requirement.
    pub(super) fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        self.0.iter().all(|(key, op)| {
            let value = labels.and_then(|l| l.get(key)).and_then(Value::as_str);
            match (op, value) {
                (Op::Eq(want), Some(v)) => v == want,
                (Op::Ne(want), v) => v != Some(want.as_str()),
                (Op::In(set), Some(v)) => set.iter().any(|s| s == v),
                (Op::NotIn(set), v) => v.is_none_or(|v| !set.iter().any(|s| s == v)),
                (Op::Exists, v) => v.is_some(),
                (Op::NotExists, v) => v.is_none(),
                (Op::Eq(_) | Op::In(_), None) => false,
            }
        })
    }
}

/// Splits on commas outside parentheses (`a in (b,c),d` is two requirements).
fn split_top_level(selector: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&selector[start..]);
    parts
}

/// Label keys (`prefix/name`) and values: alphanumerics, `-`, `_`, `.` (and `/` in keys);
/// values may be empty, keys not.
fn check_label(s: &str, key: bool, part: &str) -> Result<(), String> {
    let ok = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || (key && c == '/'));
    if ok && !(key && s.is_empty()) {
        Ok(())
    } else {
        Err(format!(
            "invalid label {} {s:?} in {part:?}",
            if key { "key" } else { "value" }
        ))
    }
}

/// A parsed `fieldSelector`: `path=value`, `path==value` or `path!=value`, comma-separated,
/// where `path` is any dotted path into the object (the real server accepts only the fields
/// it indexes for the kind, e.g. `metadata.name`, `metadata.namespace`, `status.phase`).
#[derive(Debug, Clone, Default)]
pub(super) struct FieldSelector(Vec<(Vec<String>, bool, String)>);

impl FieldSelector {
    /// Parses the selector; the error names the requirement without an operator.
    pub(super) fn parse(selector: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in selector.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (path, equal, value) = if let Some((p, v)) = part.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = part.split_once("==").or(part.split_once('=')) {
                (p, true, v)
            } else {
                return Err(format!("invalid field selector {part:?}: no operator"));
            };
            let path = path.trim().split('.').map(str::to_owned).collect();
            requirements.push((path, equal, value.trim().to_owned()));
        }
        Ok(Self(requirements))
    }

    /// Whether every requirement holds; a missing field compares as the empty string.
    pub(super) fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, equal, want)| {
            let found = path.iter().try_fold(object, |v, key| v.get(key));
            let value = match found {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            (value == *want) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "labels": labels}})
    }

    #[test]
    fn label_requirements() {
        let obj = labelled(json!({"app": "web", "tier": "front"}));
        let cases = [
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app!=db,missing!=x", true),
            ("app in (db, web)", true),
            ("app notin (db,web)", false),
            ("missing notin (x)", true),
            ("tier,!missing", true),
            ("missing", false),
            ("app in (web),!tier", false),
            ("", true),
        ];
        for (selector, want) in cases {
            let parsed = LabelSelector::parse(selector).unwrap();
            assert_eq!(parsed.matches(&obj), want, "{selector}");
        }
        for bad in ["app in (web", "a b", "app in web)", "=x", "app=a b"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_requirements() {
        let obj = json!({"metadata": {"name": "a"}, "status": {"phase": "Running", "n": 2}});
        for (selector, want) in [
            ("metadata.name=a", true),
            ("metadata.name!=a", false),
            ("metadata.name==a,status.phase=Running", true),
            ("status.n=2", true),
            ("spec.nodeName=", true),
        ] {
            assert_eq!(
                FieldSelector::parse(selector).unwrap().matches(&obj),
                want,
                "{selector}"
            );
        }
        assert!(FieldSelector::parse("metadata.name").is_err());
    }
}
