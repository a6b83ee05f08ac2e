"""Property-based: malformed configs, overrides and data files always end in a
TuneforgeError with a message (CLI: exit 2, ``error:`` lines), never a traceback.

Configs go through ``tuneforge validate`` (load, override, schema, plugins, files);
data files through ``tuneforge train`` (which must fail before any model is built).
Each property test counts its cases and fails when it tried fewer than it declares
(:func:`tries_at_least`); ``test_report_case_counts`` records the totals.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import json
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneforge import cli
from tuneforge.config import RunConfig

pytestmark = pytest.mark.filterwarnings("ignore")

SETTINGS = settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
_counter = itertools.count()
CONFIG_CASES: list[Any] = []
DATA_CASES: list[Any] = []
#: the floor of generated cases the module promises (printed by the reliability conftest)
FLOORS = {"config": 450, "data": 65}
#: property test -> (the case list it fills, the cases it must try)
MINIMUMS: dict[str, tuple[str, int]] = {}
F = TypeVar("F", bound=Callable[..., Any])


def tries_at_least(minimum: int, kind: str) -> Callable[[F], F]:
    """The decorated property test fails unless it generated ``minimum`` cases into the
    ``kind`` case list (hypothesis stops early when a strategy runs out of distinct examples)."""
    cases = {"config": CONFIG_CASES, "data": DATA_CASES}[kind]

    def decorate(test: F) -> F:
        MINIMUMS[test.__name__] = (kind, minimum)

        @functools.wraps(test)
        def run(*args: Any, **kwargs: Any) -> None:
            before = len(cases)
            test(*args, **kwargs)
            tried = len(cases) - before
            assert tried >= minimum, f"{test.__name__} generated {tried} cases, fewer than its {minimum}"

        return run  # type: ignore[return-value]

    return decorate


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Run the CLI in-process; any exception other than a handled TuneforgeError fails the test."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, err.getvalue()


def assert_user_error(code: int, stderr: str, case: Any) -> None:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert code == cli.EXIT_USER_ERROR, f"case {case!r} did not fail (exit {code}); stderr:\n{stderr}"
    assert lines and len(lines[0]) > len("error: ") + 10, (case, stderr)
    assert "Traceback" not in stderr, (case, stderr)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-inputs")


@pytest.fixture(scope="module")
def base_config(tiny_bert: str, tiny_classification_data: dict[str, str], workdir: Path) -> dict[str, Any]:
    return {
        "model": {"name_or_path": tiny_bert},
        "task": {"name": "classification"},
        "data": {**tiny_classification_data, "max_length": 32},
        "training": {"max_steps": 2, "batch_size": 8, "seed": 0},
        "evaluation": {"strategy": "no"},
        "output": {"dir": str(workdir / "run"), "export": False},
    }


def write_yaml(workdir: Path, raw: Any) -> Path:
    path = workdir / f"case-{next(_counter)}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


# -- config strategies -------------------------------------------------------------------

SECTIONS = ("model", "data", "training", "evaluation", "output", "distributed", "task")
name_text = st.text(string.ascii_lowercase + "_", min_size=1, max_size=12)
junk = st.one_of(st.lists(st.integers(), min_size=1, max_size=3), st.dictionaries(name_text, st.integers(), min_size=1,
                                                                                   max_size=2))
non_numeric_text = st.text(string.ascii_letters, min_size=1, max_size=8).filter(
    lambda s: s.lower() not in {"nan", "inf", "infinity", "e", "true", "false", "yes", "no", "on", "off", "y", "n",
                                "null", "none"})


def fields_of(section: str) -> set[str]:
    if section == "task":
        return {"name", "text_field", "text_pair_field", "label_field", "labels"}
    return set(RunConfig.model_fields[section].annotation.model_fields)  # type: ignore[union-attr]


@st.composite
def unknown_key(draw: st.DrawFn) -> tuple[str, str, Any]:
    section = draw(st.sampled_from((*SECTIONS, "")))
    known = fields_of(section) if section else set(RunConfig.model_fields)
    key = draw(name_text.filter(lambda k: k not in known))
    return section, key, draw(st.one_of(st.integers(), name_text))


INT_FIELDS = [("training", "batch_size"), ("training", "max_steps"), ("training", "seed"), ("data", "max_length"),
              ("output", "keep_last"), ("training", "gradient_accumulation_steps"), ("training", "warmup_steps")]
FLOAT_FIELDS = [("training", "lr"), ("training", "weight_decay"), ("training", "warmup_ratio"), ("training", "epochs"),
                ("training", "max_grad_norm"), ("data", "validation_fraction")]
BOOL_FIELDS = [("output", "overwrite"), ("output", "export"), ("training", "group_by_length"),
               ("model", "trust_remote_code")]
CHOICE_FIELDS = [("training", "scheduler"), ("training", "mixed_precision"), ("training", "nan_policy"),
                 ("evaluation", "strategy"), ("distributed", "strategy"), ("model", "dtype")]


@st.composite
def wrong_type(draw: st.DrawFn) -> tuple[str, str, Any]:
    kind = draw(st.sampled_from(("int", "float", "bool", "choice")))
    if kind == "int":
        section, key = draw(st.sampled_from(INT_FIELDS))
        value = draw(st.one_of(junk, non_numeric_text, st.floats(0.1, 0.9).map(lambda f: 7 + f)))
    elif kind == "float":
        section, key = draw(st.sampled_from(FLOAT_FIELDS))
        value = draw(st.one_of(junk, non_numeric_text))
    elif kind == "bool":
        section, key = draw(st.sampled_from(BOOL_FIELDS))
        value = draw(st.one_of(junk, non_numeric_text, st.integers(2, 99)))
    else:
        section, key = draw(st.sampled_from(CHOICE_FIELDS))
        value = draw(st.one_of(junk, name_text.map(lambda s: s + "_x"), st.integers()))
    return section, key, value


OUT_OF_RANGE = {
    ("training", "batch_size"): st.integers(-100, 0),
    ("training", "lr"): st.one_of(st.floats(-10, 0), st.floats(10, 1e6)),
    ("training", "epochs"): st.floats(-5, 0),
    ("training", "warmup_ratio"): st.one_of(st.floats(-1, -1e-6), st.floats(1, 10)),
    ("training", "weight_decay"): st.one_of(st.floats(-1, -1e-6), st.floats(1.01, 10)),
    ("training", "betas"): st.tuples(st.floats(1, 5), st.floats(0, 0.99)).map(list),
    ("training", "seed"): st.integers(-1000, -1),
    ("training", "max_grad_norm"): st.floats(-5, 0),
    ("training", "gradient_accumulation_steps"): st.integers(-5, 0),
    ("data", "max_length"): st.one_of(st.integers(-5, 7), st.integers(1_000_001, 10**9)),
    ("data", "validation_fraction"): st.one_of(st.floats(-1, 0), st.floats(1, 3)),
    ("output", "keep_last"): st.integers(-3, 0),
    ("evaluation", "every_n_steps"): st.integers(-3, 0),
    ("training", "max_steps"): st.integers(-3, -1),  # 0: score the untrained model (few-shot baselines)
}


@st.composite
def out_of_range(draw: st.DrawFn) -> tuple[str, str, Any]:
    section, key = draw(st.sampled_from(sorted(OUT_OF_RANGE)))
    return section, key, draw(OUT_OF_RANGE[(section, key)])


BAD_OVERRIDES = st.one_of(
    name_text,  # no '='
    st.just("=1"),
    st.sampled_from(["training..lr=1", ".training=1", "training.=2", "training.lr=[1,", "training.lr={a: b",
                     "training.batch_size.x=1", "model.name_or_path.sub=x", "training.lr=abc",
                     "training.lrr=1e-4", "trainig.lr=1e-4", "evaluation.strategy=sometimes",
                     "task.name=no-such-task", "trackers=[no-such-tracker]", "data.train=./missing-file.csv",
                     "training.batch_size=-3", "plugins=[no_such_plugin_module]", "resume=/no/such/checkpoint",
                     "evaluation.strategy=steps", "distributed.deepspeed_config=./missing.json"]),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from([f"{s}.{f}" for s, f in INT_FIELDS]), non_numeric_text),
)


def put(raw: dict[str, Any], section: str, key: str, value: Any) -> dict[str, Any]:
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    if section:
        raw.setdefault(section, {})[key] = value
    else:
        raw[key] = value
    return raw


def test_valid_base_config_passes(base_config: dict[str, Any], workdir: Path) -> None:
    """The control: without a mutation the same path succeeds."""
    code, err = run_cli(["validate", "--config", str(write_yaml(workdir, base_config))])
    assert code == 0, err


@tries_at_least(280, "config")
@settings(SETTINGS, max_examples=300)
@given(st.one_of(unknown_key(), wrong_type(), out_of_range()))
def test_malformed_config_values(base_config: dict[str, Any], workdir: Path, mutation: tuple[str, str, Any]) -> None:
    CONFIG_CASES.append(mutation)
    section, key, value = mutation
    path = write_yaml(workdir, put(base_config, section, key, value))
    assert_user_error(*run_cli(["validate", "--config", str(path)]), mutation)


@tries_at_least(90, "config")
@settings(SETTINGS, max_examples=100)
@given(st.lists(BAD_OVERRIDES, min_size=1, max_size=3))
def test_bad_overrides(base_config: dict[str, Any], workdir: Path, overrides: list[str]) -> None:
    CONFIG_CASES.append(overrides)
    path = write_yaml(workdir, base_config)
    assert_user_error(*run_cli(["validate", "--config", str(path), *overrides]), overrides)


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), name_text)
yaml_trees = st.recursive(yaml_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                st.dictionaries(name_text, inner, max_size=3)),
                          max_leaves=8)


@tries_at_least(90, "config")
@settings(SETTINGS, max_examples=100)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200), yaml_trees.map(lambda t: yaml.safe_dump(t))))
def test_garbage_config_files(workdir: Path, content: bytes | str) -> None:
    CONFIG_CASES.append(content)
    path = workdir / f"garbage-{next(_counter)}.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    assert_user_error(*run_cli(["validate", "--config", str(path)]), content)


def test_unsafe_yaml_tag_is_rejected_not_executed(workdir: Path) -> None:
    marker = workdir / "pwned"
    path = workdir / "evil.yaml"
    path.write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\ntask: {{name: classification}}\n")
    assert_user_error(*run_cli(["validate", "--config", str(path)]), "python tag")
    assert not marker.exists()


# -- data files --------------------------------------------------------------------------

cell = st.text(string.ascii_letters + string.digits + " ", max_size=12)


@st.composite
def bad_csv(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(("bytes", "missing_column", "ragged", "empty", "one_label", "header_only")))
    if kind == "bytes":
        data = draw(st.binary(min_size=0, max_size=300))
        header = data.split(b"\n", 1)[0]
        if b"text" in header and b"label" in header:
            data = b"\xff" + data
        return "csv", data
    if kind == "missing_column":
        cols = draw(st.lists(name_text.filter(lambda c: c != "text"), min_size=1, max_size=3, unique=True))
        rows = draw(st.lists(st.lists(cell, min_size=len(cols), max_size=len(cols)), min_size=1, max_size=5))
        body = "\n".join(",".join(r) for r in [cols, *rows])
        return "csv", body.encode()
    if kind == "ragged":
        n_rows = draw(st.integers(1, 5))
        bad_row = draw(st.sampled_from(["only-text", "a,pos,extra", "x,pos,y,z"]))
        rows = ["this movie is great,pos"] * n_rows + [bad_row]
        return "csv", ("text,label\n" + "\n".join(rows)).encode()
    if kind == "empty":
        return "csv", b""
    if kind == "header_only":
        return "csv", b"text,label\n"
    label = draw(name_text)
    rows = draw(st.lists(cell.filter(lambda s: "," not in s), min_size=1, max_size=6))
    return "csv", ("text,label\n" + "".join(f"{t},{label}\n" for t in rows)).encode()


@st.composite
def bad_jsonl(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(("not_json", "not_object", "missing_field", "null_field")))
    good = '{"text": "this film is good", "label": "pos"}\n{"text": "this film is bad", "label": "neg"}\n'
    if kind == "not_json":
        line = draw(st.text(string.printable, min_size=1, max_size=40).filter(lambda s: s.strip() and s[0] != "{"))
        return "jsonl", (good + line.replace("\n", " ") + "\n").encode()
    if kind == "not_object":
        value = draw(st.one_of(st.integers(), st.lists(st.integers(), max_size=3), name_text.map(lambda s: f'"{s}"')))
        return "jsonl", (good + str(value).replace("'", '"') + "\n").encode()
    field = draw(st.sampled_from(("text", "label")))
    if kind == "missing_field":
        return "jsonl", (good + ('{"label": "pos"}' if field == "text" else '{"text": "x"}') + "\n").encode()
    return "jsonl", (good + f'{{"text": "x", "label": "pos", "{field}": null}}\n').encode()


@st.composite
def unknown_label_validation(draw: st.DrawFn) -> tuple[str, bytes]:
    label = draw(name_text.filter(lambda s: s not in {"pos", "neg"}))
    return "validation-csv", f"text,label\nthis film is good,pos\nthis film is odd,{label}\n".encode()


@tries_at_least(38, "data")
@settings(SETTINGS, max_examples=40)
@given(st.one_of(bad_csv(), bad_jsonl(), unknown_label_validation()))
def test_malformed_data_files(base_config: dict[str, Any], workdir: Path, case: tuple[str, bytes]) -> None:
    DATA_CASES.append(case)
    kind, content = case
    i = next(_counter)
    raw = put(base_config, "output", "dir", str(workdir / f"data-run-{i}"))
    suffix = "jsonl" if kind == "jsonl" else "csv"
    path = workdir / f"data-{i}.{suffix}"
    path.write_bytes(content)
    raw["data"] = {**raw["data"], ("validation" if kind == "validation-csv" else "train"): str(path)}
    if kind == "validation-csv":
        raw["evaluation"] = {"strategy": "epoch"}
    assert_user_error(*run_cli(["train", "--config", str(write_yaml(workdir, raw))]), case)


@st.composite
def bad_task_data(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """Malformed files of the other built-in tasks: (task, suffix, content)."""
    task = draw(st.sampled_from(("ner", "qa", "summarization")))
    if task == "ner":
        kind = draw(st.sampled_from(("bad_prefix", "one_column", "mixed", "bad_jsonl")))
        good = "EU B-ORG\nrejects O\nGerman B-MISC\n\n"
        if kind == "bad_prefix":
            tag = draw(st.sampled_from(("X-PER", "B_PER", "PER-B", "b-per", "B-")))
            return task, "conll", (good + f"Peter {tag}\nsaid O\n").encode()
        if kind == "one_column":
            return task, "conll", (good + draw(name_text) + "\n").encode()
        if kind == "mixed":  # E-/S- (BIOES) in a file declared iob2 is checked below via tag_scheme
            return task, "conll-iob2", (good + "Peter S-PER\nsaid O\n").encode()
        n = draw(st.integers(0, 2))
        return task, "jsonl", (json.dumps({"tokens": ["a", "b", "c"], "tags": ["O"] * n}) + "\n").encode()
    if task == "qa":
        kind = draw(st.sampled_from(("no_data", "no_question", "bad_start", "not_json")))
        qa = {"id": "q1", "question": "who?", "answers": [{"text": "Ann", "answer_start": 0}]}
        if kind == "no_data":
            return task, "json", json.dumps({"version": "1.1"}).encode()
        if kind == "no_question":
            del qa["question"]
        if kind == "bad_start":
            qa["answers"] = [{"text": "Ann", "answer_start": draw(st.sampled_from(("zero", None, -5, 10_000)))}]
        if kind == "not_json":
            return task, "json", b'{"data": [' + draw(st.binary(max_size=20)).replace(b"]", b"")
        doc = {"data": [{"title": "t", "paragraphs": [{"context": "Ann met Bob.", "qas": [qa]}]}]}
        return task, "json", json.dumps(doc).encode()
    kind = draw(st.sampled_from(("no_source", "empty_refs", "non_string", "empty_source")))
    record = {"source": ["a first sentence .", "a second one ."], "target": ["a summary"]}
    if kind == "no_source":
        del record["source"]
    elif kind == "empty_refs":
        record["target"] = []
    elif kind == "non_string":
        record["target"] = [draw(st.one_of(st.integers(), st.none(), st.lists(st.integers(), max_size=2)))]
    else:
        record["source"] = draw(st.sampled_from(("", [], "   ")))
    good = json.dumps({"source": "this is fine .", "target": "fine"})
    return task, "jsonl", (good + "\n" + json.dumps(record) + "\n").encode()


@tries_at_least(28, "data")
@settings(SETTINGS, max_examples=30)
@given(bad_task_data())
def test_malformed_data_of_every_task(base_config: dict[str, Any], workdir: Path, case: tuple[str, str, bytes]) -> None:
    DATA_CASES.append(case)
    task, suffix, content = case
    i = next(_counter)
    raw = put(base_config, "output", "dir", str(workdir / f"task-run-{i}"))
    path = workdir / f"task-data-{i}.{suffix.split('-')[0]}"
    path.write_bytes(content)
    raw["task"] = {"name": task, **({"tag_scheme": "iob2"} if suffix == "conll-iob2" else {})}
    raw["data"] = {"train": str(path), "max_length": 32}
    assert_user_error(*run_cli(["train", "--config", str(write_yaml(workdir, raw))]), case)


def test_missing_model_directory_is_a_user_error(base_config: dict[str, Any], workdir: Path) -> None:
    raw = put(base_config, "model", "name_or_path", str(workdir / "no-such-model"))
    DATA_CASES.append("missing model dir")
    assert_user_error(*run_cli(["train", "--config", str(write_yaml(workdir, raw))]), "missing model dir")


def test_report_case_counts(record_property: Any) -> None:
    """Runs last in this module: records the number of generated cases (read by the report).
    Each property test checks its own count; here, that every one declares a minimum and that
    the minimums add up to the module's floors (also when this test runs alone)."""
    record_property("config_cases", len(CONFIG_CASES))
    record_property("data_cases", len(DATA_CASES))
    print(f"\nbad-input cases tried: {len(CONFIG_CASES)} config/override/file, {len(DATA_CASES)} data")
    property_tests = {name for name, fn in globals().items() if name.startswith("test_") and hasattr(fn, "hypothesis")}
    assert property_tests == set(MINIMUMS), "decorate every property test with tries_at_least"
    for kind, floor in FLOORS.items():
        declared = sum(minimum for k, minimum in MINIMUMS.values() if k == kind)
        assert declared >= floor, f"the {kind} property tests promise {declared} cases, fewer than {floor}"
