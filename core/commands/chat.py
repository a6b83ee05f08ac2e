"""``tuneforge chat --run DIR | --model DIR [--message TEXT ...]``: talk to a trained causal LM.

Without ``--message`` it is an interactive prompt: each line is a user turn, ``/reset``
starts the conversation over, ``/exit`` or end of input (Ctrl-D) ends it; on a terminal the
answer streams as it is generated. Each ``--message`` is one turn of a scripted
conversation: the answers go to stdout, one per message (``--json``: one JSON object).

The conversation is rendered the way the causal_lm task renders a ``tuneforge predict``
prompt, so a greedy answer here is the one ``predict`` writes for the same conversation:
the tokenizer's chat template with the generation prompt, or, for a model without one (or
a run with ``task.use_chat_template=never``), the task's ``prompt_template`` with each
earlier answer and EOS after its prompt (a system message goes before the first prompt).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.commands import stdout_kept_for_results
from tuneforge.errors import ConfigError

log = logging.getLogger("tuneforge")

TASK = "causal_lm"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="talk to a trained causal LM (interactive, or --message for scripts)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="run directory written by `tuneforge train` (its model/: adapter or full)")
    source.add_argument("--model", type=Path,
                        help="a model directory: a run's model/, a `tuneforge export --merge` output, any causal LM")
    p.add_argument("--message", "-m", action="append", default=[], metavar="TEXT",
                   help="answer TEXT and exit (repeat for a multi-turn conversation); no interactive prompt")
    p.add_argument("--system", help="system message opening the conversation")
    p.add_argument("--max-new-tokens", type=int, default=256, help="length limit of each answer (default: 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 (default) is greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold when --temperature > 0")
    p.add_argument("--json", action="store_true", help="with --message: print one JSON object (answers, conversation)")
    p.add_argument("--show-prompt", action="store_true",
                   help="print each rendered prompt (with special tokens) to stderr before its answer")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. model.dtype=bfloat16 task.use_chat_template=never")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class GenerationSettings:
    """How each answer is generated: greedy unless ``temperature`` > 0."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature == 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {"max_new_tokens": self.max_new_tokens, "do_sample": True,
                "temperature": self.temperature, "top_p": self.top_p}


@dataclass
class Turn:
    """One answer: the prompt it continued and the generated tokens (ids), and the decoded reply."""

    prompt_ids: list[int]
    answer_ids: list[int]
    answer: str


