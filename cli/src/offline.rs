//! Commands that need only a file: `validate` and `plan`.
//!
//! Both return the process exit code: 0 when the file is valid, 1 when it is not (problems are
//! printed on stdout, one per line). An unreadable file is an error for `main` to report.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use aviary_core::duration::format_seconds;
use aviary_core::plan::{Hold, Plan, PlannedStep};
use aviary_core::{Rollout, ValidationErrors, parse_rollout};

use crate::args::{FileArg, Output, PlanArgs, ValidateArgs};

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
        writeln!(out, "{e}")?;
    }
    Ok(ExitCode::FAILURE)
}

/// `aviary validate -f FILE`.
pub fn validate(args: &ValidateArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let text = read(&args.input)?;
    match parse_rollout(&text) {
        Ok(_) => {
            writeln!(out, "valid")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => print_errors(&errors, out),
    }
}

/// `aviary plan -f FILE [-o json|table]`.
pub fn plan(args: &PlanArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let text = read(&args.input)?;
    let rollout = match parse_rollout(&text) {
        Ok(r) => r,
        Err(errors) => return print_errors(&errors, out),
    };
    let plan = match Plan::build(&rollout.spec) {
        Ok(p) => p,
        Err(errors) => return print_errors(&errors, out),
    };
    match args.output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut *out, &plan)?;
            writeln!(out)?;
        }
        Output::Table => write_table(&rollout, &plan, out)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "-" }
}

fn hold(step: &PlannedStep) -> String {
    match step.hold {
        None => "-".into(),
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
            hold(&s),
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
