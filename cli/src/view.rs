//! How online results are shown: serde views of the API's protobuf messages (for `-o json` and
//! `-o yaml`) and the tables and detail pages people read.
//!
//! The views mirror the protobuf fields in camelCase, as the protobuf JSON mapping names them,
//! but print enums by their short names (`Progressing`, `Canary`, `Pass`) and 64-bit numbers as
//! numbers, so `jq '.status.phase == "Succeeded"'` works.

use std::io::Write;

use aviary_proto as pb;
use aviary_proto::events::AuditEvent;
use serde::Serialize;

use crate::args::Format;

/// `s` safe to print on a terminal: control characters (escape sequences, carriage returns,
/// newlines) and bidirectional overrides become `\u{…}` escapes; other text is unchanged. For
/// text that came from a file or a server.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let bidi = matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// [`escape`] line by line: newlines are kept, so a multi-line message (an error with one field
/// per line) still reads as lines; every other control character is escaped.
pub(crate) fn escape_lines(s: &str) -> String {
    s.split('\n').map(escape).collect::<Vec<_>>().join("\n")
}

/// A phase's short name (`WaitingPromotion`); unknown numbers print as such.
pub(crate) fn phase_name(phase: i32) -> String {
    pb::Phase::try_from(phase).map_or_else(|_| format!("Phase({phase})"), |p| format!("{p:?}"))
}

fn strategy_name(strategy: i32) -> String {
    pb::Strategy::try_from(strategy)
        .map_or_else(|_| format!("Strategy({strategy})"), |s| format!("{s:?}"))
}

fn outcome_name(outcome: i32) -> String {
    pb::Outcome::try_from(outcome)
        .map_or_else(|_| format!("Outcome({outcome})"), |o| format!("{o:?}"))
}

/// `pb::RolloutRef`.
#[derive(Debug, Serialize)]
pub(crate) struct RefView {
    namespace: String,
    name: String,
}

impl From<Option<&pb::RolloutRef>> for RefView {
    fn from(r: Option<&pb::RolloutRef>) -> Self {
        let r = r.cloned().unwrap_or_default();
        Self {
            namespace: r.namespace,
            name: r.name,
        }
    }
}

/// `pb::PlannedStep`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StepView {
    canary_weight: u32,
    primary_weight: u32,
    mirror: bool,
    mirror_weight: u32,
    matched: bool,
}

/// `pb::MetricResult`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MetricView {
    name: String,
    value: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    primary_value: Option<f64>,
    outcome: String,
    reason: String,
}

/// `pb::WebhookResult`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WebhookView {
    name: String,
    r#type: String,
    status_code: u32,
    outcome: String,
    reason: String,
}

/// `pb::Verdict`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VerdictView {
    rollout: RefView,
    generation: u64,
    step: u32,
    outcome: String,
    metrics: Vec<MetricView>,
    webhooks: Vec<WebhookView>,
    decisive: bool,
    error: String,
}

impl From<&pb::Verdict> for VerdictView {
    fn from(v: &pb::Verdict) -> Self {
        Self {
            rollout: v.rollout.as_ref().into(),
            generation: v.generation,
            step: v.step,
            outcome: outcome_name(v.outcome),
            metrics: v
                .metrics
                .iter()
                .map(|m| MetricView {
                    name: m.name.clone(),
                    value: m.value,
                    min: m.min,
                    max: m.max,
                    primary_value: m.primary_value,
                    outcome: outcome_name(m.outcome),
                    reason: m.reason.clone(),
                })
                .collect(),
            webhooks: v
                .webhooks
                .iter()
                .map(|w| WebhookView {
                    name: w.name.clone(),
                    r#type: w.r#type.clone(),
                    status_code: w.status_code,
                    outcome: outcome_name(w.outcome),
                    reason: w.reason.clone(),
                })
                .collect(),
            decisive: v.decisive,
            error: v.error.clone(),
        }
    }
}

/// `pb::RolloutStatus`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatusView {
    phase: String,
    generation: u64,
    step: u32,
    canary_weight: u32,
    primary_weight: u32,
    mirror_weight: u32,
    failed_checks: u32,
    iterations: u32,
    halt_reason: String,
    step_started_at_ms: i64,
    next_tick_at_ms: i64,
    last_transition_at_ms: i64,
    last_verdict: Option<VerdictView>,
    affinity_cookie: String,
    waiting_gates: Vec<String>,
    message: String,
    ingresses: Vec<IngressView>,
    #[serde(skip_serializing_if = "String::is_empty")]
    wave_cluster: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    wave: String,
}

