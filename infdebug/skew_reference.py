"""The train-serve reference (``infdebug analyze --reference FILE``): what the model was
trained or evaluated on, read from JSON Lines, and prepared for the ``skew.*`` analyzers.

One JSON object a line, one of:

- a chat conversation: ``{"messages": [{"role": …, "content": …}, …]}``. A conversation that
  ends with an assistant turn is a prompt (every message before it, rendered with the
  reference chat template and ``add_generation_prompt``) plus its answer (the output);
  otherwise all of it is the prompt.
- token IDs: ``{"prompt_ids": [...]}`` (or ``"input_ids"``, read as the prompt), with
  ``"output_ids"`` optional.

Either may carry ``"prompt_text"`` (the rendered prompt as the trainer saw it: used as is,
not re-rendered), ``"output_text"``, ``"template_fp"`` and ``"sampling"`` (the evaluation's
sampling parameters: ``temperature``, ``top_p``, ``top_k``, ``min_p``, ``max_tokens``, the
penalties); a line with only ``"sampling"`` is an evaluation setting and nothing else. So an
infdebug request log of an evaluation run is a reference as it is. Unknown fields are
ignored.

A line that is not one of these is reported with file:line and the field (``RefReject``)
and set aside; the rest is used. A file larger than ``MAX_RECORDS`` records is sampled
(a seeded reservoir: the same sample every run). Rendering and encoding wait for
``ReferenceSet.prepared(tokenizer, template)``, which caches its result per reference pair.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import Any

from infdebug.errors import InputError

MAX_RECORDS = 5000  # records kept (a seeded reservoir beyond); rendering costs ~1 ms each
SHOW_REJECTS = 20  # rejects kept with their text; the rest are counted
SAMPLING_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "max_tokens",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
)
_MAX_ID = 2**32 - 1


@dataclass(frozen=True)
class RefReject:
    """A reference line set aside: where, which field, why."""

    path: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.path, "line": self.line, "field": self.field, "reason": self.reason}


@dataclass(frozen=True)
class RefRecord:
    """One usable reference line, as read (nothing rendered or encoded yet)."""

    line: int
    messages: tuple[dict[str, Any], ...] | None = None  # the prompt's messages
    answer: str | None = None  # the final assistant turn's content, when the conversation has one
    prompt_text: str | None = None
    prompt_ids: tuple[int, ...] | None = None
    output_ids: tuple[int, ...] | None = None
    output_text: str | None = None
    template_fp: str | None = None
    sampling: dict[str, float] | None = None

    @property
    def has_prompt(self) -> bool:
        return bool(self.messages) or bool(self.prompt_ids) or bool(self.prompt_text)


@dataclass
class Prepared:
    """The reference as the analyzers compare it: per record (that has a prompt) its prompt
    IDs, rendered text, message-role family, skeleton and output length, where they can be
    had; ``unusable`` says why some could not (reason → count), ``rejects`` which lines failed
    to render."""

    prompt_ids: list[list[int] | None]
    texts: list[str | None]
    families: list[str]
    skeletons: list[str | None]  # contents masked by the messages (by markers without them)
    masked: list[str | None]  # contents masked by markers alone (what an ID-only line gives)
    output_lens: list[int | None]
    template_fps: list[str]
    lines: list[int]
    rejects: list[RefReject] = field(default_factory=list)
    unusable: dict[str, int] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)  # what analyzers derive from it once

    @property
    def id_seqs(self) -> list[list[int]]:
        """The prompts that have IDs."""
        return [p for p in self.prompt_ids if p]


@dataclass
class ReferenceSet:
    """A reference file, read: the usable records, the evaluation's sampling ranges, the lines
    set aside."""

    path: str
    lines: int = 0  # non-blank lines read
    records: list[RefRecord] = field(default_factory=list)
    total_records: int = 0  # usable records in the file (``records`` may be a sample)
    rejects: list[RefReject] = field(default_factory=list)  # the first SHOW_REJECTS
    rejected: int = 0
    sampling: dict[str, tuple[float, float]] = field(default_factory=dict)  # key → (min, max)
    sampling_records: int = 0
    _prepared: dict[tuple[str, str], Prepared] = field(default_factory=dict, repr=False)

    @property
    def sampled(self) -> bool:
        return self.total_records > len(self.records)

    def summary(self) -> dict[str, Any]:
        """What a finding or ``--json`` says about the reference."""
        return {
            "path": self.path,
            "lines": self.lines,
            "records": self.total_records,
            "used": len(self.records),
            "sampled": self.sampled,
            "rejected": self.rejected,
            "sampling_records": self.sampling_records,
        }

    def prepared(self, tokenizer: Any, template: str | None) -> Prepared:
        """Render and encode the records with this reference tokenizer and template (cached)."""
        key = (
            str(getattr(tokenizer, "fingerprint", None) or id(tokenizer)) if tokenizer else "",
            template or "",
        )
        if key not in self._prepared:
            self._prepared[key] = _prepare(self, tokenizer, template)
        return self._prepared[key]


# --- reading --------------------------------------------------------------------------------


class _Bad(Exception):
    def __init__(self, fld: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = fld, reason


def _ids(value: Any, fld: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise _Bad(fld, f"expected a list of token IDs, found {type(value).__name__}")
    for i, x in enumerate(value):
        if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= _MAX_ID:
            raise _Bad(f"{fld}[{i}]", f"expected a token ID (an integer in 0..2^32-1), found {x!r}")
    return tuple(value)


def _text(value: Any, fld: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Bad(fld, f"expected a string, found {type(value).__name__}")
    return value


def _content(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts
        return "".join(str(p.get("text", "")) for p in value if isinstance(p, dict))
    return "" if value is None else str(value)


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _Bad("messages", "expected a non-empty list of messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise _Bad(f"messages[{i}]", f"expected an object, found {type(m).__name__}")
        if not isinstance(m.get("role"), str) or not m["role"]:
            raise _Bad(f"messages[{i}].role", f"expected a role string, found {m.get('role')!r}")
        c = m.get("content")
        if c is not None and not isinstance(c, str | list):
            raise _Bad(f"messages[{i}].content", f"expected text, found {type(c).__name__}")
    return list(value)


def _sampling(value: Any) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Bad("sampling", f"expected an object, found {type(value).__name__}")
    out: dict[str, float] = {}
    for k in SAMPLING_KEYS:
        v = value.get(k)
        if v is None:
            continue
        if (
            isinstance(v, bool)
            or not isinstance(v, int | float)
            or v != v
            or abs(v) == float("inf")
        ):
            raise _Bad(f"sampling.{k}", f"expected a finite number, found {v!r}")
        out[k] = float(v)
    return out


def parse_line(obj: Any, line: int) -> RefRecord:
    """One reference line's JSON value as a record; raises ``_Bad`` naming the field."""
    if not isinstance(obj, dict):
        raise _Bad("(line)", f"expected a JSON object, found {type(obj).__name__}")
    sampling = _sampling(obj.get("sampling"))
    prompt_text = _text(obj.get("prompt_text"), "prompt_text")
    output_text = _text(obj.get("output_text"), "output_text")
    fp = _text(obj.get("template_fp"), "template_fp")
    pid_key = "prompt_ids" if obj.get("prompt_ids") is not None else "input_ids"
    prompt_ids = _ids(obj[pid_key], pid_key) if obj.get(pid_key) is not None else None
    output_ids = (
        _ids(obj["output_ids"], "output_ids") if obj.get("output_ids") is not None else None
    )
    messages: tuple[dict[str, Any], ...] | None = None
    answer: str | None = None
    if obj.get("messages") is not None:
        msgs = _messages(obj["messages"])
        if msgs[-1]["role"] == "assistant" and len(msgs) > 1 and not msgs[-1].get("tool_calls"):
            answer = _content(msgs[-1].get("content"))
            msgs = msgs[:-1]
        messages = tuple(msgs)
    rec = RefRecord(
        line,
        messages,
        answer,
        prompt_text,
        prompt_ids or None,
        output_ids,
        output_text,
        fp,
        sampling,
    )
    if not rec.has_prompt and not sampling:
        raise _Bad(
            "(line)",
            "expected 'messages', 'prompt_ids' / 'input_ids', 'prompt_text' or 'sampling'; "
            f"found keys {sorted(obj)[:8]}",
        )
    return rec


