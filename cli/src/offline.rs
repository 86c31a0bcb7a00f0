//! Commands that need only a file: `validate` and `plan`.
//!
//! A file holds one or more YAML documents: Aviary Rollouts and Flagger Canaries,
//! MetricTemplates and AlertProviders ([`aviary_core::flagger`]). Both commands return the
//! process exit code: 0 when the file is valid, 1 when it is not (problems are printed on
//! stdout, one per line). Text from the file is escaped before it reaches the terminal. An
//! unreadable file is an error for `main` to report.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use aviary_core::duration::format_seconds;
use aviary_core::plan::{Hold, Plan, PlannedStep};
use aviary_core::{Decoded, Rollout, ValidationErrors, Warning, decode};
use serde::Serialize;

use crate::args::{FileArg, Output, PlanArgs, ValidateArgs};
use crate::view::escape;

pub(crate) fn read(input: &FileArg) -> anyhow::Result<String> {
    if input.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read standard input")?;
        return Ok(s);
    }
    std::fs::read_to_string(&input.file)
        .with_context(|| format!("cannot read {}", input.file.display()))
}

fn print_errors(errors: &ValidationErrors, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    for e in errors.errors() {
        writeln!(out, "{}", escape(&e.to_string()))?;
    }
    Ok(ExitCode::FAILURE)
}

/// Writes each warning as `warning: <path>: <message>`.
pub(crate) fn print_warnings(warnings: &[Warning], out: &mut dyn Write) -> std::io::Result<()> {
    for w in warnings {
        writeln!(out, "warning: {}", escape(&w.to_string()))?;
    }
    Ok(())
}

/// `ns/name`.
fn id(r: &Rollout) -> String {
    format!("{}/{}", r.namespace(), r.metadata.name)
}

/// One line per resource of a file that holds more than a single rollout.
fn write_contents(d: &Decoded, out: &mut dyn Write) -> std::io::Result<()> {
    for r in &d.rollouts {
        let ingresses: Vec<String> = r
            .spec
            .ingresses
            .iter()
            .map(|i| i.name.clone())
            .chain(r.spec.clusters.iter().flat_map(|c| {
                c.ingress_names()
                    .map(|i| format!("{}/{i}", c.name))
                    .collect::<Vec<_>>()
            }))
            .collect();
        let target = r
            .spec
            .target_ref
            .as_ref()
            .map(|t| format!("{}/{}, ", t.kind.as_str(), t.name))
            .unwrap_or_default();
        let line = format!(
            "rollout {} ({target}ingress {})",
            id(r),
            ingresses.join(", ")
        );
        writeln!(out, "{}", escape(&line))?;
    }
    for t in &d.templates {
        let address = t
            .provider
            .address
            .as_deref()
            .unwrap_or("the analyzer's default");
        let line = format!(
            "metric template {}/{} ({} at {address})",
            t.namespace, t.name, t.provider.kind
        );
        writeln!(out, "{}", escape(&line))?;
    }
    for p in &d.providers {
        let channel = p
            .channel
            .as_deref()
            .map(|c| format!(", channel {c}"))
            .unwrap_or_default();
        let line = format!(
            "alert provider {}/{} ({}{channel})",
            p.namespace,
            p.name,
            p.kind.as_str()
        );
        writeln!(out, "{}", escape(&line))?;
    }
    Ok(())
}

/// `aviary validate -f FILE`: warnings, then what the file holds (unless it is one rollout),
/// then `valid`; or every problem.
pub(crate) fn validate(args: &ValidateArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let text = read(&args.input)?;
    match decode(&text) {
        Ok(d) => {
            print_warnings(&d.warnings, out)?;
            let one_rollout =
                d.rollouts.len() == 1 && d.templates.is_empty() && d.providers.is_empty();
            if !one_rollout {
                write_contents(&d, out)?;
            }
            writeln!(out, "valid")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => print_errors(&errors, out),
    }
}

/// One rollout's plan in `plan -o json` output for a file of several.
#[derive(Serialize)]
struct NamedPlan<'a> {
    rollout: String,
    plan: &'a Plan,
}

