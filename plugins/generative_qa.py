"""Generative question answering: a causal LM reads the passage and writes the answer.

The ``causal_lm`` task on SQuAD-format data (``tuneforge.squad``: SQuAD JSON or jsonl, the
same reader and article split as the extractive ``qa`` task, so the two score the same test
questions). Each question becomes a prompt/response record: the prompt is
``task.prompt_format`` filled from ``context``, ``question`` and ``title``; the response
(trained on) is the first gold answer; generations are scored against every gold answer with
the SQuAD-normalised EM/F1 (``squad`` scorer, in percent). ``task.truncate_field`` defaults to
``context``: a passage too long for ``data.max_length`` is cut, never the question or answer.

Unanswerable SQuAD v2 questions are refused: a generative reader has no null span to point at.

    task:
      name: generative_qa
      test_fraction: 0.2     # XQuAD ships one file: hold out articles as for the qa task
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tuneforge import hookimpl
from tuneforge.errors import DataError
from tuneforge.plugins.causal_lm import CausalLMOptions, CausalLMTask, GenerationOptions
from tuneforge.squad import ArticleSplitOptions, check_article_split, read_split

PROMPT = ("Answer the question with a short phrase copied from the passage.\n\nPassage: {context}\n\n"
          "Question: {question}")


class GenerativeQAOptions(CausalLMOptions, ArticleSplitOptions):
    prompt_format: str | None = Field(
        PROMPT, description="The prompt, filled from the question's context, question and title."
    )
    response_field: str = Field("answer", description="The field trained on: the question's first gold answer.")
    truncate_field: str | None = Field(
        "context", description="Cut the passage (not the question or the answer) of an example longer than "
        "data.max_length.",
    )
    max_new_tokens: int = Field(32, ge=1, description="Length limit of generated answers.")
    generation: GenerationOptions = Field(
        default_factory=lambda: GenerationOptions(scorers=["squad"], references_field="answer_texts"),
        description="Scoring of generated answers; default: SQuAD EM/F1 against every gold answer.",
    )


class GenerativeQATask(CausalLMTask):
    name = "generative_qa"
    Options = GenerativeQAOptions
    primary_metric = "squad_f1"
    greater_is_better = True
    options: GenerativeQAOptions

    def __init__(self, options: Any, config: Any) -> None:
        super().__init__(options, config)
        check_article_split(self.options, config.data)

    def read(self, path: str, split: str) -> list[dict[str, Any]]:
        records = read_split(path, split, self.options, self.config.data)
        out = []
        for r in records:
            if not r["answers"]:
                raise DataError(f"{path}: question {r['id']} has no answer (SQuAD v2 unanswerable); "
                                "generative_qa needs an answer per question; use task qa for SQuAD v2")
            texts = list(dict.fromkeys(a["text"] for a in r["answers"]))
            out.append({**r, "answer": texts[0], "answer_texts": texts})
        return out


@hookimpl
def tf_register_tasks(register: Any) -> None:
    register("generative_qa", GenerativeQATask)
