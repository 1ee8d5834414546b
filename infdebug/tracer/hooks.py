"""The hook interface between an engine and the tracer: what the engine calls, and the
narrow view of one request it passes.

Arrows run one way: the engine imports this module and calls the hooks; the tracer imports
this module and implements them; neither imports the other. An engine of its own (the
reference engine's ``Sequence``) or a proxy in front of another engine implements
:class:`TracedRequest`; the tracer reads nothing else of it.
"""

from __future__ import annotations

import collections.abc as cabc
from typing import Any, Protocol


class TracedRequest(Protocol):
    """One request as the hooks see it. Every member is read only; before ``finished`` the
    output lists, text and times are still growing."""

    @property
    def request_id(self) -> str: ...

    @property
    def prompt_ids(self) -> cabc.Sequence[int]: ...

    @property
    def output_ids(self) -> cabc.Sequence[int]: ...

    @property
    def output_logprobs(self) -> cabc.Sequence[float] | None: ...  # per output token, if known

    @property
    def prompt_text(self) -> str | None: ...  # the rendered prompt

    @property
    def output_text(self) -> str: ...  # detokenized output

    @property
    def messages(self) -> list[dict[str, Any]] | None: ...  # the chat messages as received

    @property
    def cached_tokens(self) -> int: ...  # prompt tokens served from the prefix cache

    @property
    def finish_reason(self) -> str | None: ...  # stop, length, abort, error

    def timing(self) -> dict[str, Any]:
        """``t_arrival`` (unix seconds), then offsets from arrival in seconds: ``queue_s``,
        ``prefill_s`` (a duration), ``ttft_s``, ``e2e_s`` (each None until it happened) and
        ``token_times_s`` (one per output token)."""
        ...

    def sampling(self) -> dict[str, Any]:
        """The sampling parameters as the contract's ``sampling`` field holds them
        (temperature, top_p, top_k, max_tokens, seed, stop, ignore_eos, stop_ids)."""
        ...

    def extra(self) -> dict[str, Any]:
        """Contract fields the request's source knows beyond the members above (a proxy:
        the engine's ``prompt_tokens`` / ``output_tokens``, ``finish_reason_raw``, ``error``,
        ``abort_message``, ``derived``); ``{}`` for an engine of its own."""
        ...


class EngineHooks(Protocol):
    """The narrow interface a tracer attaches to (every call on the engine thread, so each
    must be quick and must not raise)."""

    def admitted(self, seq: TracedRequest) -> None: ...

    def scheduled(self, seq: TracedRequest) -> None: ...

    def prefill_done(self, seq: TracedRequest) -> None: ...

    def step_tokens(self, seqs: cabc.Sequence[TracedRequest], t_mono: float) -> None: ...

    def finished(self, seq: TracedRequest) -> None: ...


class NoHooks:
    """Hooks that do nothing (an engine without a tracer), and a base for partial hooks."""

    def admitted(self, seq: TracedRequest) -> None: ...
    def scheduled(self, seq: TracedRequest) -> None: ...
    def prefill_done(self, seq: TracedRequest) -> None: ...
    def step_tokens(self, seqs: cabc.Sequence[TracedRequest], t_mono: float) -> None: ...
    def finished(self, seq: TracedRequest) -> None: ...
