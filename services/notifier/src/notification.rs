//! From an audit event to what a person reads: which events are worth a message and how severe
//! they are ([`classify`]), the message's title, text and fields ([`Notification`]), and the
//! `{{field}}` templates a provider may override them with ([`Template`]).
//!
//! Pure: no I/O, so every rule here is a plain `#[test]`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use aviary_proto::events::{AuditEvent, EventKind, MetricValue};
use serde::Deserialize;

/// How bad an event is, and the filter of a route (Flagger's alert severity): a route of
/// severity `info` gets everything, `warn` gets warn and error, `error` only error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Progress worth knowing about.
    #[default]
    Info,
    /// Progress stopped; someone may have to act.
    #[serde(alias = "warning")]
    Warn,
    /// The rollout failed.
    Error,
}

impl Severity {
    /// Whether a route with this filter gets an event of severity `event`.
    pub fn admits(self, event: Severity) -> bool {
        event >= self
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }

    /// Colour as `RRGGBB`: green, amber, red.
    pub fn color_hex(self) -> &'static str {
        match self {
            Self::Info => "2E7D32",
            Self::Warn => "F9A825",
            Self::Error => "C62828",
        }
    }

    /// Colour as a number (Discord embeds).
    pub fn color_int(self) -> u32 {
        u32::from_str_radix(self.color_hex(), 16).unwrap_or(0)
    }

    /// An emoji for the Slack/Discord title.
    pub fn emoji(self) -> &'static str {
        match self {
            Self::Info => "🟢",
            Self::Warn => "🟠",
            Self::Error => "🔴",
        }
    }
}

/// Whether an event of `kind` is posted, and at which severity. `None`: not posted.
///
/// Started, gate waiting, promoting, succeeded, commands and deletions are `info` (an abort is
/// `warn`); halted, a failed check and a failed hook are `warn`; rolled back and deadline
/// exceeded are `error`. Step advances are posted only when `step_advanced` is set; created,
/// gate opened, verdict and refused never are (verdicts are summed up in the rollback that
/// follows them). Failed checks go only to providers that ask for them
/// ([`crate::settings::Provider::notify_failed_checks`]), and an event marked `repeated` (a
/// halt still in force, a promotion's finalising step) is not posted again: see [`posted`].
pub fn classify(kind: EventKind, reason: &str, step_advanced: bool) -> Option<Severity> {
    match kind {
        EventKind::Started
        | EventKind::GateWaiting
        | EventKind::Promoting
        | EventKind::Succeeded => Some(Severity::Info),
        EventKind::Command if reason.to_ascii_lowercase().contains("abort") => Some(Severity::Warn),
        EventKind::Command | EventKind::Deleted => Some(Severity::Info),
        EventKind::StepAdvanced if step_advanced => Some(Severity::Info),
        EventKind::Halted | EventKind::CheckFailed | EventKind::HookFailed => Some(Severity::Warn),
        EventKind::RolledBack | EventKind::DeadlineExceeded => Some(Severity::Error),
        EventKind::StepAdvanced
        | EventKind::Created
        | EventKind::GateOpened
        | EventKind::Verdict
        | EventKind::Refused => None,
    }
}

/// Whether an event of `kind` with `data` is posted to chat providers, and at which severity:
/// [`classify`], except that an event repeating one already posted (`data.repeated`) is not.
pub fn posted(
    kind: EventKind,
    data: &aviary_proto::events::EventData,
    step_advanced: bool,
) -> Option<Severity> {
    if data.repeated {
        return None;
    }
    classify(kind, &data.reason, step_advanced)
}

/// A message about one event, before it is shaped for a provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Event id (CloudEvents `id`).
    pub id: String,
    /// What happened.
    pub kind: EventKind,
    /// How bad.
    pub severity: Severity,
    /// One line, e.g. `podinfo.test rolled back`.
    pub title: String,
    /// A few lines of plain text: what happened and why.
    pub text: String,
    /// Label → value pairs shown as a table (rollout, cluster, weights, …).
    pub fields: Vec<(String, String)>,
    /// One line per metric: `request-success-rate: 95.2 (min 99) fail`.
    pub metrics: Vec<String>,
    /// The command that shows the rollout: `aviary describe <ns>/<name>`.
    pub describe: String,
    /// Event time (RFC 3339).
    pub time: String,
    /// Every substitutable value, for templates.
    pub values: BTreeMap<&'static str, String>,
}

/// The names a template may use, in `{{name}}` form.
pub const TEMPLATE_FIELDS: &[&str] = &[
    "id",
    "kind",
    "type",
    "severity",
    "title",
    "text",
    "namespace",
    "name",
    "rollout",
    "cluster",
    "waveCluster",
    "generation",
    "step",
    "phase",
    "canaryWeight",
    "primaryWeight",
    "canary",
    "primary",
    "reason",
    "actor",
    "metrics",
    "describe",
    "time",
];

