"""Differential template test, Prefect's side (run by scripts/template-diff with the venv of
scripts/prefect-venv.sh).

Generates seeded cases — a base job template, a deployment's and a flow run's `job_variables`
and the environment `{{ $NAME }}` placeholders read — and renders each with Prefect's own code:
`BaseJobConfiguration.resolve_for_flow_run` (which layers the flow run's job variables over the
deployment's and calls `from_template_and_values`, i.e. `apply_values`, `set_in_dict`,
`deep_merge` and the `env` merges). The configuration is captured as `from_template_and_values`
hands it to the configuration class, before pydantic and `prepare_for_flow_run` touch it.

Each case is rendered twice: as Prefect does, and with `apply_values` interpolating non-string
values as compact JSON instead of Python's `str()` (the documented `json_spelling` difference;
the Rust side uses it to classify). Writes one JSON object per line:
  {"id", "family", "template", "deployment", "run", "environ", "prefect", "prefect_json"}
where "prefect"/"prefect_json" are {"ok": <configuration>} or {"error": "<Type>: <message>"}.

Usage: python scripts/template-diff.py --seed N --cases N --out FILE
"""

import argparse
import asyncio
import builtins
import copy
import json
import os
import random
import sys
import uuid
from types import SimpleNamespace

import prefect
import prefect.utilities.templating as templating
from prefect.workers.base import BaseJobConfiguration
from prefect.workers.process import ProcessWorker

ENV_NAMES = ["HOME", "PUSHPOOL_DIFF_A", "PUSHPOOL_DIFF_B"]

CAPTURED = []


class Capture(BaseJobConfiguration):
    """Records what `from_template_and_values` renders instead of validating it."""

    def __init__(self, **data):
        super().__init__()
        CAPTURED.append(data)

    def prepare_for_flow_run(self, *args, **kwargs):
        pass


class FakeClient:
    async def read_flow(self, flow_id):
        return None


class _JsonStrMeta(type):
    def __instancecheck__(cls, obj):
        return isinstance(obj, builtins.str)


class JsonStr(metaclass=_JsonStrMeta):
    """`str` for `apply_values` that spells non-strings as compact JSON, object keys sorted."""

    def __new__(cls, value=""):
        if isinstance(value, builtins.str):
            return value
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


async def render(case, json_spelling):
    CAPTURED.clear()
    saved = {n: os.environ.get(n) for n in ENV_NAMES}
    for n in ENV_NAMES:
        os.environ.pop(n, None)
    os.environ.update(case["environ"])
    if json_spelling:
        templating.str = JsonStr
    try:
        flow_run = SimpleNamespace(
            deployment_id=uuid.uuid4(),
            flow_id=uuid.uuid4(),
            job_variables=copy.deepcopy(case["run"]),
        )
        deployment = SimpleNamespace(job_variables=copy.deepcopy(case["deployment"]))
        work_pool = SimpleNamespace(base_job_template=copy.deepcopy(case["template"]))
        await Capture.resolve_for_flow_run(
            flow_run,
            client=FakeClient(),
            work_pool=work_pool,
            worker_name="diff",
            deployment=deployment,
        )
        return {"ok": CAPTURED[-1]}
    except Exception as exc:  # Prefect raising is an outcome to compare
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        if json_spelling:
            del templating.str
        for n in ENV_NAMES:
            os.environ.pop(n, None)
            if saved[n] is not None:
                os.environ[n] = saved[n]


# ---------------------------------------------------------------------------------------------
# Case generation (seeded). Leaf strings never contain `{{`/`}}`: Prefect substitutes partial
# placeholders one after another in set order (hash-seeded), so an inserted value holding a
# placeholder would make its own result depend on PYTHONHASHSEED.

