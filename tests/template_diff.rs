//! The differential template test (issue 12, Build 4): the cases that `scripts/template-diff.py`
//! generated and rendered with Prefect 3.8.8's own code are rendered again with pushpool's engine
//! and compared. Every difference must fall into a class that `docs/templates.md` lists under
//! "Differences from Prefect" (a line `- **`<class>`** …`), each recognised here by a classifier;
//! anything else fails the test.
//!
//! Run by `scripts/template-diff` (which makes the cases with the venv of
//! `scripts/prefect-venv.sh`); ignored in a plain `cargo test`, which has no Prefect.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context};
use pushpool::template::{BaseJobTemplate, TemplateError};
use serde_json::{Map, Value};

/// Fewest cases the run must compare (the acceptance).
const MIN_CASES: usize = 1_000;

/// Prefect's outcome: the configuration, or the exception it raised.
fn prefect_outcome(v: &Value) -> Result<Value, String> {
    match (v.get("ok"), v.get("error")) {
        (Some(ok), _) => Ok(ok.clone()),
        (_, Some(e)) => Err(e.as_str().unwrap_or_default().to_owned()),
        _ => Err("no outcome".to_owned()),
    }
}

fn object(case: &Value, key: &str) -> Map<String, Value> {
    case.get(key)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// pushpool's rendering of a case; `strict` applies the unused-variable refusal.
fn pushpool(case: &Value, strict: bool) -> Result<Value, TemplateError> {
    let template = BaseJobTemplate::parse(&case["template"])?;
    let (deployment, run) = (object(case, "deployment"), object(case, "run"));
    let values = if strict {
        template.resolve(&deployment, &run)?
    } else {
        template.resolve_unchecked(&deployment, &run)?
    };
    let environ = object(case, "environ");
    let lookup = |name: &str| environ.get(name).and_then(Value::as_str).map(str::to_owned);
    Ok(template.render_with_environ(&values, &Map::new(), &lookup))
}

/// `Some("agreed")`, `Some("json_spelling")` when pushpool's result is the same configuration or
/// Prefect's with non-strings spelled as JSON in partial placeholders, `None` otherwise.
fn compare(ours: &Value, case: &Value) -> Option<&'static str> {
    if prefect_outcome(&case["prefect"]).ok().as_ref() == Some(ours) {
        Some("agreed")
    } else if prefect_outcome(&case["prefect_json"]).ok().as_ref() == Some(ours) {
        Some("json_spelling")
    } else {
        None
    }
}

/// The class of pushpool's outcome `ours` of a case: `agreed`, a documented class, or
/// `undocumented`.
fn class_of(ours: Result<Value, TemplateError>, case: &Value) -> &'static str {
    let prefect_raised = prefect_outcome(&case["prefect"]).is_err();
    match ours {
        Ok(ours) => compare(&ours, case).unwrap_or("undocumented"),
        Err(e) if matches!(e.rule, "unused_variable" | "unknown_variable") => {
            // The refusal must be the only difference: without it pushpool renders what Prefect
            // does (or differs there only in another documented way).
            match class_of(pushpool(case, false), case) {
                "agreed" | "json_spelling" => "unused_variable",
                other => other,
            }
        }
        Err(e) if e.rule == "dotted_conflict" => "dotted_conflict",
        Err(e) if e.rule == "secret_reference" => "secret_reference",
        Err(_) if prefect_raised => "prefect_raises",
        Err(_) => "undocumented",
    }
}

/// The class of a case's outcome.
fn classify(case: &Value) -> &'static str {
    class_of(pushpool(case, true), case)
}

/// The classes `docs/templates.md` lists under "Differences from Prefect".
fn documented_classes() -> anyhow::Result<BTreeSet<String>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/templates.md");
    let doc = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let section = doc
        .split("\n## Differences from Prefect")
        .nth(1)
        .context("docs/templates.md has no `## Differences from Prefect` section")?;
    let section = section.split("\n## ").next().unwrap_or(section);
    Ok(section
        .lines()
        .filter_map(|l| l.strip_prefix("- **`"))
        .filter_map(|l| l.split_once("`**").map(|(class, _)| class.to_owned()))
        .collect())
}

#[test]
#[ignore = "needs the cases Prefect rendered: run by scripts/template-diff"]
fn pushpool_renders_as_prefect() -> anyhow::Result<()> {
    let path = std::env::var("PUSHPOOL_TEMPLATE_DIFF_CASES")
        .context("PUSHPOOL_TEMPLATE_DIFF_CASES names the cases file (scripts/template-diff)")?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let documented = documented_classes()?;
    let mut counts: BTreeMap<(String, &'static str), usize> = BTreeMap::new();
    let mut examples: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let mut total = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let case: Value = serde_json::from_str(line).context("a case line is not JSON")?;
        let family = case["family"].as_str().unwrap_or("?").to_owned();
        let mut class = classify(&case);
        if class != "agreed" && !documented.contains(class) {
            class = "undocumented";
        }
        total += 1;
        *counts.entry((family, class)).or_default() += 1;
        let shown = examples.entry(class).or_default();
        if shown.len() < if class == "undocumented" { 10 } else { 1 } {
            let ours = match pushpool(&case, true) {
                Ok(v) => v.to_string(),
                Err(e) => format!("error {}: {e}", e.rule),
            };
            shown.push(format!(
                "case {}: template {} deployment {} run {} environ {}\n    prefect:  {}\n    pushpool: {ours}",
                case["id"], case["template"], case["deployment"], case["run"], case["environ"], case["prefect"]
            ));
        }
    }
    let by_class = |c: &str| -> usize {
        counts
            .iter()
            .filter(|((_, k), _)| *k == c)
            .map(|(_, n)| n)
            .sum()
    };
    println!("template-diff: {total} cases");
    for ((family, class), n) in &counts {
        println!("template-diff:   {family:<8} {class:<16} {n}");
    }
    println!(
        "template-diff: agreed {}, documented differences: json_spelling {}, unused_variable {}, \
         dotted_conflict {}, secret_reference {}, prefect_raises {}; undocumented {}",
        by_class("agreed"),
        by_class("json_spelling"),
        by_class("unused_variable"),
        by_class("dotted_conflict"),
        by_class("secret_reference"),
        by_class("prefect_raises"),
        by_class("undocumented"),
    );
    for (class, shown) in &examples {
        for s in shown {
            println!("template-diff: example of {class}: {s}");
        }
    }
    if total < MIN_CASES {
        bail!("only {total} cases compared; the test needs at least {MIN_CASES}");
    }
    let undocumented = by_class("undocumented");
    if undocumented > 0 {
        bail!("{undocumented} case(s) differ from Prefect in a way docs/templates.md does not list (examples above)");
    }
    Ok(())
}