@dataclass
class ChatSession:
    """A conversation with a loaded :class:`tuneforge.inference.TrainedModel` (task causal_lm)."""

    trained: Any
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    system: str | None = None
    show_prompt: bool = False  # print each rendered prompt to stderr (``--show-prompt``)
    messages: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        tokenizer, options = self.trained.tokenizer, self.trained.task.options
        self.uses_chat_template = bool(getattr(tokenizer, "chat_template", None)) and options.use_chat_template != "never"
        if not self.uses_chat_template:
            why = "the run sets task.use_chat_template=never" if getattr(tokenizer, "chat_template", None) \
                else "the model's tokenizer has no chat template"
            log.warning("%s: prompts are rendered with task.prompt_template %r", why, options.prompt_template)
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def render(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` (ending with a user turn) up to where the answer begins."""
        tokenizer = self.trained.tokenizer
        if self.uses_chat_template:
            return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])
        template = self.trained.task.options.prompt_template
        system = [m["content"] for m in messages if m["role"] == "system"]
        turns = [m for m in messages if m["role"] != "system"]
        ids: list[int] = []
        for i, m in enumerate(turns):
            if m["role"] == "assistant":
                ids += tokenizer(m["content"], add_special_tokens=False)["input_ids"]
                ids += [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
                continue
            prompt = "\n\n".join([*system, m["content"]]) if i == 0 else m["content"]
            ids += tokenizer(template.format(prompt=prompt), add_special_tokens=not ids)["input_ids"]
        return ids

    def send(self, text: str, streamer: Any = None) -> Turn:
        """Answer the user message ``text`` and add both turns to the conversation."""
        import torch

        from tuneforge.tasks import decode_ids, generate

        messages = [*self.messages, {"role": "user", "content": text}]
        prompt_ids = self._fit(messages)
        tokenizer, device = self.trained.tokenizer, self.trained.device
        if self.show_prompt:
            print(f"[prompt] {tokenizer.decode(prompt_ids)!r}", file=sys.stderr, flush=True)
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        out = generate(self.trained.model, input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                       pad_token_id=tokenizer.pad_token_id, streamer=streamer, **self.settings.generate_kwargs())
        new = out[0, input_ids.shape[1]:].tolist()
        answer = decode_ids(tokenizer, new)
        self.messages = [*messages, {"role": "assistant", "content": answer}]
        return Turn(prompt_ids, new, answer)

    def _fit(self, messages: list[dict[str, str]]) -> list[int]:
        """Render ``messages``, dropping (in place) the oldest exchanges while prompt + answer would
        exceed the model's context."""
        context = getattr(self.trained.model.config, "max_position_embeddings", None)
        ids = self.render(messages)
        if context is None:
            return ids
        budget = context - self.settings.max_new_tokens
        first = 1 if messages[0]["role"] == "system" else 0
        while len(ids) > budget and len(messages) - first > 1:
            del messages[first : first + 2]  # one user turn and its answer
            ids = self.render(messages)
            log.warning("the conversation outgrew the model's context of %d tokens: the oldest exchange was dropped",
                        context)
        if len(ids) > budget:
            raise ConfigError(f"the message is {len(ids)} tokens; with --max-new-tokens {self.settings.max_new_tokens} "
                              f"the model's context of {context} tokens leaves room for {max(budget, 0)}: "
                              "send a shorter message or lower --max-new-tokens")
        return ids


def run(args: argparse.Namespace) -> int:
    from tuneforge import inference

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p)
    if args.json and not args.message:
        raise ConfigError("--json needs --message TEXT (the interactive prompt prints plain text)")
    config, model_dir, run_dir = inference.resolve_source(args.run, args.model, None, list(args.overrides),
                                                          default_task=TASK)
    if config.task.name != TASK:
        raise ConfigError(f"'{run_dir or model_dir}' was trained for task '{config.task.name}'; chat needs a "
                          f"{TASK} run (use `tuneforge predict` for other tasks)")
    if not any((model_dir / name).is_file() for name in ("config.json", "adapter_config.json")):
        raise ConfigError(f"'{model_dir}' holds neither config.json nor adapter_config.json: it is not a model "
                          "directory (pass a run's model/ or a `tuneforge export` output)")
    inference.quiet_transformers()
    with stdout_kept_for_results():
        session = ChatSession(inference.load_resolved(config, model_dir, run_dir), settings, args.system,
                              args.show_prompt)
        turns = [session.send(text) for text in args.message]
    if not args.message:
        return interactive(session)
    if args.json:
        print(json.dumps({"answers": [t.answer for t in turns], "messages": session.messages,
                          "new_tokens": [len(t.answer_ids) for t in turns], "model": str(model_dir)}, ensure_ascii=False))
    else:
        for turn in turns:
            print(turn.answer)
    return 0


def interactive(session: ChatSession) -> int:
    """Read user turns from stdin until ``/exit`` or end of input; answers go to stdout."""
    terminal = sys.stdin.isatty() and sys.stdout.isatty()
    streamer = None
    if terminal:
        import readline  # noqa: F401 - line editing and history for input()

        from transformers import TextStreamer

        streamer = TextStreamer(session.trained.tokenizer, skip_prompt=True, skip_special_tokens=True)
    where = session.trained.run_dir or session.trained.model_dir
    print(f"chatting with {where}: /reset starts over, /exit or Ctrl-D ends", file=sys.stderr)
    while True:
        try:
            text = input("> " if terminal else "").strip()
        except EOFError:
            break
        if text == "/exit":
            break
        if text == "/reset":
            session.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        if not text:
            continue
        try:
            turn = session.send(text, streamer)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            continue
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat; the turn is not kept
            print("\n(answer interrupted)", file=sys.stderr)
            continue
        if streamer is None:
            print(turn.answer, flush=True)
    if terminal:
        print(file=sys.stderr)
    return 0
