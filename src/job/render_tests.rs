//! Prefect's rendering rules, one test per class of issue 12 item 4 (each with the issue's
//! minimal example); `scripts/template-diff` checks the same against Prefect itself.

use serde_json::{json, Map, Value};

use super::*;
use crate::job::template::tests::{map, tpl};
use crate::job::template::BaseJobTemplate;

/// Renders `template` with deployment `d` and run `r` job variables as a run would get it.
fn job(template: &BaseJobTemplate, d: Value, r: Value) -> Result<Value, TemplateError> {
    let values = template.resolve(&map(d), &map(r))?;
    Ok(template.render(&values, &Map::new()))
}

/// A template whose job shows `env` and `labels` and whose defaults are `defaults`.
fn env_labels(defaults: Value) -> BaseJobTemplate {
    let mut props = json!({"env": {}, "labels": {}});
    for (k, v) in map(defaults) {
        props[&k]["default"] = v;
    }
    tpl(json!({
        "job_configuration": {"env": "{{ env }}", "labels": "{{ labels }}"},
        "variables": {"properties": props}
    }))
}

#[test]
fn a_plain_key_wins_over_a_dotted_one_at_both_levels() {
    let t = env_labels(json!({}));
    let out = job(&t, json!({"env": {"A": "1"}, "env.A": "2"}), json!({})).unwrap();
    assert_eq!(out["env"], json!({"A": "1"}));
    // In Prefect the flow run's dotted override loses to the deployment's plain `env`.
    let out = job(&t, json!({"env": {"A": "1"}}), json!({"env.A": "2"})).unwrap();
    assert_eq!(out["env"], json!({"A": "1"}));
    // A run's plain `env` is merged into the deployment's one level deep.
    let out = job(
        &t,
        json!({"env": {"A": "1", "B": "1"}}),
        json!({"env": {"B": "2"}}),
    )
    .unwrap();
    assert_eq!(out["env"], json!({"A": "1", "B": "2"}));
}

#[test]
fn a_dotted_key_replaces_a_default_and_layers_keep_prefects_order() {
    let t = env_labels(json!({"labels": {"owner": "a"}}));
    let out = job(&t, json!({"labels.team": "b"}), json!({})).unwrap();
    assert_eq!(out["labels"], json!({"team": "b"}));
    let t = env_labels(json!({}));
    let out = job(&t, json!({"labels.b": "2"}), json!({"labels": {"a": "1"}})).unwrap();
    assert_eq!(out["labels"], json!({"b": "2", "a": "1"}));
}

#[test]
fn the_env_default_is_merged_into_the_job_before_overrides() {
    // Into a literal `env` object.
    let t = tpl(json!({
        "job_configuration": {"env": {"X": "1", "I": "{{ image }}"}, "e": "{{ env.A }}"},
        "variables": {"properties": {"env": {"default": {"BASE": "0"}}, "image": {"default": "i"}}}
    }));
    let out = job(&t, json!({}), json!({})).unwrap();
    assert_eq!(out["env"], json!({"X": "1", "I": "i", "BASE": "0"}));
    // Overrides are merged into it too, and are rendered; `{{ env.A }}` sees the override.
    let out = job(&t, json!({"env": {"A": "{{ image }}!"}}), json!({})).unwrap();
    assert_eq!(
        out["env"],
        json!({"X": "1", "I": "i", "BASE": "0", "A": "i!"})
    );
    assert_eq!(out["e"], json!("{{ image }}!"));
    // Replacing a placeholder `env`, the default survives an `env` override.
    let t = env_labels(json!({"env": {"BASE": "0"}}));
    let out = job(&t, json!({"env": {"A": "1"}}), json!({})).unwrap();
    assert_eq!(out["env"], json!({"BASE": "0", "A": "1"}));
    // Added when the template has no `env`.
    let t = tpl(json!({
        "job_configuration": {"x": 1},
        "variables": {"properties": {"env": {"default": {"BASE": "0"}}}}
    }));
    assert_eq!(
        job(&t, json!({}), json!({})).unwrap(),
        json!({"x": 1, "env": {"BASE": "0"}})
    );
    // An override of `env` counts as used when the template's `env` is an object.
    let t = tpl(json!({
        "job_configuration": {"env": {"X": "1"}},
        "variables": {"properties": {"env": {}}}
    }));
    let out = job(&t, json!({"env.A": "2"}), json!({})).unwrap();
    assert_eq!(out["env"], json!({"X": "1", "A": "2"}));
}

#[test]
fn dotted_lookups_index_lists_and_strings() {
    let values = map(json!({"args": ["a", "b", "c"], "image": "img", "n": {"0": "zero"}}));
    let rendered = |name: &str| lookup(&values, name);
    assert_eq!(rendered("args.0"), Some(json!("a")));
    assert_eq!(rendered("args.-1"), Some(json!("c")));
    assert_eq!(rendered("args[1]"), Some(json!("b")));
    assert_eq!(rendered("args.1_0"), None); // Python's int("1_0") is 10: out of range
    assert_eq!(rendered("args.3"), None);
    assert_eq!(rendered("args.x"), None);
    assert_eq!(rendered("image.0"), Some(json!("i")));
    assert_eq!(rendered("image.-1"), Some(json!("g")));
    assert_eq!(rendered("image.0.0"), Some(json!("i")));
    assert_eq!(rendered("image.0.1"), None);
    // A number never reads an object key, as in Python (`{"0": …}[0]` is a KeyError).
    assert_eq!(rendered("n.0"), None);
    assert_eq!(rendered("0"), None);
}

