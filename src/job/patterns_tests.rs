//! Unit tests of the template schema's pattern rules (issue 19 item 6), through the template
//! parser that applies them.

use serde_json::{json, Map, Value};

use super::super::template::tests::{map, parse_err, tpl};
use super::super::template::BaseJobTemplate;
use super::{MAX_PATTERN_BYTES, MAX_TEMPLATE_PATTERNS};

/// A template with one array variable `x` whose items must match `pattern`.
fn items_pattern(pattern: &str) -> Value {
    json!({
        "job_configuration": {"x": "{{ x }}"},
        "variables": {"type": "object", "properties": {
            "x": {"type": "array", "items": {"type": "string", "pattern": pattern}}
        }}
    })
}

#[test]
fn a_backtracking_only_pattern_is_refused_naming_it() {
    // Issue 19 item 6: lookaround needs a backtracking engine; a few thousand items of "aaa…"
    // cost ~20 ms each with a million-step backtrack limit, ~40 s for 70 KB.
    for pattern in ["^(a+)+(?!a)b", "(?<=a)b", r"^(a)\1$"] {
        let e = parse_err(items_pattern(pattern));
        assert_eq!(
            (e.field.as_str(), e.rule),
            (
                "base_job_template.variables.properties.x.items.pattern",
                "unsupported_pattern"
            ),
            "{pattern}: {e}"
        );
    }
}

#[test]
fn nested_quantifiers_get_a_correct_verdict_on_large_values() {
    let t = tpl(items_pattern("^(a+)+$"));
    let mut items = vec![json!("a".repeat(27)); 2_500];
    assert!(t
        .resolve(&Map::new(), &map(json!({"x": items.clone()})))
        .is_ok());
    items[1_234] = json!(format!("{}!", "a".repeat(70_000)));
    let e = t
        .resolve(&Map::new(), &map(json!({"x": items})))
        .expect_err("an item with `!` does not match");
    assert_eq!(
        (e.field.as_str(), e.rule),
        ("job_variables.x[1234]", "schema")
    );
}

#[test]
fn patterns_are_counted_and_bounded_in_length() {
    let mut props = Map::new();
    for i in 0..MAX_TEMPLATE_PATTERNS {
        props.insert(
            format!("v{i:03}"),
            json!({"type": "string", "pattern": "^a$"}),
        );
    }
    let at_cap = json!({"job_configuration": {}, "variables": {"type": "object", "properties": props.clone()}});
    BaseJobTemplate::parse(&at_cap).expect("the cap itself is allowed");
    props.insert(
        "zzz".into(),
        json!({"type": "object", "patternProperties": {"^b": {"type": "string"}}}),
    );
    let over =
        json!({"job_configuration": {}, "variables": {"type": "object", "properties": props}});
    let e = parse_err(over);
    assert_eq!(
        (e.field.as_str(), e.rule),
        (
            "base_job_template.variables.properties.zzz.patternProperties.^b",
            "too_many_patterns"
        ),
        "{e}"
    );

    let long = "a".repeat(MAX_PATTERN_BYTES + 1);
    let e = parse_err(items_pattern(&long));
    assert_eq!(
        (e.field.as_str(), e.rule),
        (
            "base_job_template.variables.properties.x.items.pattern",
            "pattern_too_long"
        ),
        "{e}"
    );
    tpl(items_pattern(&"a".repeat(MAX_PATTERN_BYTES)));
}

#[test]
fn property_names_and_data_are_not_taken_for_patterns() {
    // Variables called `pattern`/`patternProperties` and data holding such keys are not regexes.
    let t = tpl(json!({
        "job_configuration": {"p": "{{ pattern }}", "q": "{{ patternProperties }}"},
        "variables": {"type": "object", "properties": {
            "pattern": {"type": "string", "default": "(?!x)"},
            "patternProperties": {"type": "object", "default": {"pattern": "(?!x)"},
                "examples": [{"pattern": "(?!y)"}]},
        }}
    }));
    let v = t.resolve(&Map::new(), &Map::new()).unwrap();
    assert_eq!(v["pattern"], "(?!x)");
}

#[test]
fn ecma_classes_still_work_with_the_linear_engine() {
    // The Cloud Run template's memory pattern, and ECMA `\d`/`\w` (ASCII).
    let t = tpl(items_pattern(r"^\d+(?:G|Gi|M|Mi)$"));
    assert!(t
        .resolve(&Map::new(), &map(json!({"x": ["512Mi"]})))
        .is_ok());
    assert!(t
        .resolve(&Map::new(), &map(json!({"x": ["512 Mi"]})))
        .is_err());
}