STRINGS = ["app:1", "abc", "x y", "größe", "", "a.b", "0", "ü", "-1", "True"]
KEYS = ["a", "b", "team", "owner", "0", "A", "B", "x.y", "größe"]
VARS = ["image", "args", "labels", "env", "cpu", "name", "größe", "flag", "cfg", "count"]
LOOKUPS = {
    "labels": ["labels.team", "labels.owner", "labels.a"],
    "args": ["args.0", "args.-1", "args[1]", "args.1_0", "args.7", "args.a"],
    "image": ["image.0", "image.-1", "image.0.0", "image.x"],
    "cfg": ["cfg.a", "cfg.a.b", "cfg.0", "cfg.x.y", "cfg.a[0]"],
    "env": ["env.A", "env.BASE", "env.B"],
    "count": ["count.0"],
    "größe": ["größe"],
}


def scalar(r):
    return r.choice(
        [
            r.randint(-3, 100),
            r.choice([1.5, 0.25, -2.5]),
            r.choice([True, False]),
            None,
            r.choice(STRINGS),
        ]
    )


def value(r, depth=0):
    k = r.random()
    if depth >= 2 or k < 0.5:
        return scalar(r)
    if k < 0.75:
        return [value(r, depth + 1) for _ in range(r.randint(0, 4))]
    return {r.choice(KEYS): value(r, depth + 1) for _ in range(r.randint(0, 3))}


def str_dict(r, keys=("A", "B", "BASE", "C")):
    return {r.choice(keys): r.choice(STRINGS) for _ in range(r.randint(0, 3))}


def placeholder_name(r, used):
    var = r.choice(VARS)
    used.add(var)
    if var in LOOKUPS and r.random() < 0.5:
        return r.choice(LOOKUPS[var])
    return var


def leaf(r, used):
    k = r.random()
    if k < 0.35:
        return r.choice(["{{ %s }}", "{{%s}}", "{{  %s  }}"]) % placeholder_name(r, used)
    if k < 0.6:
        return r.choice(
            ["pre-{{ %s }}-{{ %s }}", "{{ %s }}{{ %s }}", " {{ %s }}/{{%s}}", "{{ %s }} x {{ %s }}"]
        ) % (placeholder_name(r, used), placeholder_name(r, used))
    if k < 0.68:
        return r.choice(["{{ $HOME }}", "{{ $PUSHPOOL_DIFF_A }}/x", "a{{ $PUSHPOOL_DIFF_B }}"])
    if k < 0.72:
        name = placeholder_name(r, used)
        return "{{ %s }} {{ %s }}" % (name, name)
    return value(r, 1)


def tree(r, used, depth=0):
    if depth >= 3 or r.random() < 0.35:
        return leaf(r, used)
    if r.random() < 0.3:
        return [tree(r, used, depth + 1) for _ in range(r.randint(0, 4))]
    return {f"k{i}": tree(r, used, depth + 1) for i in range(r.randint(0, 4))}


def default_for(r, var):
    if var == "env":
        return r.choice([str_dict(r), {}, None, str_dict(r)] + (["BASE=0"] if r.random() < 0.1 else []))
    if var == "labels":
        return r.choice([str_dict(r, ("owner", "team", "a")), {}, None])
    if var == "args":
        return [scalar(r) for _ in range(r.randint(0, 3))]
    if var == "cfg":
        return {"a": r.choice([{"b": scalar(r)}, scalar(r), [scalar(r)]])}
    return value(r)


def random_template(r):
    used = set()
    config = {f"k{i}": tree(r, used, 1) for i in range(r.randint(1, 5))}
    env_kind = r.random()
    if env_kind < 0.4:
        config["env"] = {"A": "lit", "T": r.choice(["{{ image }}", "{{ labels.team }}", "x"])}
        if "{{" in config["env"]["T"]:
            used.add(config["env"]["T"][3:].split(" ")[0].split(".")[0])
    elif env_kind < 0.7:
        config["env"] = "{{ env }}"
        used.add("env")
    declared = set(used)
    if r.random() < 0.3:
        declared.add(r.choice(VARS))
    if r.random() < 0.3:
        declared.add("env")
    props = {}
    for var in sorted(declared):
        schema = {}
        k = r.random()
        if k < 0.5:
            schema["default"] = default_for(r, var)
        elif k < 0.6:
            schema["default"] = None
        props[var] = schema
    return {"job_configuration": config, "variables": {"type": "object", "properties": props}}