#[test]
fn placeholder_names_are_prefects() {
    let t = tpl(json!({
        "job_configuration": {
            "g": "{{ größe }}",
            "a": "{{ args[0] }}",
            "h": "{{ $HOME }}",
            "p": "home={{ $HOME }} x={{ $UNSET }}",
            "b": "{{ prefect.blocks.secret.token }}",
            "v": "v-{{ prefect.variables.name }}"
        },
        "variables": {"properties": {"größe": {"default": 3}, "args": {"default": ["x"]}}}
    }));
    let values = t.resolve(&Map::new(), &Map::new()).unwrap();
    let environ = |name: &str| (name == "HOME").then(|| "/root".to_owned());
    let out = t.render_with_environ(&values, &Map::new(), &environ);
    assert_eq!(
        out,
        json!({
            "g": 3,
            "a": "x",
            "h": "/root",
            "p": "home=/root x=",
            "b": "{{ prefect.blocks.secret.token }}",
            "v": "v-{{ prefect.variables.name }}"
        })
    );
    // Without an environment (pushpool's own control plane) `$` placeholders are missing: "".
    assert_eq!(t.render(&values, &Map::new())["h"], json!(""));
}

#[test]
fn where_prefect_raises_pushpool_refuses() {
    let t = tpl(json!({
        "job_configuration": {"env": {"X": "1"}, "c": "{{ cfg }}"},
        "variables": {"properties": {"env": {}, "cfg": {}}}
    }));
    let e = job(&t, json!({"env": "A=1"}), json!({})).unwrap_err();
    assert_eq!(
        (e.field.as_str(), e.rule),
        ("job_variables.env", "env_not_object")
    );
    let e = job(&t, json!({"env": {"A": "1"}}), json!({"env": null})).unwrap_err();
    assert_eq!(e.rule, "env_not_object");
    let e = job(&t, json!({"cfg.a": 1}), json!({"cfg.a.b": 2})).unwrap_err();
    assert_eq!(
        (e.field.as_str(), e.rule),
        ("job_variables.cfg.a.b", "dotted_conflict")
    );
    let e = t
        .validate_deployment_overrides(&map(json!({"cfg.a.b": {}, "cfg.a[b]": 1})))
        .unwrap_err();
    assert_eq!(e.rule, "dotted_conflict");
    // Falsy values are not merged (Python truthiness): an empty string `env` is no error.
    assert_eq!(
        job(&t, json!({"env": ""}), json!({})).unwrap()["env"],
        json!({"X": "1"})
    );
}

#[test]
fn a_variable_used_only_in_merged_env_entries_has_an_effect() {
    // Prefect renders the `env` entries it merges into the job, so a variable they use is not
    // refused as unused.
    let t = tpl(json!({
        "job_configuration": {"env": {"X": "1"}},
        "variables": {"properties": {"env": {}, "image": {}}}
    }));
    let out = job(
        &t,
        json!({"env": {"I": "{{ image }}"}, "image": "app"}),
        json!({}),
    )
    .unwrap();
    assert_eq!(out["env"], json!({"X": "1", "I": "app"}));
    let e = job(&t, json!({"image": "app"}), json!({})).unwrap_err();
    assert_eq!(e.rule, "unused_variable");
    // The same through an `env` default that becomes the job's `env`.
    let t = tpl(json!({
        "job_configuration": {"env": "{{ env }}"},
        "variables": {"properties": {"env": {"default": {"I": "img-{{ image }}"}}, "image": {}}}
    }));
    let out = job(&t, json!({}), json!({"image": "app"})).unwrap();
    assert_eq!(out["env"], json!({"I": "img-app"}));
}

#[test]
fn env_entries_of_job_variables_may_not_copy_secrets() {
    let t = tpl(json!({
        "job_configuration": {"env": {}, "c": "{{ credentials }}", "k": "{{ key }}", "i": "{{ image }}"},
        "variables": {"properties": {
            "env": {},
            "image": {"default": "app"},
            "credentials": {"default": {"service_account_info": {"private_key": "-----BEGIN"}}},
            "key": {"writeOnly": true, "default": "s3cr3t"}
        }}
    }));
    for entry in ["{{ credentials }}", "x-{{ key }}", "{{ image.api_token }}"] {
        let e = job(&t, json!({"env": {"K": entry}}), json!({})).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.rule),
            ("job_variables.env.K", "secret_reference")
        );
        let e = t
            .validate_deployment_overrides(&map(json!({"env.K": entry})))
            .unwrap_err();
        assert_eq!(e.rule, "secret_reference");
    }
    // Other variables may be read; the template's own placeholders are the pool owner's.
    let out = job(&t, json!({}), json!({"env": {"K": "{{ image }}"}})).unwrap();
    assert_eq!(out["env"], json!({"K": "app"}));
    assert_eq!(out["k"], json!("s3cr3t"));
}
