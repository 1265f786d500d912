//! Unit and property tests of the template engine.

use super::*;
use proptest::prelude::*;
use serde_json::json;

pub(crate) fn map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

pub(crate) fn tpl(v: Value) -> BaseJobTemplate {
    BaseJobTemplate::parse(&v).expect("template parses")
}

pub(crate) fn parse_err(v: Value) -> TemplateError {
    BaseJobTemplate::parse(&v).expect_err("template must be refused")
}

/// A template exercising most features.
fn sample() -> BaseJobTemplate {
    tpl(json!({
        "job_configuration": {
            "image": "{{ image }}",
            "command": "{{ command }}",
            "cpu": "{{ cpu }}",
            "args": "{{ args }}",
            "env": "{{ env }}",
            "labels": "{{ labels }}",
            "name": "run-{{ flow_run.id }}",
            "token": "{{ pushpool.run_token }}",
        },
        "variables": {
            "type": "object",
            "required": ["image"],
            "properties": {
                "image": {"type": "string"},
                "command": {"type": ["string", "null"], "default": null},
                "cpu": {"type": "integer", "default": 1, "minimum": 1},
                "args": {"type": "array", "items": {"type": "string"}},
                "env": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "default": {"BASE": "0"}
                },
                "labels": {"type": "object", "default": {"team": "a"}},
                "unused": {"type": "string"}
            }
        }
    }))
}

#[test]
fn canonical_example() {
    let template = json!({
        "a": "{{ x }}",
        "b": "pre-{{ x }}-{{ y }}",
        "c": ["{{ y }}", "{{ x }}"],
        "d": {"e": "{{ y }}"}
    });
    let out = render_value(&template, &map(json!({"x": 5})));
    assert_eq!(out, json!({"a": 5, "b": "pre-5-", "c": [5], "d": {}}));
    assert_eq!(
        serde_json::to_string(&out).unwrap(),
        r#"{"a":5,"b":"pre-5-","c":[5],"d":{}}"#
    );
}

#[test]
fn whole_placeholder_keeps_json_type() {
    for v in [
        json!(5),
        json!(-1.5),
        json!("text"),
        json!(true),
        json!(false),
        json!(null),
        json!([1, "two", null]),
        json!({"a": {"b": [1]}}),
    ] {
        let values = map(json!({ "x": v.clone() }));
        for t in ["{{ x }}", "{{x}}", "{{   x\t}}"] {
            assert_eq!(
                render_value(&json!({ "k": t }), &values),
                json!({ "k": v.clone() }),
                "template {t:?}"
            );
        }
    }
}