def load_reference_file(path: str, max_records: int = MAX_RECORDS) -> ReferenceSet:
    """Read ``path``; bad lines are set aside (``rejects``), never fatal. A file that cannot
    be opened or is not UTF-8 text raises ``InputError``."""
    ref = ReferenceSet(path)
    rng = random.Random(0)
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115 (closed below; errors name the file)
    except OSError as e:
        raise InputError(f"--reference {path}: cannot read it: {e.strerror or e}") from None
    with f:
        n = 0
        try:
            for n, text in enumerate(f, 1):  # noqa: B007 (n names the failing line below)
                if not text.strip():
                    continue
                ref.lines += 1
                try:
                    obj = json.loads(text)
                except ValueError as e:
                    _reject(ref, RefReject(path, n, "(line)", f"malformed JSON: {e}"))
                    continue
                try:
                    rec = parse_line(obj, n)
                except _Bad as e:
                    _reject(ref, RefReject(path, n, e.field, e.reason))
                    continue
                if rec.sampling:
                    ref.sampling_records += 1
                    for k, v in rec.sampling.items():
                        lo[k] = min(lo.get(k, v), v)
                        hi[k] = max(hi.get(k, v), v)
                if not rec.has_prompt:
                    continue
                ref.total_records += 1
                if len(ref.records) < max_records:
                    ref.records.append(rec)
                else:  # reservoir: every record equally likely to be kept
                    j = rng.randrange(ref.total_records)
                    if j < max_records:
                        ref.records[j] = rec
        except UnicodeDecodeError as e:
            raise InputError(
                f"--reference {path}:{n + 1}: not UTF-8 text ({e.reason}); expected JSON Lines"
            ) from None
    ref.records.sort(key=lambda r: r.line)
    ref.sampling = {k: (lo[k], hi[k]) for k in sorted(lo)}
    return ref