/// `aviary plan -f FILE [-o json|table]`: the schedule of each rollout in the file. Warnings
/// go to standard error, so the JSON on stdout stays parseable.
pub(crate) fn plan(args: &PlanArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let text = read(&args.input)?;
    let decoded = match decode(&text) {
        Ok(d) => d,
        Err(errors) => return print_errors(&errors, out),
    };
    print_warnings(&decoded.warnings, &mut std::io::stderr())?;
    if decoded.rollouts.is_empty() {
        writeln!(out, "no rollouts in the file")?;
        return Ok(ExitCode::FAILURE);
    }
    let mut plans = Vec::new();
    for r in &decoded.rollouts {
        match Plan::build(&r.spec) {
            Ok(p) => plans.push(p),
            Err(errors) => return print_errors(&errors, out),
        }
    }
    match args.output {
        Output::Json => {
            if let [plan] = plans.as_slice() {
                serde_json::to_writer_pretty(&mut *out, plan)?;
            } else {
                let named: Vec<NamedPlan<'_>> = (decoded.rollouts.iter().zip(&plans))
                    .map(|(r, plan)| NamedPlan {
                        rollout: id(r),
                        plan,
                    })
                    .collect();
                serde_json::to_writer_pretty(&mut *out, &named)?;
            }
            writeln!(out)?;
        }
        Output::Table => {
            for (i, (r, plan)) in decoded.rollouts.iter().zip(&plans).enumerate() {
                if i > 0 {
                    writeln!(out)?;
                }
                write_table(r, plan, out)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "-" }
}

fn hold(step: &PlannedStep, rollout: &Rollout) -> String {
    match step.hold {
        None => "-".into(),
        Some(Hold::Check) => {
            let check = step
                .source
                .and_then(|i| rollout.spec.steps.as_ref()?.get(i))
                .and_then(|s| match s {
                    aviary_core::spec::Step::Check(c) => Some(c),
                    _ => None,
                });
            match check {
                Some(c) => match &c.on_failure {
                    Some(f) => format!(
                        "check {} (failed: back to {} at {}%, {}x)",
                        c.name,
                        f.go_to,
                        f.set_weight,
                        f.max_returns()
                    ),
                    None => format!("check {} (failed: rollback)", c.name),
                },
                None => "check".into(),
            }
        }
        Some(Hold::Approval) => "approval".into(),
        Some(Hold::Pause { duration: Some(d) }) => format!("pause {d}"),
        Some(Hold::Pause { duration: None }) => "pause until resumed".into(),
    }
}

fn write_table(rollout: &Rollout, plan: &Plan, out: &mut dyn Write) -> anyhow::Result<()> {
    let a = &rollout.spec.analysis;
    writeln!(
        out,
        "rollout:   {}/{}",
        rollout.namespace(),
        rollout.metadata.name
    )?;
    if !rollout.spec.clusters.is_empty() {
        let clusters: Vec<String> = rollout
            .spec
            .clusters
            .iter()
            .map(|c| {
                format!(
                    "{} ({})",
                    c.name,
                    c.ingress_names().collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        let policy = rollout.spec.cluster_policy.unwrap_or_default();
        let line = format!(
            "clusters:  {} (policy {})",
            clusters.join(", "),
            policy.as_str()
        );
        writeln!(out, "{}", escape(&line))?;
    }
    if let Some(t) = &rollout.spec.target_ref {
        let provider = rollout.spec.provider.as_deref().unwrap_or("-");
        let ingresses: Vec<&str> = rollout
            .spec
            .ingresses
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        let line = format!(
            "target:    {}/{} (provider {provider}, ingress {})",
            t.kind.as_str(),
            t.name,
            ingresses.join(", ")
        );
        writeln!(out, "{}", escape(&line))?;
    }
    writeln!(out, "strategy:  {}", plan.strategy)?;
    writeln!(
        out,
        "interval:  {}   threshold: {}",
        a.interval(),
        a.threshold()
    )?;
    if let Some(s) = &a.session_affinity {
        writeln!(
            out,
            "session:   cookie {} (max age {})",
            s.cookie_name,
            format_seconds(
                s.max_age
                    .unwrap_or(aviary_core::spec::DEFAULT_SESSION_MAX_AGE)
            )
        )?;
    }
    if rollout.spec.skip_analysis {
        writeln!(out, "analysis:  skipped (skipAnalysis: true)")?;
    }
    writeln!(out)?;
    let header = [
        "STEP", "CANARY", "PRIMARY", "MIRROR", "MATCH", "ANALYSIS", "HOLD",
    ];
    let mut rows: Vec<[String; 7]> = Vec::new();
    for (i, s) in plan.steps().enumerate() {
        rows.push([
            (i + 1).to_string(),
            format!("{}%", s.canary_weight),
            format!("{}%", s.primary_weight),
            match (s.mirror, s.mirror_weight) {
                (true, Some(w)) => format!("{w}%"),
                (true, None) => "yes".into(),
                _ => "-".into(),
            },
            yes_no(s.matched()).into(),
            yes_no(s.analysis).into(),
            hold(&s, rollout),
        ]);
    }
    for (i, w) in plan.promotion.weights.iter().enumerate() {
        rows.push([
            format!("promote {}", i + 1),
            format!("{w}%"),
            format!("{}%", 100 - w),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
    }
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", line(&header))?;
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "promotion: at least {} ({}s)",
        format_seconds(plan.promotion.min_seconds),
        plan.promotion.min_seconds
    )?;
    writeln!(
        out,
        "rollback:  at least {} ({}s) of failing checks",
        format_seconds(plan.rollback.min_seconds),
        plan.rollback.min_seconds
    )?;
    Ok(())
}
