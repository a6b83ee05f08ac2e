"""The docs are tested: generated pages are current, and every `tuneforge` command shown runs.

Commands are taken from fenced ```console blocks (lines starting with ``$ tuneforge``) and
```bash/```sh blocks (lines, or ``&&``-separated parts of lines, starting with ``tuneforge``,
optionally after ``VAR=value`` assignments) of README.md and docs/*.md. Each runs in-process
(``tuneforge.cli.main``), in document order, in a scratch directory per page that links the
repository's top-level files (so ``configs/...`` resolves and ``runs/`` is private), with
``TUNEFORGE_OVERRIDES`` shrinking every run to a couple of steps on a few examples.

HTML comments on the lines right above a fence steer the harness:

* ``<!-- skip-test: REASON -->``    the block is not run (reported as a skip with REASON);
* ``<!-- expect-error -->``          each command must exit 2, and every ``error:`` line the
                                     block shows must be printed (text before a ``...`` suffices);
* ``<!-- test-overrides: k=v ... -->`` extra overrides for the block's commands;
* ``<!-- test-file: NAME -->``       above any block: its text is written to NAME in the
                                     scratch directory first (a config the next commands use).

Pages that train (or evaluate, search, ...) are marked ``slow``: ``pytest -m slow tests/test_docs.py``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tuneforge.cli import main
from tuneforge.docs import generated_files

ROOT = Path(__file__).resolve().parent.parent
PAGES = [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] if p.is_file()]
#: A page with one of these commands has all its commands marked slow (they train or load a
#: real model; later commands of a page depend on earlier ones, so a page runs as a whole).
HEAVY_COMMANDS = {"train", "evaluate", "predict", "search", "meta", "export"}
TINY = ("training.max_steps=2 training.batch_size=8 training.eval_batch_size=16 data.max_length=32 "
        "data.max_train_samples=32 data.max_eval_samples=16 data.max_test_samples=16")
_NOT_LINKED = {".git", ".venv", "runs", "build", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
MARKER = re.compile(r"<!--\s*(skip-test|expect-error|test-overrides|test-file)\s*:?\s*(.*?)\s*-->")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass
class Command:
    page: Path
    line: int
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    skip: str | None = None
    expect_error: bool = False
    shown_errors: list[str] = field(default_factory=list)
    overrides: str = ""
    files: dict[str, str] = field(default_factory=dict)  # written before this command runs

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.line}:{' '.join(self.argv[:2])}"


def _tuneforge_argv(text: str) -> tuple[list[str], dict[str, str]] | None:
    """argv after ``tuneforge`` and leading VAR=value assignments, or None for other commands."""
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        return None
    env = {}
    while words and ASSIGNMENT.match(words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    if not words or words[0] != "tuneforge":
        return None
    return words[1:], env


def collect(page: Path) -> list[Command]:
    lines = page.read_text(encoding="utf-8").splitlines()
    commands: list[Command] = []
    markers: dict[str, str] = {}
    files: dict[str, str] = {}
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        match = MARKER.fullmatch(stripped)
        if match:
            markers[match.group(1)] = match.group(2)
            i += 1
            continue
        if not stripped.startswith("```"):
            if stripped:
                markers = {}
            i += 1
            continue
        lang, start = stripped[3:].strip().lower(), i + 1
        end = start
        while end < len(lines) and not lines[end].strip().startswith("```"):
            end += 1
        body = lines[start:end]
        if "test-file" in markers:
            files[markers["test-file"]] = "\n".join(body) + "\n"
        elif lang in ("console", "bash", "sh", "shell"):
            block: list[Command] = []
            j = 0
            while j < len(body):
                number, text = start + j + 1, body[j].rstrip()
                while text.endswith("\\") and j + 1 < len(body):
                    j += 1
                    text = text[:-1] + " " + body[j].strip()
                j += 1
                if lang == "console":
                    if text.startswith("$ "):
                        text = text[2:]
                    else:
                        if block and text.strip().startswith("error:"):
                            block[-1].shown_errors.append(text.strip())
                        continue
                for part in re.split(r"\s*(?:&&|;)\s*", text):
                    parsed = _tuneforge_argv(part)
                    if parsed is not None:
                        block.append(Command(page, number, parsed[0], parsed[1], markers.get("skip-test"),
                                             "expect-error" in markers, [], markers.get("test-overrides", ""),
                                             dict(files)))
                        files = {}
            commands += block
        markers = {}
        i = end + 1
    return commands


ALL = [c for page in PAGES for c in collect(page)]


def _params() -> list[pytest.param]:
    heavy = {c.page for c in ALL if c.argv and c.argv[0] in HEAVY_COMMANDS and c.skip is None}
    out = []
    for c in ALL:
        marks = [pytest.mark.slow] if c.page in heavy else []
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


@pytest.fixture(scope="module")
def sandboxes(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Path]:
    return {}


def sandbox_for(page: Path, sandboxes: dict[Path, Path], factory: pytest.TempPathFactory) -> Path:
    if page not in sandboxes:
        box = factory.mktemp(page.stem)
        for entry in ROOT.iterdir():
            if entry.name not in _NOT_LINKED and not entry.name.endswith(".egg-info"):
                (box / entry.name).symlink_to(entry)
        sandboxes[page] = box
    return sandboxes[page]


@pytest.mark.parametrize("command", _params())
def test_docs_command_runs(command: Command, sandboxes, tmp_path_factory, monkeypatch, capsys):
    box = sandbox_for(command.page, sandboxes, tmp_path_factory)
    for name, text in command.files.items():  # written even when this command is skipped
        target = box / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        target.write_text(text, encoding="utf-8")
    if command.skip is not None:
        pytest.skip(f"{command.page.name}:{command.line}: {command.skip or 'marked skip-test'}")
    monkeypatch.chdir(box)
    monkeypatch.setenv("TUNEFORGE_OVERRIDES", f"{TINY} {command.overrides}".strip())
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key, value in command.env.items():
        monkeypatch.setenv(key, value)
    try:
        code = main(list(command.argv))
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    where = f"{command.page.relative_to(ROOT)}:{command.line}: tuneforge {shlex.join(command.argv)}"
    if command.expect_error:
        assert code == 2, f"{where}: expected exit 2 (a user error), got {code}\n{out}{err}"
        for shown in command.shown_errors:
            expected = shown.split("...")[0].rstrip(" ,")
            assert expected in err, f"{where}: the doc shows\n  {shown}\nbut the command printed\n{err}"
    else:
        assert code == 0, f"{where}: exit {code}\n--- stdout\n{out}\n--- stderr\n{err}"


def test_the_harness_finds_commands_and_counts_skips():
    by_page: dict[str, int] = {}
    for c in ALL:
        by_page[c.page.name] = by_page.get(c.page.name, 0) + 1
    assert by_page.get("quickstart.md", 0) >= 4, by_page
    skipped = [c.id for c in ALL if c.skip is not None]
    print(f"{len(ALL)} documented tuneforge commands, {len(skipped)} marked skip-test: {skipped}")
    assert len(skipped) < len(ALL) / 2, "most documented commands must run"


def test_collect_understands_the_markers(tmp_path):
    page = tmp_path / "x.md"
    page.write_text(
        "<!-- test-file: a.yaml -->\n```yaml\nx: 1\n```\n\n"
        "```console\n$ tuneforge validate --config a.yaml  # check\nok\n```\n"
        "<!-- skip-test: needs GPU -->\n```bash\nFOO=1 tuneforge train --config a.yaml \\\n  training.lr=1\n```\n"
        "<!-- expect-error -->\n```console\n$ tuneforge train --config b.yaml\nerror: config file 'b.yaml' ...\n```\n"
        "```bash\npip install -e . && tuneforge plugins\ntorchrun launch/run.py\n```\n"
    )
    cmds = collect(page)
    assert [c.argv for c in cmds] == [
        ["validate", "--config", "a.yaml"],
        ["train", "--config", "a.yaml", "training.lr=1"],
        ["train", "--config", "b.yaml"],
        ["plugins"],
    ]
    assert cmds[0].files == {"a.yaml": "x: 1\n"} and cmds[1].files == {}
    assert cmds[1].skip == "needs GPU" and cmds[1].env == {"FOO": "1"}
    assert cmds[2].expect_error and cmds[2].shown_errors == ["error: config file 'b.yaml' ..."]
    assert cmds[3].skip is None and not cmds[3].expect_error


def test_generated_docs_are_current():
    stale = [str(path.relative_to(ROOT)) for path, content in generated_files(ROOT / "docs").items()
             if not path.is_file() or path.read_text(encoding="utf-8") != content]
    assert not stale, f"{', '.join(stale)} out of date with the code: run `python -m tuneforge.docs` and commit"


def test_relative_links_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = (page.parent / target).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links to missing {target}"


def test_architecture_page_lists_every_core_module() -> None:
    """docs/architecture.md's module table names every module of core/ (a package's row names
    each of its modules), so the layout reference cannot drift from the tree."""
    root = Path(__file__).resolve().parents[1]
    rows = {}
    for line in (root / "docs" / "architecture.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("| `"):
            name = line.split("`")[1]
            rows[name] = line
    missing = []
    for path in sorted((root / "core").rglob("*.py")):
        rel = path.relative_to(root / "core")
        if len(rel.parts) == 1:
            if rel.name not in rows:
                missing.append(str(rel))
        else:
            row = rows.get(f"{rel.parts[0]}/")
            if row is None or (path.stem != "__init__" and path.stem not in row):
                missing.append(str(rel))
    assert not missing, f"docs/architecture.md does not list: {', '.join(missing)}"
