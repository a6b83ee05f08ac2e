"""Named-entity recognition (token classification) with entity-level seqeval metrics.

Data: CoNLL-style files (one token per line, a tag column, any whitespace-only line
between sentences, ``-DOCSTART-`` lines skipped) or jsonl records with ``tokens`` and
``tags`` lists. Tags in IOB1, IOB2 or BIOES (BILOU letters too) are validated and
converted to IOB2 when read; the model learns them in ``task.label_scheme``.

Sub-words: a word's label sits on its first sub-token, the others are ignored by the
loss. A sentence longer than ``data.max_length`` is split into overlapping windows of
whole words; each word is predicted from the window where it has the most context,
so every input token gets exactly one predicted tag.
"""

from __future__ import annotations

from typing import Any

from tuneforge import hookimpl
from tuneforge.plugins.ner.readers import NEROptions, read_conll, read_ner_file, read_token_jsonl
from tuneforge.plugins.ner.tags import (
    PREFIXES,
    SCHEME_PREFIXES,
    TagError,
    detect_scheme,
    entity_type,
    iob2_to_bioes,
    parse_tag,
    to_iob2,
)
from tuneforge.plugins.ner.task import NERTask

__all__ = [
    "PREFIXES", "SCHEME_PREFIXES", "NEROptions", "NERTask", "TagError", "detect_scheme", "entity_type",
    "iob2_to_bioes", "parse_tag", "read_conll", "read_ner_file", "read_token_jsonl", "to_iob2",
]


@hookimpl
def tf_register_tasks(register: Any) -> None:
    register("ner", NERTask)
