"""Generated documentation: the config reference and the hooks reference.

``python -m tuneforge.docs`` rewrites ``docs/config.md`` (from the pydantic schema of
:class:`tuneforge.config.RunConfig` and the ``Options`` models of the built-in task and
adapter plugins) and the hooks section of ``docs/writing-plugins.md`` (from the
docstrings in :mod:`tuneforge.hookspecs`). ``python -m tuneforge.docs --check`` exits 1
when either is stale; ``tests/test_docs.py`` runs the same check.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tuneforge import hookspecs
from tuneforge.config import RunConfig

HOOKS_BEGIN = "<!-- BEGIN GENERATED HOOKS REFERENCE (python -m tuneforge.docs) -->"
HOOKS_END = "<!-- END GENERATED HOOKS REFERENCE -->"
BUILTIN_PREFIX = "tuneforge.plugins."
#: One-line summaries of the core sections (whose fields carry no description of their own).
SECTION_SUMMARIES = {
    "model": "The pretrained model and tokenizer to start from.",
    "task": "The task plugin (`name`) and its options.",
    "data": "Where the examples come from and how they are cut.",
    "training": "Optimiser, schedule, batch sizes, precision, seed, logging.",
    "evaluation": "When to evaluate, the selection metric, early stopping.",
    "output": "The run directory, checkpoints and the exported model.",
    "adapter": "A parameter-efficient adapter plugin (`type`) and its options; null trains the full model.",
    "distributed": "DDP / DeepSpeed ZeRO settings (see docs/distributed.md).",
}


# -- config reference -------------------------------------------------------------------


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic models inside an annotation (``X``, ``X | None``, ``list[X]``, ``dict[str, X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        for model in _models_in(arg):
            if model not in found:
                found.append(model)
    return found


def type_name(annotation: Any) -> str:
    """A short, readable type: ``int | null``, ``"linear" | "cosine"``, ``list[str]``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "section"
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    if value is PydanticUndefined:
        return ""
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value, default=str)}`"


def model_table(model: type[BaseModel], prefix: str) -> tuple[list[str], list[tuple[str, type[BaseModel]]]]:
    """Markdown rows for ``model``'s fields, and the nested models to document after it."""
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        subs = _models_in(annotation)
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        if subs:
            origins = {typing.get_origin(annotation)} | {typing.get_origin(a) for a in typing.get_args(annotation)}
            key = f"{prefix}{name}" + ("[]" if list in origins else ".<name>" if dict in origins else "")
            for sub in subs:
                nested.append((key, sub))
            doc = description or SECTION_SUMMARIES.get(name) or own_doc(subs[0]).split("\n")[0]
            rows.append(f"| `{prefix}{name}` | {type_name(annotation)} | {default_text(field)} | "
                        f"{doc} See [{key}](#{_anchor(key)}). |")
        else:
            rows.append(f"| `{prefix}{name}` | {type_name(annotation)} | {default_text(field)} | {description} |")
    return rows, nested


def own_doc(model: type[BaseModel]) -> str:
    """The docstring ``model`` itself defines (not one inherited from a base section class)."""
    return inspect.cleandoc(model.__dict__.get("__doc__") or "")


def _anchor(key: str) -> str:
    return "".join(c for c in key.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def document_model(model: type[BaseModel], key: str, out: list[str], seen: dict[type[BaseModel], str]) -> None:
    out += [f"### {key}", ""]
    if model in seen:
        out += [f"The same keys as [{seen[model]}](#{_anchor(seen[model])}).", ""]
        return
    seen[model] = key
    rows, nested = model_table(model, f"{key}.")
    doc = own_doc(model)
    if doc:
        out += [doc, ""]
    out += [*rows, ""]
    for sub_key, sub in nested:
        document_model(sub, sub_key, out, seen)


def builtin_plugin_options() -> list[tuple[str, str, type[BaseModel], str]]:
    """(section, name, Options model, plugin module) of the built-in tasks and adapters."""
    from tuneforge.plugin_manager import PluginManager

    pm = PluginManager()
    pm.load_entry_points()
    pm.build_registries()
    modules = {info.name: info.module for info in pm.plugins}
    found = []
    for section, registry in (("task", pm.tasks), ("adapter", pm.adapters)):
        for entry in registry.entries():
            module = modules.get(entry.plugin, "")
            if module.startswith(BUILTIN_PREFIX):
                found.append((section, entry.name, entry.obj.Options, module))
    return found


def config_reference() -> str:
    """The text of docs/config.md."""
    out = [
        "# Configuration reference",
        "",
        "<!-- GENERATED by `python -m tuneforge.docs` from the pydantic schema in core/config/ (the meta:",
        "     and search: sections in core/meta/config.py, core/search/config.py) and the Options models of",
        "     the built-in plugins. Do not edit by hand: tests/test_docs.py fails when this file is stale. -->",
        "",
        "A run is one YAML file with the sections below. Unknown keys are errors (with a did-you-mean);",
        "every key can be overridden on the command line as `section.key=value`",
        "(`tuneforge train --config run.yaml training.lr=3e-5 data.max_length=256`), and the",
        "environment variable `TUNEFORGE_OVERRIDES` adds overrides after the command line's.",
        "Paths in `data.*` are relative to the config file; `output.dir` is relative to the current",
        "directory. `tuneforge validate --config run.yaml` checks a file without training.",
        "",
        "## Top level",
        "",
    ]
    rows, nested = model_table(RunConfig, "")
    out += [*rows, "", "## Sections", ""]
    seen: dict[type[BaseModel], str] = {}
    for key, model in nested:
        document_model(model, key, out, seen)
    out += [
        "## Plugin options",
        "",
        "`task:` and `adapter:` are open sections: besides `name`/`type`, their keys belong to the",
        "selected plugin, whose `Options` model validates them. The built-in plugins take:",
        "",
    ]
    for section, name, options, module in builtin_plugin_options():
        selector = "name" if section == "task" else "type"
        key = f"{section} ({selector}: {name})"
        out += [f"### {key}", "", f"From `{module}`.", ""]
        if not options.model_fields:
            out += ["No options.", ""]
            continue
        rows, nested = model_table(options, f"{section}.")
        out += [*rows, ""]
        for sub_key, sub in nested:
            document_model(sub, sub_key, out, seen)
    return "\n".join(out).rstrip() + "\n"


# -- hooks reference ------------------------------------------------------------------


def hookspec_functions() -> list[tuple[str, Any]]:
    """(name, function) of every hookspec, in source order."""
    specs = [(n, f) for n, f in vars(hookspecs).items()
             if n.startswith("tf_") and callable(f) and hasattr(f, f"{hookspecs.PROJECT}_spec")]
    return sorted(specs, key=lambda item: item[1].__code__.co_firstlineno)


def hooks_reference() -> str:
    """Markdown of every hook: signature, kind, and docstring."""
    out = [HOOKS_BEGIN, ""]
    for name, fn in hookspec_functions():
        params = ", ".join(inspect.signature(fn).parameters)
        kind = "composition" if name.startswith("tf_register_") or name.startswith("tf_add_") else "observer"
        firstresult = getattr(fn, f"{hookspecs.PROJECT}_spec", {}).get("firstresult")
        extra = ", firstresult" if firstresult else ""
        out += [f"### `{name}({params})`", "", f"*{kind} hook{extra}*", "", inspect.getdoc(fn) or "", ""]
    out.append(HOOKS_END)
    return "\n".join(out)


def with_hooks_reference(text: str) -> str:
    """``text`` (docs/writing-plugins.md) with its generated hooks section replaced."""
    start, end = text.find(HOOKS_BEGIN), text.find(HOOKS_END)
    if start < 0 or end < 0:
        raise ValueError(f"writing-plugins.md lacks the markers {HOOKS_BEGIN!r} ... {HOOKS_END!r}")
    return text[:start] + hooks_reference() + text[end + len(HOOKS_END):]


# -- command line ---------------------------------------------------------------------


def generated_files(docs_dir: Path) -> dict[Path, str]:
    """Path -> the content it should have."""
    plugins_doc = docs_dir / "writing-plugins.md"
    return {
        docs_dir / "config.md": config_reference(),
        plugins_doc: with_hooks_reference(plugins_doc.read_text(encoding="utf-8")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneforge.docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=Path, default=Path("docs"), help="the docs directory (default: docs)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, content in generated_files(args.docs).items():
        current = path.read_text(encoding="utf-8") if path.is_file() else ""
        if current == content:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(content, encoding="utf-8")
            print(f"wrote {path}")
    if args.check and stale:
        print("stale: " + ", ".join(map(str, stale)) + "; run `python -m tuneforge.docs`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