#[test]
fn partial_placeholder_interpolates_as_text() {
    let cases = [
        (json!("abc"), "p-abc"),
        (json!(5), "p-5"),
        (json!(1.5), "p-1.5"),
        (json!(true), "p-true"),
        (json!(false), "p-false"),
        (json!(null), "p-null"),
        (json!([1, "a"]), r#"p-[1,"a"]"#),
        (json!({"a": 1, "b": [true]}), r#"p-{"a":1,"b":[true]}"#),
    ];
    for (v, want) in cases {
        let values = map(json!({ "x": v }));
        assert_eq!(
            render_value(&json!({"k": "p-{{ x }}"}), &values),
            json!({ "k": want })
        );
    }
    // Text outside the braces makes it partial, even whitespace.
    let values = map(json!({"x": 5}));
    assert_eq!(
        render_value(&json!([" {{ x }}", "{{ x }}{{ x }}"]), &values),
        json!([" 5", "55"])
    );
    // Values are inserted once; placeholders inside them are not expanded.
    let values = map(json!({"x": "{{ y }}", "y": 1}));
    assert_eq!(render_value(&json!("a{{ x }}"), &values), json!("a{{ y }}"));
}

#[test]
fn missing_values_remove_keys_and_items() {
    let template = json!({
        "keep": "plain",
        "gone": "{{ nope }}",
        "list": ["{{ nope }}", 1, "{{ nope.deeper }}", "x{{ nope }}y"],
        "nested": {"gone": "{{ nope }}", "n": null, "b": false},
        "{{ nope }}": "keys are not templated"
    });
    assert_eq!(
        render_value(&template, &Map::new()),
        json!({
            "keep": "plain",
            "list": [1, "xy"],
            "nested": {"n": null, "b": false},
            "{{ nope }}": "keys are not templated"
        })
    );
    assert_eq!(render_value(&json!("{{ nope }}"), &Map::new()), Value::Null);
}

#[test]
fn dotted_lookups_read_nested_objects() {
    let values = map(json!({"a": {"b": {"c": 7}, "s": "str"}, "l": [1]}));
    let template = json!({
        "c": "{{ a.b.c }}",
        "b": "{{ a.b }}",
        "p": "v{{ a.b.c }}",
        "missing": "{{ a.x.c }}",
        "through_string": "{{ a.s.len }}",
        "through_list": "{{ l.0 }}"
    });
    // Prefect's `get_from_dict`: a number segment indexes a list (Prefect 3.8.8; this test
    // said "removed" before issue 12 item 4).
    assert_eq!(
        render_value(&template, &values),
        json!({"c": 7, "b": {"c": 7}, "p": "v7", "through_list": 1})
    );
}

#[test]
fn null_default_is_dropped() {
    let t = sample();
    let defaults = t.defaults();
    assert!(!defaults.contains_key("command"));
    assert_eq!(defaults.get("cpu"), Some(&json!(1)));
    let values = t
        .resolve(&Map::new(), &map(json!({"image": "busybox"})))
        .unwrap();
    assert!(!values.contains_key("command"));
    let out = t.render(&values, &Map::new());
    assert!(out.get("command").is_none());
    // An explicit null override is kept and rendered as null.
    let values = t
        .resolve(&map(json!({"command": null})), &map(json!({"image": "i"})))
        .unwrap();
    assert_eq!(t.render(&values, &Map::new())["command"], Value::Null);
}

#[test]
fn null_default_need_not_match_type() {
    tpl(json!({
        "job_configuration": {"n": "{{ n }}"},
        "variables": {"properties": {"n": {"type": "integer", "default": null}}}
    }));
}

#[test]
fn dotted_keys_expand_first_and_plain_keys_win() {
    // Prefect's `from_template_and_values`: dotted keys are expanded first, plain keys are
    // deep-merged on top, so the plain `env` wins over `env.B` (before issue 12 item 4 the
    // dotted key won). Empty segments are kept as keys, as `set_in_dict` does.
    let m =
        map(json!({"env": {"A": "1", "B": "x"}, "env.B": "2", "a.b.c": 1, "a.b.d": 2, "x..y": 3}));
    assert_eq!(
        Value::Object(render::expand(&m)),
        json!({"env": {"A": "1", "B": "x"}, "a": {"b": {"c": 1, "d": 2}}, "x": {"": {"y": 3}}})
    );
    assert_eq!(
        Value::Object(render::expand(&map(json!({"args[0]": 1, "a.b[0]": 2})))),
        json!({"args[0]": 1, "a": {"b": {"0": 2}}})
    );
}

#[test]
fn env_and_dotted_keys_merge_across_three_layers() {
    let t = sample();
    let deployment = map(json!({
        "image": "dep",
        "env": {"A": "1", "SHARED": "dep"},
        "env.B": "2",
        "labels": {"owner": "dep"},
        "cpu": 2
    }));
    let run = map(json!({
        "env": {"SHARED": "run", "C": "3"},
        "env.D": "4",
        "labels.extra": "run"
    }));
    let values = t.resolve(&deployment, &run).unwrap();
    assert_eq!(values["image"], json!("dep"));
    assert_eq!(values["cpu"], json!(2));
    // The variable `env` is the layers' env (the run's merged into the deployment's, dotted
    // keys under them); the default is merged into the job's `env` instead (below).
    assert_eq!(
        values["env"],
        json!({"A": "1", "B": "2", "SHARED": "run", "C": "3", "D": "4"})
    );
    // `labels` replaced wholesale by the deployment (default team dropped), the run's dotted
    // key expanded under it.
    assert_eq!(values["labels"], json!({"owner": "dep", "extra": "run"}));
    let job = t.render(&values, &Map::new());
    assert_eq!(
        job["env"],
        json!({"BASE": "0", "A": "1", "B": "2", "SHARED": "run", "C": "3", "D": "4"})
    );

    // One layer replaces each variable wholesale (before issue 12 item 4 `env` was
    // deep-merged here too).
    let mut base = map(json!({"env": {"A": "1"}, "x": {"keep": 1}}));
    apply_overrides(&mut base, &map(json!({"env": {"B": "2"}, "x": {"new": 2}})));
    assert_eq!(
        Value::Object(base),
        json!({"env": {"B": "2"}, "x": {"new": 2}})
    );
}

#[test]
fn render_with_builtin_context() {
    let t = sample();
    let values = t.resolve(&Map::new(), &map(json!({"image": "i"}))).unwrap();
    let context = map(json!({
        "flow_run": {"id": "fr-1"},
        "pushpool": {"run_token": "tok"}
    }));
    let out = t.render(&values, &context);
    assert_eq!(
        out,
        json!({
            "image": "i",
            "cpu": 1,
            "env": {"BASE": "0"},
            "labels": {"team": "a"},
            "name": "run-fr-1",
            "token": "tok"
        })
    );
    // Without context, built-ins are missing like anything else.
    let out = t.render(&values, &Map::new());
    assert_eq!(out["name"], json!("run-"));
    assert!(out.get("token").is_none());
}

#[test]
fn builtin_namespaces_need_no_declaration() {
    let t = tpl(json!({
        "job_configuration": {
            "a": "{{ flow_run.id }}",
            "b": "{{ deployment.name }}",
            "c": "{{ work_pool.name }}",
            "d": "{{ pushpool.run_token }}"
        }
    }));
    assert!(t.used_variables().is_empty());
    assert_eq!(
        t.variables_schema(),
        &json!({"type": "object", "properties": {}})
    );
}

#[test]
fn undeclared_placeholder_names_its_path() {
    let e = parse_err(json!({
        "job_configuration": {"containers": [{"image": "x"}, {"image": "{{ img.tag }}"}]},
        "variables": {"properties": {"image": {"type": "string"}}}
    }));
    assert_eq!(e.rule, "undeclared_placeholder");
    assert_eq!(
        e.field,
        "base_job_template.job_configuration.containers[1].image"
    );
    assert!(e.message.contains("img"), "{}", e.message);
}

#[test]
fn unknown_override_is_refused() {
    let t = sample();
    for key in ["nope", "nope.x"] {
        let overrides = map(json!({ key: "v" }));
        let e = t.validate_deployment_overrides(&overrides).unwrap_err();
        assert_eq!(e.rule, "unknown_variable");
        assert_eq!(e.field, format!("job_variables.{key}"));
        assert!(e.message.contains("unknown job variable `nope`"));
        let e = t
            .resolve(&Map::new(), &map(json!({"image": "i", key: "v"})))
            .unwrap_err();
        assert_eq!(e.rule, "unknown_variable");
        let e = t
            .resolve(&overrides, &map(json!({"image": "i"})))
            .unwrap_err();
        assert_eq!(e.rule, "unknown_variable");
    }
}

#[test]
fn unused_override_is_refused() {
    let t = sample();
    assert!(!t.used_variables().contains("unused"));
    let e = t
        .validate_deployment_overrides(&map(json!({"unused": "v"})))
        .unwrap_err();
    assert_eq!(e.rule, "unused_variable");
    assert_eq!(e.field, "job_variables.unused");
    assert!(e.message.contains("`unused`") && e.message.contains("#20131"));
    let e = t
        .resolve(&Map::new(), &map(json!({"image": "i", "unused": "v"})))
        .unwrap_err();
    assert_eq!(e.rule, "unused_variable");
    assert_eq!(e.field, "job_variables.unused");
}

#[test]
fn schema_failures_name_the_variable_path() {
    let t = sample();
    let cases = [
        (json!({"cpu": "lots"}), "job_variables.cpu"),
        (json!({"cpu": 0}), "job_variables.cpu"),
        (json!({"args": ["ok", 1]}), "job_variables.args[1]"),
        (json!({"env.FOO": 5}), "job_variables.env.FOO"),
        (json!({"env": {"0": 5}}), "job_variables.env.0"),
        (json!({"image": 3}), "job_variables.image"),
    ];
    for (overrides, field) in cases {
        let e = t
            .validate_deployment_overrides(&map(overrides.clone()))
            .unwrap_err();
        assert_eq!((e.rule, e.field.as_str()), ("schema", field), "{overrides}");
        let mut run = map(overrides.clone());
        run.entry("image").or_insert(json!("i"));
        let e = t.resolve(&Map::new(), &run).unwrap_err();
        assert_eq!((e.rule, e.field.as_str()), ("schema", field), "{overrides}");
        assert!(e.to_string().starts_with(&format!("{field}: ")));
    }
}

#[test]
fn required_is_enforced_only_on_resolved_values() {
    let t = sample();
    t.validate_deployment_overrides(&map(json!({"cpu": 4})))
        .expect("deployment may leave `image` to the run");
    let e = t.resolve(&map(json!({"cpu": 4})), &Map::new()).unwrap_err();
    assert_eq!(e.rule, "required");
    assert_eq!(e.field, "job_variables.image");
    let values = t
        .resolve(&map(json!({"cpu": 4})), &map(json!({"image": "i"})))
        .unwrap();
    assert_eq!(values["cpu"], json!(4));

    // Nested `required` is ignored for deployments too.
    let t = tpl(json!({
        "job_configuration": {"o": "{{ o }}"},
        "variables": {"properties": {"o": {
            "type": "object",
            "required": ["must"],
            "properties": {"must": {"type": "string"}}
        }}}
    }));
    t.validate_deployment_overrides(&map(json!({"o": {}})))
        .unwrap();
    let e = t.resolve(&map(json!({"o": {}})), &Map::new()).unwrap_err();
    assert_eq!(
        (e.rule, e.field.as_str()),
        ("required", "job_variables.o.must")
    );
}

#[test]
fn strip_required_keeps_data_keywords() {
    let mut s = json!({
        "required": ["a"],
        "properties": {
            "required": {"type": "string"},
            "x": {"const": {"required": ["k"]}, "items": [{"required": ["z"]}]}
        }
    });
    strip_required(&mut s);
    assert_eq!(
        s,
        json!({
            "properties": {
                "required": {"type": "string"},
                "x": {"const": {"required": ["k"]}, "items": [{}]}
            }
        })
    );
}

#[test]
fn malformed_templates_are_refused() {
    let cases = [
        (json!([]), "base_job_template"),
        (
            json!({"variables": {}}),
            "base_job_template.job_configuration",
        ),
        (
            json!({"job_configuration": []}),
            "base_job_template.job_configuration",
        ),
        (
            json!({"job_configuration": {}, "variables": []}),
            "base_job_template.variables",
        ),
        (
            json!({"job_configuration": {}, "variables": {"type": "array"}}),
            "base_job_template.variables.type",
        ),
        (
            json!({"job_configuration": {}, "variables": {"properties": []}}),
            "base_job_template.variables.properties",
        ),
        (
            json!({"job_configuration": {}, "variables": {"properties": {"a.b": {}}}}),
            "base_job_template.variables.properties.a.b",
        ),
        (
            json!({"job_configuration": {}, "variables": {"properties": {"a": 3}}}),
            "base_job_template.variables.properties.a",
        ),
        (
            json!({"job_configuration": {}, "extra": 1}),
            "base_job_template.extra",
        ),
    ];
    for (v, field) in cases {
        let e = parse_err(v.clone());
        assert_eq!(
            (e.rule, e.field.as_str()),
            ("invalid_template", field),
            "{v}"
        );
    }
    let e = parse_err(json!({
        "job_configuration": {},
        "variables": {"properties": {"a": {"type": 5}}}
    }));
    assert_eq!(e.rule, "invalid_template");
    assert!(e.field.starts_with("base_job_template.variables"), "{e:?}");
}

#[test]
fn invalid_default_is_refused() {
    let e = parse_err(json!({
        "job_configuration": {"cpu": "{{ cpu }}"},
        "variables": {"properties": {"cpu": {"type": "integer", "default": "x"}}}
    }));
    assert_eq!(e.rule, "schema");
    assert_eq!(
        e.field,
        "base_job_template.variables.properties.cpu.default"
    );
    let e = parse_err(json!({
        "job_configuration": {},
        "variables": {"properties": {"args": {
            "type": "array", "items": {"type": "string"}, "default": ["a", 2]
        }}}
    }));
    assert_eq!(
        e.field,
        "base_job_template.variables.properties.args.default[1]"
    );
    // `$ref`s resolve against the whole variables schema.
    tpl(json!({
        "job_configuration": {"r": "{{ r }}"},
        "variables": {
            "definitions": {"Res": {"type": "object", "properties": {"cpu": {"type": "integer"}}}},
            "properties": {"r": {"$ref": "#/definitions/Res", "default": {"cpu": 1}}}
        }
    }));
}

#[test]
fn deep_templates_are_refused_without_overflow() {
    let mut deep = json!("leaf");
    for _ in 0..1000 {
        deep = json!([deep]);
    }
    let e = parse_err(json!({"job_configuration": {"deep": deep}}));
    assert_eq!(e.rule, "invalid_template");
    assert!(e
        .field
        .starts_with("base_job_template.job_configuration.deep[0][0]"));

    // Exactly the limit is fine: the template object is level 1,
    // `job_configuration` level 2, the innermost `{}` level 64.
    let mut ok = json!({});
    for _ in 0..(MAX_TEMPLATE_DEPTH - 3) {
        ok = json!([ok]);
    }
    tpl(json!({"job_configuration": {"x": ok}}));
    let mut too_deep = json!({});
    for _ in 0..(MAX_TEMPLATE_DEPTH - 2) {
        too_deep = json!([too_deep]);
    }
    parse_err(json!({"job_configuration": {"x": too_deep}}));
}

/// The example in `docs/templates.md`.
#[test]
fn docs_example() {
    let t = tpl(json!({
        "job_configuration": {
            "image": "{{ image }}",
            "command": "{{ command }}",
            "cpu": "{{ cpu }}",
            "env": "{{ env }}",
            "name": "run-{{ flow_run.id }}"
        },
        "variables": {
            "type": "object",
            "required": ["image"],
            "properties": {
                "image": {"type": "string"},
                "command": {"type": ["string", "null"], "default": null},
                "cpu": {"type": "integer", "minimum": 1, "default": 1},
                "env": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "default": {"BASE": "0"}
                }
            }
        }
    }));
    assert_eq!(
        Value::Object(t.defaults()),
        json!({"cpu": 1, "env": {"BASE": "0"}})
    );
    let deployment = map(json!({"image": "app:1", "cpu": 2, "env": {"A": "1"}, "env.B": "2"}));
    let run = map(json!({"env": {"B": "3", "C": "4"}}));
    t.validate_deployment_overrides(&deployment).unwrap();
    let values = t.resolve(&deployment, &run).unwrap();
    assert_eq!(
        Value::Object(values.clone()),
        json!({"image": "app:1", "cpu": 2, "env": {"A": "1", "B": "3", "C": "4"}})
    );
    let out = t.render(&values, &map(json!({"flow_run": {"id": "42"}})));
    assert_eq!(
        out,
        json!({
            "image": "app:1",
            "cpu": 2,
            "env": {"BASE": "0", "A": "1", "B": "3", "C": "4"},
            "name": "run-42"
        })
    );
    let e = t.resolve(&Map::new(), &Map::new()).unwrap_err();
    assert_eq!(e.to_string().split(':').next(), Some("job_variables.image"));
}

#[test]
fn accessors_round_trip() {
    let raw = json!({
        "job_configuration": {"a": "{{ a.b }}", "b": ["{{ c }}-{{ flow_run.id }}"]},
        "variables": {"properties": {"a": {"type": "object"}, "c": {"default": 1}}}
    });
    let t = tpl(raw.clone());
    assert_eq!(t.to_value(), raw);
    assert_eq!(t.job_configuration(), &raw["job_configuration"]);
    assert_eq!(t.variables_schema(), &raw["variables"]);
    assert_eq!(
        t.used_variables().into_iter().collect::<Vec<_>>(),
        vec!["a".to_owned(), "c".to_owned()]
    );
    assert_eq!(Value::Object(t.defaults()), json!({"c": 1}));
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{0,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A template plus what it must render to with no values (`None`: removed).
fn arb_template() -> impl Strategy<Value = (Value, Option<Value>)> {
    let name = "[a-z_]{1,3}(\\.[a-z0-9]{1,3}){0,2}";
    let leaf = prop_oneof![
        (name, "[ \t]{0,2}", "[ \t]{0,2}")
            .prop_map(|(n, l, r)| (Value::String(format!("{{{{{l}{n}{r}}}}}")), None)),
        ("[a-z -]{1,3}", name, "[a-z -]{0,3}", name).prop_map(|(p, n, s, m)| (
            Value::String(format!("{p}{{{{ {n} }}}}{s}{{{{{m}}}}}")),
            Some(Value::String(format!("{p}{s}")))
        )),
        "[a-z {]{0,5}".prop_map(|s| (Value::String(s.clone()), Some(Value::String(s)))),
        any::<i64>().prop_map(|n| (Value::from(n), Some(Value::from(n)))),
        any::<bool>().prop_map(|b| (Value::Bool(b), Some(Value::Bool(b)))),
        Just((Value::Null, Some(Value::Null))),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|items| {
                let t = items.iter().map(|(t, _)| t.clone()).collect();
                let e = items.into_iter().filter_map(|(_, e)| e).collect();
                (Value::Array(t), Some(Value::Array(e)))
            }),
            prop::collection::btree_map("[a-z{}]{0,4}", inner, 0..4).prop_map(|m| {
                let t = m.iter().map(|(k, (t, _))| (k.clone(), t.clone())).collect();
                let e = m
                    .into_iter()
                    .filter_map(|(k, (_, e))| e.map(|e| (k, e)))
                    .collect();
                (Value::Object(t), Some(Value::Object(e)))
            }),
        ]
    })
}

