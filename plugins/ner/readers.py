"""Reading CoNLL and jsonl token files into sentences with IOB2 tags and line numbers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tuneforge.data import iter_jsonl
from tuneforge.errors import DataError
from tuneforge.plugins.ner.tags import TagError, detect_scheme, parse_tag, to_iob2
from tuneforge.tasks import TaskOptions

log = logging.getLogger(__name__)


class NEROptions(TaskOptions):
    token_column: int = Field(0, description="CoNLL: column of the token (0-based; negative counts from the end).")
    tag_column: int = Field(-1, description="CoNLL: column of the tag (default: the last column).")
    column_separator: str | None = Field(None, description="CoNLL: column separator; default any whitespace.")
    docstart: str = Field("-DOCSTART-", description="CoNLL: token of document-boundary lines, which are skipped.")
    tokens_field: str = Field("tokens", description="jsonl: field holding the list of tokens.")
    tags_field: str = Field("tags", description="jsonl: field holding the list of tags.")
    tag_scheme: Literal["auto", "iob1", "iob2", "bioes"] = Field(
        "auto", description="Scheme of the files' tags; auto: bioes if E-/S- occur, iob1 if an I- starts an entity."
    )
    label_scheme: Literal["iob2", "bioes"] = Field("iob2", description="Tags the model learns and predicts.")
    entity_types: list[str] | None = Field(None, description="Entity types in label order; default: sorted training types.")
    stride: int = Field(16, ge=0, description="Sub-tokens of overlap between the windows of a too-long sentence.")
    seqeval_mode: Literal["conlleval", "strict"] = Field(
        "conlleval",
        description="conlleval: seqeval's default (CoNLL-eval compatible; an I- after O starts an entity); "
        "strict: only entities well-formed in label_scheme count.",
    )


def read_conll(path: Path, options: NEROptions, with_tags: bool = True) -> list[dict[str, Any]]:
    """Sentences of a CoNLL file as ``{"tokens", "raw_tags", "lines"}`` (tags parsed, not converted)."""
    sentences: list[dict[str, Any]] = []
    tokens: list[str] = []
    tags: list[tuple[str, str]] = []
    lines: list[int] = []

    def flush() -> None:
        if tokens:
            sentences.append({"tokens": list(tokens), "raw_tags": list(tags), "lines": list(lines)})
            tokens.clear()
            tags.clear()
            lines.clear()

    sep = options.column_separator
    with path.open(encoding="utf-8") as fh:
        for ln, raw in enumerate(fh, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                flush()
                continue
            cols = line.split(sep) if sep else line.split()
            if cols[0] == options.docstart:
                flush()
                continue
            needed = [options.token_column] + ([options.tag_column] if with_tags else [])
            if any(not -len(cols) <= c < len(cols) for c in needed):
                raise DataError(
                    f"{path}, line {ln}: expected a token in column {options.token_column}"
                    + (f" and a tag in column {options.tag_column}" if with_tags else "")
                    + f", found {len(cols)} column(s): {line!r}; set task.token_column/tag_column/column_separator"
                )
            if with_tags:
                tag = cols[options.tag_column].strip()
                parsed = parse_tag(tag)
                if parsed is None:
                    raise DataError(f"{path}, line {ln}: '{tag}' is not a tag (expected O or B-/I-/E-/S-<type>)")
                tags.append(parsed)
            tokens.append(cols[options.token_column].strip())
            lines.append(ln)
    flush()
    return sentences


def read_token_jsonl(path: Path, options: NEROptions, with_tags: bool = True) -> list[dict[str, Any]]:
    """Records of a jsonl file with token and tag lists, keeping line numbers."""
    sentences = []
    fields = [options.tokens_field] + ([options.tags_field] if with_tags else [])
    for ln, obj in iter_jsonl(path):
        for f in fields:
            value = obj.get(f)
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise DataError(f"{path}, line {ln}: field '{f}' must be a list of strings (fields present: "
                                f"{', '.join(sorted(obj)) or 'none'})")
        tokens = obj[options.tokens_field]
        if not tokens:
            raise DataError(f"{path}, line {ln}: '{options.tokens_field}' is empty")
        parsed: list[tuple[str, str]] = []
        if with_tags:
            tags = obj[options.tags_field]
            if len(tags) != len(tokens):
                raise DataError(f"{path}, line {ln}: {len(tokens)} tokens but {len(tags)} tags")
            for j, tag in enumerate(tags):
                p = parse_tag(tag)
                if p is None:
                    raise DataError(f"{path}, line {ln}, token {j + 1}: '{tag}' is not a tag "
                                    "(expected O or B-/I-/E-/S-<type>)")
                parsed.append(p)
        sentences.append({"tokens": tokens, "raw_tags": parsed, "lines": [ln] * len(tokens)})
    return sentences


def read_ner_file(path: str | Path, options: NEROptions, fmt: str = "auto", with_tags: bool = True) -> list[dict[str, Any]]:
    """Read CoNLL or jsonl into records ``{"tokens", "tags" (IOB2), "lines", "source"}``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist")
    if fmt == "auto":
        fmt = "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson", ".json") else "conll"
    if fmt not in ("conll", "jsonl"):
        raise DataError(f"{path}: the ner task reads data.format 'conll' or 'jsonl' (or 'auto'), not '{fmt}'")
    reader = read_conll if fmt == "conll" else read_token_jsonl
    sentences = reader(path, options, with_tags)
    if not sentences:
        raise DataError(f"{path}: no sentences found")
    scheme: str = options.tag_scheme
    if with_tags:
        if scheme == "auto":
            scheme = detect_scheme([s["raw_tags"] for s in sentences])
            log.info("%s: tags read as %s", path, scheme.upper())
        for s in sentences:
            try:
                s["tags"] = to_iob2(s["raw_tags"], scheme)
            except TagError as exc:
                raise DataError(f"{path}, line {s['lines'][exc.position]}: {exc}") from None
    for s in sentences:
        del s["raw_tags"]
        s["source"] = str(path)
    log.info("%s: %d sentences, %d tokens", path, len(sentences), sum(len(s["tokens"]) for s in sentences))
    return sentences
