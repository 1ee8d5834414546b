"""What the sidecar learns about the engine behind it: its name and version, and whether it
serves vLLM's ``/tokenize`` (vLLM, SGLang and ``infdebug serve`` do).

Learned in the background once the sidecar starts, and again later if the upstream was not
up yet: ``GET /version`` (vLLM: ``{"version": "0.11.2"}``), ``GET /v1/models``
(``owned_by``: ``vllm``, ``sglang``, ``infdebug`` …) and the ``Server`` header of any answer.
The name and version go into every record through the tracer's ``ReplicaInfo``; a name the
upstream does not tell is ``openai-compatible``, never a guess.

``tokenize(exchange)`` asks the engine for its own prompt IDs of a chat's messages (under the
engine's own chat template) or a completion's prompt, the same request the engine rendered;
those are recorded as the engine's. It runs after the answer went to the client.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import httpx

from infdebug.sidecar.capture import Exchange
from infdebug.text.model_text import ModelText
from infdebug.tracer.wiring import Telemetry

_log = logging.getLogger(__name__)
KNOWN_ENGINES = ("vllm", "sglang", "infdebug", "tgi", "text-generation-inference", "trtllm")
UNKNOWN_ENGINE = "openai-compatible"
TOKENIZE_TIMEOUT_S = 10.0
RETRY_S = 5.0  # learning again after a failure, at most this often


class UpstreamInfo:
    def __init__(
        self,
        client: httpx.AsyncClient,
        telemetry: Telemetry,
        model_text: ModelText | None,
        engine_name: str | None = None,
    ) -> None:
        self.client = client
        self.given_name = engine_name  # --engine-name: wins over what the upstream says
        self.telemetry = telemetry
        self.model_text = model_text
        self.engine: str | None = None
        self.engine_version: str | None = None
        self.server_header: str | None = None
        self.has_tokenize: bool | None = None  # None: not known yet
        self._learned_at = 0.0
        self._learned = False

    def saw_headers(self, headers: httpx.Headers) -> None:
        if self.server_header is None and headers.get("server"):
            self.server_header = headers["server"]
            self._stamp()
        if not self._learned and time.monotonic() - self._learned_at > RETRY_S:
            self._learned_at = time.monotonic()  # learn() is scheduled by the caller's loop
            import asyncio

            asyncio.get_running_loop().create_task(self.learn())

    async def learn(self) -> None:
        """Ask the upstream what it is (each question may fail: it says what it can)."""
        self._learned_at = time.monotonic()
        got_any = False
        version = await self._json("GET", "/version")
        if isinstance(version, dict) and isinstance(version.get("version"), str):
            self.engine_version, got_any = version["version"], True
        models = await self._json("GET", "/v1/models")
        if isinstance(models, dict) and isinstance(models.get("data"), list):
            got_any = True
            for m in models["data"]:
                owner = str((m or {}).get("owned_by") or "").lower()
                if owner in KNOWN_ENGINES:
                    self.engine = owner
                    break
        if self.has_tokenize is None:
            probe = await self._json("POST", "/tokenize", {"prompt": "a"}, want_status=True)
            if probe is not None:
                self.has_tokenize = probe == 200
                got_any = True
        self._learned = got_any
        self._stamp()

    async def _json(
        self, method: str, path: str, body: Any = None, *, want_status: bool = False
    ) -> Any:
        try:
            r = await self.client.request(method, path, json=body, timeout=TOKENIZE_TIMEOUT_S)
        except httpx.HTTPError as e:
            _log.debug("upstream %s %s: %r", method, path, e)
            return None
        if want_status:
            return r.status_code
        if r.status_code != 200:
            return None
        try:
            return r.json()
        except ValueError:
            return None

    @property
    def name(self) -> str:
        """The engine's name: ``--engine-name``, else what the upstream said, else
        ``openai-compatible``."""
        engine = self.given_name or self.engine
        if engine is None and self.server_header:
            low = self.server_header.lower()
            engine = next((e for e in KNOWN_ENGINES if e in low), None)
        return engine or UNKNOWN_ENGINE

    def _stamp(self) -> None:
        """The tracer's replica info with what is known of the engine now."""
        tracer = self.telemetry.tracer
        tracer.info = dataclasses.replace(
            tracer.info, engine=self.name, engine_version=self.engine_version
        )

    async def tokenize(self, ex: Exchange) -> list[int] | None:
        """The engine's own prompt IDs for ``ex`` (None where it cannot say)."""
        if self.has_tokenize is False:
            return None
        b = ex.body
        req: dict[str, Any] = {}
        if b.get("model") is not None:
            req["model"] = b["model"]
        if ex.kind == "chat" and isinstance(b.get("messages"), list):
            req["messages"] = b["messages"]
            req["add_generation_prompt"] = b.get("add_generation_prompt", True)
            for k in ("tools", "chat_template_kwargs", "continue_final_message"):
                if b.get(k) is not None:
                    req[k] = b[k]
        elif isinstance(b.get("prompt"), str):
            req["prompt"] = b["prompt"]
        else:
            return None
        try:
            r = await self.client.post("/tokenize", json=req, timeout=TOKENIZE_TIMEOUT_S)
        except httpx.HTTPError:
            return None
        if r.status_code == 404:
            self.has_tokenize = False
            return None
        if r.status_code != 200:
            return None
        doc = r.json()
        toks = doc.get("tokens") if isinstance(doc, dict) else None
        if isinstance(toks, list) and all(isinstance(t, int) for t in toks):
            self.has_tokenize = True
            return [int(t) for t in toks]
        return None