fn verb(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Created => "was created",
        EventKind::Started => "started",
        EventKind::StepAdvanced => "advanced",
        EventKind::Halted => "is halted",
        EventKind::GateWaiting => "is waiting at a gate",
        EventKind::GateOpened => "passed a gate",
        EventKind::Verdict => "was analysed",
        EventKind::CheckFailed => "failed a check",
        EventKind::HookFailed => "had a hook fail",
        EventKind::Promoting => "is being promoted",
        EventKind::Succeeded => "was promoted",
        EventKind::RolledBack => "was rolled back",
        EventKind::DeadlineExceeded => "exceeded its progress deadline",
        EventKind::Command => "received a command",
        EventKind::Refused => "refused a call",
        EventKind::Deleted => "was deleted",
    }
}

/// `95.2`, `0.5`, `120` — short, no trailing zeros.
fn number(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// `request-success-rate: 95.2 (min 99, max 100) fail — reason`.
pub fn metric_line(m: &MetricValue) -> String {
    let mut line = format!(
        "{}: {}",
        m.name,
        m.value.map_or_else(|| "no data".to_owned(), number)
    );
    let bounds: Vec<String> = [("min", m.min), ("max", m.max)]
        .into_iter()
        .filter_map(|(label, v)| v.map(|v| format!("{label} {}", number(v))))
        .collect();
    if !bounds.is_empty() {
        let _ = write!(line, " (threshold {})", bounds.join(", "));
    }
    if !m.outcome.is_empty() {
        let _ = write!(line, " {}", m.outcome);
    }
    if !m.reason.is_empty() {
        let _ = write!(line, " — {}", m.reason);
    }
    line
}

impl Notification {
    /// Builds the message for `event` of `kind` at `severity`, for cluster `cluster`.
    pub fn new(event: &AuditEvent, kind: EventKind, severity: Severity, cluster: &str) -> Self {
        let d = &event.data;
        let rollout = format!("{}/{}", d.namespace, d.name);
        let describe = format!("aviary describe {rollout}");
        let title = format!("{}.{} {}", d.name, d.namespace, verb(kind));
        // Metrics that failed come first: they are why a rollback happened.
        let mut metric_values: Vec<&MetricValue> = d.metrics.iter().collect();
        metric_values.sort_by_key(|m| m.outcome != "fail");
        let metrics: Vec<String> = metric_values.iter().map(|m| metric_line(m)).collect();

        let mut text = match kind {
            EventKind::RolledBack => {
                let failing = metric_values.iter().find(|m| m.outcome == "fail");
                match failing {
                    Some(m) => format!("Rolled back: {}", metric_line(m)),
                    None if !d.reason.is_empty() => format!("Rolled back: {}", d.reason),
                    None => "Rolled back: traffic is back on the primary".to_owned(),
                }
            }
            EventKind::Halted => format!("Halted: {}", or_unknown(&d.reason)),
            EventKind::CheckFailed => match metric_values.iter().find(|m| m.outcome == "fail") {
                Some(m) => format!("Check failed: {}", metric_line(m)),
                None => format!("Check failed: {}", or_unknown(&d.reason)),
            },
            EventKind::HookFailed => format!("Hook failed: {}", or_unknown(&d.reason)),
            EventKind::DeadlineExceeded => format!(
                "Halted longer than the progress deadline: {}",
                or_unknown(&d.reason)
            ),
            EventKind::GateWaiting => format!("Waiting for gate: {}", or_unknown(&d.reason)),
            EventKind::Command if d.actor.is_empty() => {
                format!("Command: {}", or_unknown(&d.reason))
            }
            EventKind::Command => format!("Command by {}: {}", d.actor, or_unknown(&d.reason)),
            EventKind::Deleted => format!("Deleted by {}", or_unknown(&d.actor)),
            EventKind::Started if !d.canary.is_empty() => {
                format!(
                    "Rolling out {} (primary {})",
                    d.canary,
                    or_unknown(&d.primary)
                )
            }
            EventKind::Succeeded => format!(
                "{} is now the primary",
                if d.canary.is_empty() {
                    "The canary"
                } else {
                    &d.canary
                }
            ),
            _ if !d.reason.is_empty() => d.reason.clone(),
            _ => format!("{rollout} {}", verb(kind)),
        };
        let _ = write!(
            text,
            "\nCanary weight {}% (primary {}%), phase {}",
            d.canary_weight,
            d.primary_weight,
            or_unknown(&d.phase)
        );

        let mut fields = vec![
            ("Rollout".to_owned(), d.name.clone()),
            ("Namespace".to_owned(), d.namespace.clone()),
        ];
        if !cluster.is_empty() {
            fields.push(("Cluster".to_owned(), cluster.to_owned()));
        }
        // Policy waves: the member cluster whose wave the event happened in.
        if !d.cluster.is_empty() {
            fields.push(("Wave".to_owned(), d.cluster.clone()));
        }
        fields.push(("Phase".to_owned(), or_unknown(&d.phase).to_owned()));
        fields.push(("Generation".to_owned(), d.generation.to_string()));
        fields.push(("Step".to_owned(), d.step.to_string()));
        fields.push((
            "Canary weight".to_owned(),
            format!("{}% (primary {}%)", d.canary_weight, d.primary_weight),
        ));
        if !d.canary.is_empty() {
            fields.push(("Canary".to_owned(), d.canary.clone()));
        }
        if !d.primary.is_empty() {
            fields.push(("Primary".to_owned(), d.primary.clone()));
        }
        if !d.reason.is_empty() {
            fields.push(("Reason".to_owned(), d.reason.clone()));
        }
        if !d.actor.is_empty() {
            fields.push(("Actor".to_owned(), d.actor.clone()));
        }

        let kind_name = event
            .ty
            .strip_prefix(aviary_proto::events::TYPE_PREFIX)
            .unwrap_or(&event.ty)
            .to_owned();
        let values = BTreeMap::from([
            ("id", event.id.clone()),
            ("kind", kind_name),
            ("type", event.ty.clone()),
            ("severity", severity.as_str().to_owned()),
            ("title", title.clone()),
            ("text", text.clone()),
            ("namespace", d.namespace.clone()),
            ("name", d.name.clone()),
            ("rollout", rollout),
            ("cluster", cluster.to_owned()),
            ("waveCluster", d.cluster.clone()),
            ("generation", d.generation.to_string()),
            ("step", d.step.to_string()),
            ("phase", d.phase.clone()),
            ("canaryWeight", d.canary_weight.to_string()),
            ("primaryWeight", d.primary_weight.to_string()),
            ("canary", d.canary.clone()),
            ("primary", d.primary.clone()),
            ("reason", d.reason.clone()),
            ("actor", d.actor.clone()),
            ("metrics", metrics.join("\n")),
            ("describe", describe.clone()),
            ("time", event.time.clone()),
        ]);
        Self {
            id: event.id.clone(),
            kind,
            severity,
            title,
            text,
            fields,
            metrics,
            describe,
            time: event.time.clone(),
            values,
        }
    }

    /// This message with its title and text replaced by a provider's templates, if it has any.
    pub fn with_templates(&self, title: Option<&Template>, text: Option<&Template>) -> Self {
        let mut out = self.clone();
        if let Some(t) = title {
            out.title = t.render(&self.values);
        }
        if let Some(t) = text {
            out.text = t.render(&self.values);
        }
        out
    }

    /// Title, text, fields, metrics and the describe command as plain text: the fallback
    /// `text` of rich messages.
    pub fn plain(&self) -> String {
        let mut out = format!("{}\n{}", self.title, self.text);
        for line in &self.metrics {
            let _ = write!(out, "\n• {line}");
        }
        let _ = write!(out, "\nRun: {}", self.describe);
        out
    }
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() { "unknown" } else { s }
}

/// A text with `{{field}}` placeholders, checked against [`TEMPLATE_FIELDS`] when parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(&'static str),
}