/// What one ingress was observed serving.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct IngressView {
    ingress: String,
    primary_weight: u32,
    canary_weight: u32,
    mirror_percent: u32,
    confirmed_at_ms: i64,
}

impl From<&pb::RolloutStatus> for StatusView {
    fn from(s: &pb::RolloutStatus) -> Self {
        Self {
            phase: phase_name(s.phase),
            generation: s.generation,
            step: s.step,
            canary_weight: s.canary_weight,
            primary_weight: s.primary_weight,
            mirror_weight: s.mirror_weight,
            failed_checks: s.failed_checks,
            iterations: s.iterations,
            halt_reason: s.halt_reason.clone(),
            step_started_at_ms: s.step_started_at_ms,
            next_tick_at_ms: s.next_tick_at_ms,
            last_transition_at_ms: s.last_transition_at_ms,
            last_verdict: s.last_verdict.as_ref().map(Into::into),
            affinity_cookie: s.affinity_cookie.clone(),
            waiting_gates: s.waiting_gates.clone(),
            message: s.message.clone(),
            ingresses: s
                .ingresses
                .iter()
                .map(|i| IngressView {
                    ingress: i.ingress.clone(),
                    primary_weight: i.primary_weight,
                    canary_weight: i.canary_weight,
                    mirror_percent: i.mirror_percent,
                    confirmed_at_ms: i.confirmed_at_ms,
                })
                .collect(),
            wave_cluster: s.wave_cluster.clone(),
            // Policy waves only: the wave in progress, counted from 1.
            wave: if s.wave_cluster.is_empty() {
                String::new()
            } else {
                (u64::from(s.wave) + 1).to_string()
            },
        }
    }
}

/// `pb::Rollout`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RolloutView {
    r#ref: RefView,
    strategy: String,
    manifest: String,
    status: Option<StatusView>,
    plan: Vec<StepView>,
    revision: u64,
}

impl From<&pb::Rollout> for RolloutView {
    fn from(r: &pb::Rollout) -> Self {
        Self {
            r#ref: r.r#ref.as_ref().into(),
            strategy: strategy_name(r.strategy),
            manifest: r.manifest.clone(),
            status: r.status.as_ref().map(Into::into),
            plan: r
                .plan
                .iter()
                .map(|s| StepView {
                    canary_weight: s.canary_weight,
                    primary_weight: s.primary_weight,
                    mirror: s.mirror,
                    mirror_weight: s.mirror_weight,
                    matched: s.matched,
                })
                .collect(),
            revision: r.revision,
        }
    }
}

/// `pb::ApplyResponse`.
#[derive(Debug, Serialize)]
pub(crate) struct ApplyView {
    rollout: Option<RolloutView>,
    changed: bool,
}

impl From<&pb::ApplyResponse> for ApplyView {
    fn from(r: &pb::ApplyResponse) -> Self {
        Self {
            rollout: r.rollout.as_ref().map(Into::into),
            changed: r.changed,
        }
    }
}

/// `pb::ListResponse`.
#[derive(Debug, Serialize)]
pub(crate) struct ListView {
    rollouts: Vec<RolloutView>,
}

impl From<&pb::ListResponse> for ListView {
    fn from(r: &pb::ListResponse) -> Self {
        Self {
            rollouts: r.rollouts.iter().map(Into::into).collect(),
        }
    }
}

/// Writes `value` as pretty JSON or YAML. `Table` is the caller's business.
///
/// # Errors
/// Writing failed.
pub(crate) fn write_structured<T: Serialize>(
    format: Format,
    value: &T,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match format {
        Format::Json | Format::Table => {
            serde_json::to_writer_pretty(&mut *out, value)?;
            writeln!(out)?;
        }
        Format::Yaml => serde_yaml::to_writer(&mut *out, value)?,
    }
    Ok(())
}