type Layer = (
    std::collections::BTreeMap<&'static str, String>,
    std::collections::BTreeMap<&'static str, String>,
    bool,
);

fn arb_layer() -> impl Strategy<Value = Layer> {
    (
        prop::collection::btree_map(
            prop::sample::select(vec!["a", "b", "c"]),
            "[a-z]{0,4}",
            0..=3,
        ),
        prop::collection::btree_map(
            prop::sample::select(vec!["A", "B", "C", "D"]),
            "[a-z]{0,4}",
            0..=4,
        ),
        any::<bool>(),
    )
}

/// Override map for a layer: env as one `env` object or as `env.X` keys.
fn layer_map(layer: &Layer) -> Map<String, Value> {
    let (vars, env, dotted) = layer;
    let mut m: Map<String, Value> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    if *dotted {
        for (k, v) in env {
            m.insert(format!("env.{k}"), json!(v));
        }
    } else if !env.is_empty() {
        m.insert(
            "env".into(),
            Value::Object(
                env.iter()
                    .map(|(k, v)| ((*k).to_owned(), json!(v)))
                    .collect(),
            ),
        );
    }
    m
}

proptest! {
    #[test]
    fn prop_whole_placeholder_preserves_type(v in arb_json()) {
        let values = map(json!({ "x": v.clone() }));
        prop_assert_eq!(
            render_value(&json!({"k": "{{ x }}"}), &values),
            json!({ "k": v })
        );
    }

    #[test]
    fn prop_missing_values_removed_and_partials_emptied((t, expected) in arb_template()) {
        let out = render_value(&json!({ "root": t }), &Map::new());
        let want = match expected {
            Some(e) => json!({ "root": e }),
            None => json!({}),
        };
        prop_assert_eq!(out, want);
    }

    #[test]
    fn prop_override_order(defaults in arb_layer(), dep in arb_layer(), run in arb_layer()) {
        let mut props = Map::new();
        for k in ["a", "b", "c"] {
            let mut schema = json!({"type": "string"});
            if let Some(d) = defaults.0.get(k) {
                schema["default"] = json!(d);
            }
            props.insert(k.to_owned(), schema);
        }
        let default_env: Map<String, Value> = defaults
            .1
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        props.insert(
            "env".into(),
            json!({
                "type": "object",
                "additionalProperties": {"type": "string"},
                "default": default_env
            }),
        );
        let t = tpl(json!({
            "job_configuration": {"a": "{{ a }}", "b": "{{ b }}", "c": "{{ c }}", "env": "{{ env }}"},
            "variables": {"type": "object", "properties": props}
        }));
        let (dep_map, run_map) = (layer_map(&dep), layer_map(&run));
        prop_assert!(t.validate_deployment_overrides(&dep_map).is_ok());
        let values = t.resolve(&dep_map, &run_map).unwrap();
        for k in ["a", "b", "c"] {
            let want = run.0.get(k).or(dep.0.get(k)).or(defaults.0.get(k));
            let want = want.map(|s| json!(s));
            prop_assert_eq!(values.get(k), want.as_ref(), "key {}", k);
        }
        // Prefect's layering of `env`: the run's over the deployment's, except that a run's
        // dotted `env.X` loses to a deployment's plain `env` (expanded first, plain on top).
        let as_map = |layers: &[&Layer]| -> Map<String, Value> {
            let mut env = std::collections::BTreeMap::new();
            for layer in layers {
                env.extend(layer.1.iter().map(|(k, v)| (k.to_string(), json!(v))));
            }
            env.into_iter().collect()
        };
        let (dep_env, run_env) = (!dep.1.is_empty(), !run.1.is_empty());
        let layer_env = if !dep_env && !run_env {
            None
        } else if dep_env && !dep.2 && run.2 {
            Some(as_map(&[&run, &dep]))
        } else {
            Some(as_map(&[&dep, &run]))
        };
        let want_values_env = layer_env.clone().unwrap_or_else(|| as_map(&[&defaults]));
        prop_assert_eq!(&values["env"], &Value::Object(want_values_env));
        let mut want_job_env = as_map(&[&defaults]);
        want_job_env.extend(layer_env.unwrap_or_default());
        let rendered = t.render(&values, &Map::new());
        prop_assert_eq!(&rendered["env"], &Value::Object(want_job_env));
    }
}