def _reject(ref: ReferenceSet, r: RefReject) -> None:
    ref.rejected += 1
    if len(ref.rejects) < SHOW_REJECTS:
        ref.rejects.append(r)


_LOADED: dict[tuple[str, int, int], ReferenceSet] = {}


def reference_of(options: dict[str, Any]) -> ReferenceSet | None:
    """The reference in an analysis's options: ``options["reference"]``, a ``ReferenceSet``
    or a path (read once per file version and kept)."""
    ref = options.get("reference")
    if ref is None or isinstance(ref, ReferenceSet):
        return ref
    path = str(ref)
    try:
        st = os.stat(path)
    except OSError as e:
        raise InputError(f"--reference {path}: cannot read it: {e.strerror or e}") from None
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load_reference_file(path)
    return _LOADED[key]


# --- preparing ------------------------------------------------------------------------------


def _prepare(ref: ReferenceSet, tok: Any, template: str | None) -> Prepared:
    from infdebug.analyzers.template_text import family_of, skeleton
    from infdebug.text.template import render_chat
    from infdebug.text.tokenizer import encode_prompt

    out = Prepared([], [], [], [], [], [], [], [])
    eos = {int(i) for i in (getattr(tok, "eos_ids", None) or [])}

    def note(reason: str) -> None:
        out.unusable[reason] = out.unusable.get(reason, 0) + 1

    for rec in ref.records:
        msgs = [dict(m) for m in rec.messages] if rec.messages else None
        text = rec.prompt_text
        if text is None and msgs and template:
            try:
                text = render_chat(
                    template,
                    msgs,
                    add_generation_prompt=True,
                    bos_token=getattr(tok, "bos_token", None),
                    eos_token=getattr(tok, "eos_token", None),
                )
            except Exception as e:  # a template that raises on one conversation: that line
                if len(out.rejects) < SHOW_REJECTS:
                    out.rejects.append(
                        RefReject(ref.path, rec.line, "messages", f"the template failed: {e}")
                    )
                note("the reference template failed to render it")
        elif text is None and msgs:
            note("a conversation, and no chat template to render it (--model or --template)")
        ids: list[int] | None = list(rec.prompt_ids) if rec.prompt_ids else None
        if ids is None and text is not None:
            if tok is not None:
                ids = encode_prompt(tok, text)
            else:
                note("prompt text, and no tokenizer to encode it (--model or --tokenizer)")
        if text is None and ids is not None and tok is not None:
            text = tok.decode(ids, skip_special_tokens=False)
        out_len: int | None = None
        if rec.output_ids is not None:
            o = list(rec.output_ids)
            out_len = len(o) - (1 if o and o[-1] in eos else 0)
        elif tok is not None and (rec.output_text is not None or rec.answer is not None):
            out_len = len(
                tok.encode(rec.output_text if rec.output_text is not None else rec.answer)
            )
        out.prompt_ids.append(ids)
        out.texts.append(text)
        out.families.append(family_of(msgs) if msgs else "?")
        out.skeletons.append(skeleton(text, msgs) if text is not None else None)
        out.masked.append(skeleton(text, None) if text is not None else None)
        out.output_lens.append(out_len)
        if rec.template_fp:
            out.template_fps.append(rec.template_fp)
        out.lines.append(rec.line)
    return out