DOTTED = ["env.A", "env.B", "env.BASE", "labels.team", "labels.owner", "cfg.a.b", "cfg.c"]


def strings(tree):
    if isinstance(tree, str):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from strings(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from strings(v)


def env_in_partial(config):
    """True when some string interpolates `env` (or all values) as text."""
    for text in strings(config):
        found = templating.find_placeholders(text)
        whole = len(found) == 1 and next(iter(found)).full_match == text
        if found and not whole:
            return True
    return False


def layer(r, template, level):
    declared = list(template["variables"]["properties"])
    out = {}
    for _ in range(r.randint(0, 4)):
        k = r.random()
        if k < 0.45 and declared:
            var = r.choice(declared)
            out[var] = default_for(r, var) if r.random() < 0.7 else value(r)
        elif k < 0.85:
            key = r.choice(DOTTED)
            if key.split(".")[0] in declared or r.random() < 0.1:
                out[key] = r.choice(STRINGS) if r.random() < 0.8 else value(r)
        elif k < 0.9:
            out[r.choice(["cfg.a", "args[0]", "unknown"])] = scalar(r)
        elif declared:
            var = r.choice(declared)
            out[var] = {r.choice(KEYS): r.choice(STRINGS)}
    if "env" in out and (level == "run" or r.random() < 0.5):
        # A flow run's `env` over a deployment's object `env` goes through `dict.update`, which
        # takes a list of pairs too; pushpool refuses every non-object (docs/templates.md,
        # prefect_raises), so the run level gets objects, and `null` (Prefect raises) below.
        out["env"] = str_dict(r)
        if r.random() < 0.4 and not env_in_partial(template["job_configuration"]):
            # Entries Prefect merges into the job's `env` are rendered too. (Not when `env` is
            # interpolated somewhere: the placeholder text would be inserted, see above.)
            out["env"]["P"] = r.choice(
                ["{{ image }}", "pre-{{ labels.team }}", "{{ args.0 }}", "{{ $HOME }}", "{{ nope }}",
                 "{{ labels.api_token }}"]
            )
    if level == "run" and r.random() < 0.03:
        out["env"] = None
    return out


PROCESS = ProcessWorker.get_default_base_job_template()


def process_layer(r):
    out = {}
    for _ in range(r.randint(0, 4)):
        k = r.choice(["env", "env.X", "env.A", "labels", "labels.team", "name", "command", "stream_output", "working_dir"])
        if k == "env":
            out[k] = {r.choice(["A", "X", "Y"]): r.choice(STRINGS + [None]) for _ in range(r.randint(0, 3))}
        elif k == "labels":
            out[k] = str_dict(r, ("team", "owner"))
        elif k == "stream_output":
            out[k] = r.choice([True, False])
        else:
            out[k] = r.choice(STRINGS)
    return out


def generate(seed, n):
    r = random.Random(seed)
    for i in range(n):
        environ = {name: r.choice(["/root", "x", "ü y"]) for name in ENV_NAMES if r.random() < 0.6}
        if i % 4 == 3:
            template = copy.deepcopy(PROCESS)
            case = {"family": "process", "template": template,
                    "deployment": process_layer(r), "run": process_layer(r)}
        else:
            template = random_template(r)
            case = {"family": "random", "template": template,
                    "deployment": layer(r, template, "deployment"), "run": layer(r, template, "run")}
        case["id"] = i
        case["environ"] = environ
        yield case


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--cases", type=int, default=3000)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    assert prefect.__version__ == "3.8.8", prefect.__version__
    with open(args.out, "w", encoding="utf-8") as out:
        for case in generate(args.seed, args.cases):
            case["prefect"] = await render(case, json_spelling=False)
            case["prefect_json"] = await render(case, json_spelling=True)
            out.write(json.dumps(case, ensure_ascii=False) + "\n")
    print(f"template-diff.py: {args.cases} cases (seed {args.seed}) rendered by Prefect {prefect.__version__}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