/// Left-aligned columns, two spaces apart. Every cell is [`escape`]d: cells carry names,
/// messages and reasons that came from the server.
pub(crate) fn write_columns(rows: &[Vec<String>], out: &mut dyn Write) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = (rows.iter())
        .map(|r| r.iter().map(|c| escape(c)).collect())
        .collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn reference(r: &pb::Rollout) -> String {
    r.r#ref
        .as_ref()
        .map_or_else(|| "?/?".to_owned(), ToString::to_string)
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

/// `STEP` column: one-based step of the plan, `3/10`.
fn step_of(r: &pb::Rollout, status: &pb::RolloutStatus) -> String {
    if r.plan.is_empty() {
        "-".to_owned()
    } else {
        format!("{}/{}", status.step + 1, r.plan.len())
    }
}

/// The rollouts as a table, one per line.
pub(crate) fn write_rollouts(rollouts: &[pb::Rollout], out: &mut dyn Write) -> std::io::Result<()> {
    let mut rows = vec![
        [
            "NAMESPACE",
            "NAME",
            "STRATEGY",
            "PHASE",
            "STEP",
            "CANARY",
            "PRIMARY",
            "FAILED",
            "GEN",
            "MESSAGE",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for r in rollouts {
        let status = r.status.clone().unwrap_or_default();
        let id = r.r#ref.clone().unwrap_or_default();
        rows.push(vec![
            id.namespace,
            id.name,
            strategy_name(r.strategy),
            phase_name(status.phase),
            step_of(r, &status),
            format!("{}%", status.canary_weight),
            format!("{}%", status.primary_weight),
            status.failed_checks.to_string(),
            status.generation.to_string(),
            dash(if status.halt_reason.is_empty() {
                &status.message
            } else {
                &status.halt_reason
            }),
        ]);
    }
    write_columns(&rows, out)
}

fn bound(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v}"))
}

/// `aviary describe`: status, the plan with the current step marked, why it is halted, the last
/// verdict and the gates it waits on.
pub(crate) fn write_description(r: &pb::Rollout, out: &mut dyn Write) -> std::io::Result<()> {
    let status = r.status.clone().unwrap_or_default();
    let mut rows = vec![
        vec!["Rollout:".to_owned(), reference(r)],
        vec!["Strategy:".to_owned(), strategy_name(r.strategy)],
        vec!["Phase:".to_owned(), phase_name(status.phase)],
        vec!["Generation:".to_owned(), status.generation.to_string()],
        vec!["Step:".to_owned(), step_of(r, &status)],
        vec![
            "Weights:".to_owned(),
            format!(
                "canary {}%, primary {}%{}",
                status.canary_weight,
                status.primary_weight,
                if status.mirror_weight > 0 {
                    format!(", mirror {}%", status.mirror_weight)
                } else {
                    String::new()
                }
            ),
        ],
        vec![
            "Failed checks:".to_owned(),
            status.failed_checks.to_string(),
        ],
        vec!["Halt reason:".to_owned(), dash(&status.halt_reason)],
        vec![
            "Waiting gates:".to_owned(),
            dash(&status.waiting_gates.join(", ")),
        ],
        vec!["Message:".to_owned(), dash(&status.message)],
    ];
    if !status.wave_cluster.is_empty() {
        rows.insert(
            5,
            vec![
                "Wave:".to_owned(),
                format!(
                    "{} (cluster {})",
                    status.wave + 1,
                    escape(&status.wave_cluster)
                ),
            ],
        );
    }
    if !status.affinity_cookie.is_empty() {
        rows.push(vec![
            "Affinity cookie:".to_owned(),
            status.affinity_cookie.clone(),
        ]);
    }
    rows.push(vec!["Revision:".to_owned(), r.revision.to_string()]);
    write_columns(&rows, out)?;

    if !status.ingresses.is_empty() {
        writeln!(out, "\nIngresses (observed split):")?;
        let mut table = vec![
            ["", "INGRESS", "PRIMARY", "CANARY", "MIRROR"]
                .map(str::to_owned)
                .to_vec(),
        ];
        for i in &status.ingresses {
            table.push(vec![
                String::new(),
                escape(&i.ingress),
                format!("{}%", i.primary_weight),
                format!("{}%", i.canary_weight),
                if i.mirror_percent > 0 {
                    format!("{}%", i.mirror_percent)
                } else {
                    "-".to_owned()
                },
            ]);
        }
        write_columns(&table, out)?;
    }

    writeln!(out, "\nPlan:")?;
    let mut plan = vec![
        ["", "STEP", "CANARY", "PRIMARY", "MIRROR", "MATCHED"]
            .map(str::to_owned)
            .to_vec(),
    ];
    let current = usize::try_from(status.step).unwrap_or(usize::MAX);
    for (i, s) in r.plan.iter().enumerate() {
        plan.push(vec![
            if i == current { "=>" } else { "" }.to_owned(),
            (i + 1).to_string(),
            format!("{}%", s.canary_weight),
            format!("{}%", s.primary_weight),
            if s.mirror {
                format!("{}%", s.mirror_weight)
            } else {
                "-".to_owned()
            },
            if s.matched { "yes" } else { "-" }.to_owned(),
        ]);
    }
    write_columns(&plan, out)?;

    writeln!(out, "\nLast verdict:")?;
    match &status.last_verdict {
        None => writeln!(out, "  none yet")?,
        Some(v) => {
            writeln!(
                out,
                "  {} at step {} (generation {}){}{}",
                outcome_name(v.outcome),
                v.step + 1,
                v.generation,
                if v.decisive { ", decisive" } else { "" },
                if v.error.is_empty() {
                    String::new()
                } else {
                    format!(": {}", escape(&v.error))
                }
            )?;
            let mut checks = vec![
                ["  CHECK", "VALUE", "MIN", "MAX", "OUTCOME", "REASON"]
                    .map(str::to_owned)
                    .to_vec(),
            ];
            for m in &v.metrics {
                checks.push(vec![
                    format!("  {}", m.name),
                    bound(m.value),
                    bound(m.min),
                    bound(m.max),
                    outcome_name(m.outcome),
                    dash(&m.reason),
                ]);
            }
            for w in &v.webhooks {
                checks.push(vec![
                    format!("  {} ({})", w.name, w.r#type),
                    w.status_code.to_string(),
                    "-".to_owned(),
                    "-".to_owned(),
                    outcome_name(w.outcome),
                    dash(&w.reason),
                ]);
            }
            if checks.len() > 1 {
                write_columns(&checks, out)?;
            }
        }
    }
    Ok(())
}

/// One audit event on one line: time, rollout, short type, step, weights, phase, reason.
/// Text that is not a CloudEvent of ours is printed as it came. Either way the line is
/// [`escape`]d: anyone who may publish on the bus writes it.
pub(crate) fn event_line(raw: &str) -> String {
    escape(&event_text(raw))
}

fn event_text(raw: &str) -> String {
    let Ok(event) = serde_json::from_str::<AuditEvent>(raw) else {
        return raw.trim().to_owned();
    };
    let kind = event
        .ty
        .strip_prefix(aviary_proto::events::TYPE_PREFIX)
        .unwrap_or(&event.ty);
    let d = &event.data;
    let mut line = format!(
        "{}  {}  {:<15} step {:<3} canary {:>3}%  {:<16}",
        event.time,
        event.subject,
        kind,
        d.step + 1,
        d.canary_weight,
        d.phase
    );
    if d.reason.is_empty() {
        line.truncate(line.trim_end().len());
    } else {
        line.push_str(&format!("  {}", d.reason));
    }
    if !d.actor.is_empty() {
        line.push_str(&format!("  by {}", d.actor));
    }
    for m in &d.metrics {
        line.push_str(&format!("  [{}={} {}]", m.name, bound(m.value), m.outcome));
    }
    line
}

/// Width of the watch progress bar, in characters (one per 5 %).
const BAR_WIDTH: u32 = 20;

/// One progress line of `aviary watch`: a bar of the canary weight, the step and the phase,
/// [`escape`]d (the halt reason is the server's text).
pub(crate) fn progress_line(r: &pb::Rollout) -> String {
    let status = r.status.clone().unwrap_or_default();
    let weight = status.canary_weight.min(100);
    let filled = (weight * BAR_WIDTH).div_ceil(100);
    let bar: String = (0..BAR_WIDTH)
        .map(|i| if i < filled { '#' } else { '.' })
        .collect();
    let mut line = format!(
        "[{bar}] canary {weight:>3}%  step {}  {}",
        step_of(r, &status),
        phase_name(status.phase)
    );
    if let Some(v) = &status.last_verdict {
        line.push_str(&format!("  verdict {}", outcome_name(v.outcome)));
    }
    if status.failed_checks > 0 {
        line.push_str(&format!("  failed checks {}", status.failed_checks));
    }
    if !status.halt_reason.is_empty() {
        line.push_str(&format!("  halted: {}", escape(&status.halt_reason)));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bar_fills_with_the_weight() {
        let rollout = pb::Rollout {
            status: Some(pb::RolloutStatus {
                phase: pb::Phase::Progressing as i32,
                step: 1,
                canary_weight: 50,
                ..Default::default()
            }),
            plan: vec![pb::PlannedStep::default(); 4],
            ..Default::default()
        };
        assert_eq!(
            progress_line(&rollout),
            "[##########..........] canary  50%  step 2/4  Progressing"
        );
    }

    #[test]
    fn description_marks_the_current_step_and_shows_why_it_waits() {
        let step = |canary_weight| pb::PlannedStep {
            canary_weight,
            primary_weight: 100 - canary_weight,
            ..Default::default()
        };
        let rollout = pb::Rollout {
            r#ref: Some(pb::RolloutRef::new("test", "podinfo")),
            strategy: pb::Strategy::Canary as i32,
            status: Some(pb::RolloutStatus {
                phase: pb::Phase::Waiting as i32,
                step: 1,
                canary_weight: 20,
                primary_weight: 80,
                halt_reason: "gate approval is closed".into(),
                waiting_gates: vec!["approval".into()],
                ingresses: vec![
                    pb::IngressSplit {
                        ingress: "edge".into(),
                        primary_weight: 80,
                        canary_weight: 20,
                        ..Default::default()
                    },
                    pb::IngressSplit {
                        ingress: "internal".into(),
                        primary_weight: 80,
                        canary_weight: 20,
                        mirror_percent: 10,
                        ..Default::default()
                    },
                ],
                last_verdict: Some(pb::Verdict {
                    step: 0,
                    outcome: pb::Outcome::Pass as i32,
                    metrics: vec![pb::MetricResult {
                        name: "request-success-rate".into(),
                        value: Some(99.5),
                        min: Some(99.0),
                        outcome: pb::Outcome::Pass as i32,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            plan: vec![step(10), step(20), step(30)],
            ..Default::default()
        };
        let mut out = Vec::new();
        write_description(&rollout, &mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        for line in [
            "Rollout:        test/podinfo",
            "Phase:          Waiting",
            "Step:           2/3",
            "Halt reason:    gate approval is closed",
            "Waiting gates:  approval",
            "=>  2     20%     80%",
            "  edge      80%      20%     -",
            "  internal  80%      20%     10%",
            "  Pass at step 1 (generation 0)",
            "  request-success-rate  99.5   99   -    Pass",
        ] {
            assert!(page.contains(line), "{line:?} missing from:\n{page}");
        }
    }

    #[test]
    fn escape_neutralises_terminal_controls() {
        assert_eq!(escape("spec.a: ok, \"b\" é"), "spec.a: ok, \"b\" é");
        assert_eq!(escape("x\u{1b}[2Jy\r\n"), "x\\u{1b}[2Jy\\u{d}\\u{a}");
        assert_eq!(escape("a\u{202e}b"), "a\\u{202e}b");
    }

    #[test]
    fn columns_align() {
        let mut out = Vec::new();
        write_columns(
            &[
                vec!["A".into(), "BB".into(), "C".into()],
                vec!["long".into(), "x".into(), "y".into()],
            ],
            &mut out,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A     BB  C\nlong  x   y\n"
        );
    }

    #[test]
    fn unknown_event_text_is_printed_as_is() {
        assert_eq!(event_line("not json\n"), "not json");
    }

    #[test]
    fn server_text_is_escaped_in_every_human_view() {
        let evil = "x\u{1b}]0;pwned\u{7}\u{1b}[2J\u{202e}";
        let rollout = pb::Rollout {
            r#ref: Some(pb::RolloutRef::new("test", evil)),
            status: Some(pb::RolloutStatus {
                message: evil.into(),
                halt_reason: evil.into(),
                waiting_gates: vec![evil.into()],
                last_verdict: Some(pb::Verdict {
                    error: evil.into(),
                    metrics: vec![pb::MetricResult {
                        name: evil.into(),
                        reason: evil.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut table = Vec::new();
        write_rollouts(std::slice::from_ref(&rollout), &mut table).unwrap();
        let mut page = Vec::new();
        write_description(&rollout, &mut page).unwrap();
        let event = serde_json::to_string(&AuditEvent::new(
            aviary_proto::events::EventKind::Halted,
            "id".into(),
            "now".into(),
            aviary_proto::events::EventData {
                namespace: "test".into(),
                name: evil.into(),
                reason: evil.into(),
                actor: evil.into(),
                ..Default::default()
            },
        ))
        .unwrap();
        let texts = [
            String::from_utf8(table).unwrap(),
            String::from_utf8(page).unwrap(),
            progress_line(&rollout),
            event_line(&event),
            event_line(evil),
            escape_lines(&format!("{evil}\n{evil}")),
        ];
        for text in &texts {
            assert!(
                !text.contains(['\u{1b}', '\u{7}', '\u{202e}']),
                "raw control in {text:?}"
            );
            assert!(text.contains("\\u{1b}"), "escape missing from {text:?}");
        }
        assert_eq!(escape_lines("a\u{1b}\nb"), "a\\u{1b}\nb");
    }
}
