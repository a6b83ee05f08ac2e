"""The relation-extraction example package: a task plugin shipped outside tuneforge.

The package is installed the way its README says, ``pip install -e`` (of a copy, into a
directory of its own: no network, the environment's site-packages are left alone), and then
found through its ``tuneforge.plugins`` entry point: by a fresh plugin manager, by the
package's own tests (``examples/tuneforge-relation-extraction/tests``, run by pytest with
tuneforge's fixtures), and by the real CLI. Unit tests import its source directly.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tuneforge.config import validate
from tuneforge.errors import DataError

PACKAGE = Path(__file__).resolve().parents[1] / "examples" / "tuneforge-relation-extraction"
DATA = PACKAGE / "data"
#: ``python -c`` prefix that activates an install directory as a site dir (its .pth files run)
WITH_SITE = "import site, sys; site.addsitedir(sys.argv.pop(1)); "

pytestmark = pytest.mark.usefixtures("tf_single_thread")


@pytest.fixture(scope="module")
def re_plugin():
    sys.path.insert(0, str(PACKAGE / "src"))
    try:
        import tuneforge_relation_extraction.plugin as plugin

        yield plugin
    finally:
        sys.path.remove(str(PACKAGE / "src"))


@dataclass(frozen=True)
class Installed:
    site: Path  # the install directory: the dist-info (entry points) and the editable .pth file
    source: Path  # the copy of the package that the editable install points at


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """``pip install -e`` of a copy of the package (setuptools writes *.egg-info beside the sources)
    into a fresh directory; ``site.addsitedir(installed.site)`` puts it on the path."""
    target, source = tmp_path_factory.mktemp("re-site"), tmp_path_factory.mktemp("re-src") / "pkg"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), "--editable", str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list(target.glob("tuneforge_relation_extraction-*.dist-info/entry_points.txt"))
    assert list(target.glob("__editable__*.pth"))
    return Installed(target, source)


def python(code: str, installed: Installed, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -c code args...`` with the install directory active."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TUNEFORGE_LOAD_PLUGINS", None)
    return subprocess.run([sys.executable, "-c", WITH_SITE + code, str(installed.site), *args],
                          capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def cli(args: list[str], installed: Installed, cwd: Path) -> subprocess.CompletedProcess[str]:
    return python("from tuneforge.cli import main; sys.exit(main())", installed, args, cwd)


def make_task(plugin, model_dir: str, **options):
    cfg = validate({"model": {"name_or_path": model_dir}, "task": {"name": "relation_extraction", **options},
                    "data": {"train": str(DATA / "train.jsonl"), "validation": "dev.jsonl", "max_length": 64}})
    return plugin.RelationExtractionTask(plugin.RelationExtractionTask.parse_options(cfg.task.options()), cfg)


# -- unit tests of the plugin ---------------------------------------------------------------


def test_insert_markers(re_plugin):
    m = ("[E1]", "[/E1]", "[E2]", "[/E2]")
    toks = ["Ada", "Lovelace", "works", "for", "Acme", "."]
    assert re_plugin.insert_markers(toks, (0, 2), (4, 5), m) == \
        ["[E1]", "Ada", "Lovelace", "[/E1]", "works", "for", "[E2]", "Acme", "[/E2]", "."]
    # tail before head, adjacent spans: the head's end marker closes before the next opens
    assert re_plugin.insert_markers(["a", "b"], (1, 2), (0, 1), m) == ["[E2]", "a", "[/E2]", "[E1]", "b", "[/E1]"]
    assert re_plugin.insert_markers(["a", "b"], (0, 1), (1, 2), m) == ["[E1]", "a", "[/E1]", "[E2]", "b", "[/E2]"]


def test_micro_f1_excludes_no_relation(re_plugin):
    # labels: 0 = no_relation. gold [1, 2, 0, 0, 1], pred [1, 0, 2, 0, 2]
    # tp = 1 (first); predicted positives = 3; gold positives = 3 -> P = R = F1 = 1/3
    m = re_plugin.relation_micro_f1(np.array([1, 0, 2, 0, 2]), np.array([1, 2, 0, 0, 1]), 0)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1 / 3)
    assert m["micro_f1"] == pytest.approx(1 / 3) and m["accuracy"] == pytest.approx(2 / 5)
    # always predicting no_relation scores 0 although accuracy is high
    m = re_plugin.relation_micro_f1(np.zeros(10, dtype=int), np.array([0] * 9 + [1]), 0)
    assert m["micro_f1"] == 0.0 and m["accuracy"] == pytest.approx(0.9)


def test_encode_adds_markers_and_model_resizes(re_plugin, tiny_bert):
    task = make_task(re_plugin, tiny_bert)
    task.prepare([json.loads(x) for x in (DATA / "train.jsonl").read_text().splitlines()])
    assert task.labels == ["founded_by", "lives_in", "no_relation", "works_for"] and task.no_relation_id == 2
    tok = task.load_tokenizer()
    marker_ids = tok.convert_tokens_to_ids(["[E1]", "[/E1]", "[E2]", "[/E2]"])
    record = {"tokens": ["Ada", "works", "for", "Acme"], "head": [0, 1], "tail": [3, 4], "relation": "works_for"}
    [feat] = task.encode([record], tok, "validation")
    assert tok.convert_ids_to_tokens(feat["input_ids"])[:3] == ["[CLS]", "[E1]", "a"]
    assert all(i in feat["input_ids"] for i in marker_ids) and feat["labels"] == 3
    model = task.build_model(tok)
    assert model.get_input_embeddings().num_embeddings == len(tok) == max(marker_ids) + 1


def test_long_sentence_is_cropped_around_the_entities(re_plugin, tiny_bert, caplog):
    task = make_task(re_plugin, tiny_bert, labels=["no_relation", "works_for"])
    tok = task.load_tokenizer()
    tokens = ["good"] * 80 + ["Ada", "works", "for", "Acme"] + ["bad"] * 80
    record = {"tokens": tokens, "head": [80, 81], "tail": [83, 84], "relation": "works_for"}
    with caplog.at_level("INFO"):
        [feat] = task.encode([record], tok, "train")
    assert len(feat["input_ids"]) <= 64
    assert all(i in feat["input_ids"] for i in tok.convert_tokens_to_ids(["[E1]", "[/E1]", "[E2]", "[/E2]"]))
    assert "1 of 1 sentences cropped around their entities" in caplog.text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"head": [0, 9]}, "dev.jsonl, record 2: field 'head' span [0, 9] is outside the 4 tokens"),
        ({"tail": [2, 2]}, "dev.jsonl, record 2: field 'tail' span [2, 2] is outside the 4 tokens or empty"),
        ({"tail": "Acme"}, "dev.jsonl, record 2: field 'tail' must be a [start, end) pair"),
        ({"head": [0, 2], "tail": [1, 3]}, "dev.jsonl, record 2: head [0, 2] and tail [1, 3] overlap"),
        ({"relation": "born_in"}, "dev.jsonl, record 2: field 'relation': relation 'born_in' is not one of the training"),
        ({"tokens": "Ada works"}, "dev.jsonl, record 2: field 'tokens' must be a list of strings"),
    ],
)
def test_bad_records_name_file_record_and_field(re_plugin, tiny_bert, change, message):
    task = make_task(re_plugin, tiny_bert, labels=["no_relation", "works_for"])
    tok = task.load_tokenizer()
    good = {"tokens": ["Ada", "works", "for", "Acme"], "head": [0, 1], "tail": [3, 4], "relation": "works_for"}
    with pytest.raises(DataError) as err:
        task.encode([good, {**good, **change}], tok, "validation")
    assert message in str(err.value)


# -- the installed package ----------------------------------------------------------------------


def tiny_config(tiny_bert: str, run_dir: Path) -> dict:
    return {
        "model": {"name_or_path": tiny_bert},
        "task": {"name": "relation_extraction"},
        "data": {"train": str(DATA / "train.jsonl"), "validation": str(DATA / "dev.jsonl"),
                 "test": str(DATA / "test.jsonl"), "max_length": 48},
        "training": {"max_steps": 20, "batch_size": 16, "lr": 3e-3, "seed": 0, "log_every_n_steps": 1},
        "evaluation": {"strategy": "steps", "every_n_steps": 20},
        "output": {"dir": str(run_dir), "keep_last": 1},
    }


def check_run(run_dir: Path) -> None:
    results = json.loads((run_dir / "results.json").read_text())
    assert results["metric"] == "micro_f1" and 0.0 <= results["test"]["micro_f1"] <= 1.0
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [x["loss"] for x in lines if x["split"] == "train"]
    assert np.mean(train[-3:]) < np.mean(train[:3])
    report = json.loads((run_dir / "reports" / "test_relation_report.json").read_text())
    assert set(report["per_relation"]) == {"founded_by", "lives_in", "works_for"}
    state = json.loads((run_dir / "model" / "task_state.json").read_text())
    assert state["labels"] == ["founded_by", "lives_in", "no_relation", "works_for"]
    assert "[E1]" in (run_dir / "model" / "tokenizer.json").read_text()


def test_installed_package_is_found_through_its_entry_point(installed, tiny_bert, tmp_path, monkeypatch):
    """After the install, a fresh plugin manager discovers the task the way the CLI does."""
    from tuneforge.plugin_manager import PluginManager
    from tuneforge.run import train

    before = list(sys.path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # restored afterwards
    site.addsitedir(str(installed.site))
    sys.path[:] = [p for p in sys.path if p not in before] + before  # ahead of the source tree (re_plugin)
    monkeypatch.delenv("TUNEFORGE_LOAD_PLUGINS", raising=False)
    for name in [m for m in sys.modules if m.startswith("tuneforge_relation_extraction")]:
        monkeypatch.delitem(sys.modules, name)  # import the installed copy, not the source tree
    pm = PluginManager.default().build_registries()
    task_cls = pm.tasks.get("relation_extraction")
    assert Path(sys.modules[task_cls.__module__].__file__).is_relative_to(installed.source)
    assert pm.tasks.entry("relation_extraction").plugin == "relation_extraction"
    train(validate(tiny_config(tiny_bert, tmp_path / "run")), pm)
    check_run(tmp_path / "run")


def test_the_packages_own_tests_pass_after_pip_install_e(installed, tmp_path):
    """Its README's recipe: ``pip install -e .``, then ``pytest tests/`` on tuneforge's fixtures
    (``tf_run(..., plugins=[plugin])`` with the entry point installed as well)."""
    proc = python("import pytest; sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', sys.argv[1]]))",
                  installed, [str(installed.source / "tests")], installed.source)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


@pytest.mark.slow
def test_installed_package_trains_through_the_cli(installed, tiny_bert, tmp_path):
    listing = cli(["plugins"], installed, tmp_path)
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert "relation_extraction" in listing.stdout and "tuneforge-relation-extraction" in listing.stdout
    (tmp_path / "re.yaml").write_text(json.dumps(tiny_config(tiny_bert, tmp_path / "run")), encoding="utf-8")
    run = cli(["train", "--config", "re.yaml"], installed, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    check_run(tmp_path / "run")