impl Template {
    /// Parses `text`.
    ///
    /// # Errors
    /// A message naming an unknown field or an unclosed `{{`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| {
                format!("unclosed '{{{{' at byte {}", text.len() - rest.len() + open)
            })?;
            let name = after[..close].trim();
            let field = TEMPLATE_FIELDS
                .iter()
                .find(|f| **f == name)
                .ok_or_else(|| {
                    format!(
                        "unknown field {name:?}; known: {}",
                        TEMPLATE_FIELDS.join(", ")
                    )
                })?;
            parts.push(Part::Field(field));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// Substitutes `values` (a missing value renders empty).
    pub fn render(&self, values: &BTreeMap<&'static str, String>) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(s) => s.as_str(),
                Part::Field(f) => values.get(f).map_or("", String::as_str),
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use aviary_proto::events::EventData;

    pub(crate) fn rolled_back() -> AuditEvent {
        AuditEvent::new(
            EventKind::RolledBack,
            "test/podinfo/3/7".into(),
            "2026-01-01T00:00:00Z".into(),
            EventData {
                namespace: "test".into(),
                name: "podinfo".into(),
                generation: 3,
                step: 4,
                phase: "Failed".into(),
                canary_weight: 0,
                primary_weight: 100,
                reason: "failed checks reached threshold 2".into(),
                metrics: vec![
                    MetricValue {
                        name: "request-duration".into(),
                        value: Some(120.0),
                        max: Some(500.0),
                        outcome: "pass".into(),
                        ..Default::default()
                    },
                    MetricValue {
                        name: "request-success-rate".into(),
                        value: Some(95.25),
                        min: Some(99.0),
                        outcome: "fail".into(),
                        ..Default::default()
                    },
                ],
                canary: "podinfo-v2".into(),
                primary: "podinfo-v1".into(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn severities_follow_flagger() {
        assert!(Severity::Info.admits(Severity::Info));
        assert!(Severity::Info.admits(Severity::Error));
        assert!(Severity::Warn.admits(Severity::Error));
        assert!(!Severity::Warn.admits(Severity::Info));
        assert!(!Severity::Error.admits(Severity::Warn));
        assert!(Severity::Error.admits(Severity::Error));
    }

    #[test]
    fn classifies_event_kinds() {
        use EventKind::*;
        assert_eq!(classify(RolledBack, "", false), Some(Severity::Error));
        assert_eq!(classify(DeadlineExceeded, "", false), Some(Severity::Error));
        assert_eq!(classify(Halted, "gate closed", false), Some(Severity::Warn));
        assert_eq!(classify(Started, "", false), Some(Severity::Info));
        assert_eq!(classify(Succeeded, "", false), Some(Severity::Info));
        assert_eq!(classify(GateWaiting, "", false), Some(Severity::Info));
        assert_eq!(classify(Command, "abort", false), Some(Severity::Warn));
        assert_eq!(classify(Command, "pause", false), Some(Severity::Info));
        assert_eq!(classify(StepAdvanced, "", false), None);
        assert_eq!(classify(StepAdvanced, "", true), Some(Severity::Info));
        assert_eq!(classify(Verdict, "", true), None);
        assert_eq!(classify(CheckFailed, "", false), Some(Severity::Warn));
        assert_eq!(classify(HookFailed, "", false), Some(Severity::Warn));
        assert_eq!(classify(Created, "", true), None);
    }

    #[test]
    fn rollback_names_the_failing_metric_value_and_threshold() {
        let n = Notification::new(
            &rolled_back(),
            EventKind::RolledBack,
            Severity::Error,
            "eu-1",
        );
        assert_eq!(n.title, "podinfo.test was rolled back");
        assert!(
            n.text
                .starts_with("Rolled back: request-success-rate: 95.25 (threshold min 99) fail"),
            "{}",
            n.text
        );
        assert_eq!(
            n.metrics[0],
            "request-success-rate: 95.25 (threshold min 99) fail"
        );
        assert_eq!(n.describe, "aviary describe test/podinfo");
        assert!(n.fields.contains(&("Cluster".into(), "eu-1".into())));
        assert!(n.fields.contains(&("Generation".into(), "3".into())));
        assert!(!n.fields.iter().any(|(name, _)| name == "Wave"));
        // Under policy waves, the event's member cluster is named too.
        let mut in_wave = rolled_back();
        in_wave.data.cluster = "us".into();
        let n = Notification::new(&in_wave, EventKind::RolledBack, Severity::Error, "eu-1");
        assert!(n.fields.contains(&("Wave".into(), "us".into())));
        let plain = n.plain();
        assert!(plain.contains("aviary describe test/podinfo"), "{plain}");
        assert!(plain.contains("Canary weight 0% (primary 100%)"), "{plain}");
    }

    #[test]
    fn templates_substitute_and_reject_unknown_fields() {
        let n = Notification::new(
            &rolled_back(),
            EventKind::RolledBack,
            Severity::Error,
            "eu-1",
        );
        let t =
            Template::parse("{{rollout}} on {{ cluster }}: {{kind}} ({{severity}})").expect("ok");
        assert_eq!(
            t.render(&n.values),
            "test/podinfo on eu-1: rolled-back (error)"
        );
        let custom = n.with_templates(None, Some(&t));
        assert_eq!(custom.text, "test/podinfo on eu-1: rolled-back (error)");
        assert_eq!(custom.title, n.title);
        assert!(Template::parse("{{nope}}").is_err());
        assert!(Template::parse("{{rollout").is_err());
        assert_eq!(
            Template::parse("plain").expect("ok").render(&n.values),
            "plain"
        );
        for field in TEMPLATE_FIELDS {
            assert!(n.values.contains_key(field), "{field} has no value");
        }
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(number(99.0), "99");
        assert_eq!(number(95.25), "95.25");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(0.1234), "0.123");
    }
}
