"""The limits one infdebug server enforces, and the error a refused request is answered
with (an HTTP status and an OpenAI-style body)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from infdebug import settings
from infdebug.errors import InputError

MiB = 1024 * 1024
# The environment variables are settings.py's, where every one infdebug reads is listed.
ENV_MAX_BODY_MB = settings.MAX_BODY_MB
ENV_HEADER_TIMEOUT = settings.HEADER_TIMEOUT
ENV_BODY_TIMEOUT = settings.BODY_TIMEOUT
ENV: dict[str, str] = {
    k: settings.ENV[k] for k in (ENV_MAX_BODY_MB, ENV_HEADER_TIMEOUT, ENV_BODY_TIMEOUT)
}
INT64 = (-(2**63), 2**63 - 1)
MAX_INT_DIGITS = 20  # an unsigned 64-bit integer; longer integers are refused while decoding
SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Limits:
    """What one server accepts. Every bound is checked before the request reaches an engine."""

    max_body_bytes: int = 4 * MiB
    max_depth: int = 64  # nested JSON containers (a tool's JSON schema nests, a body need not)
    header_timeout_s: float = 10.0  # from connection (or the last response) to complete headers
    body_timeout_s: float = 30.0  # from complete headers to the end of the body
    max_stop: int = 32  # stop strings per request (OpenAI allows 4)
    max_stop_chars: int = 1024  # characters per stop string
    max_stop_token_ids: int = 1024
    max_logprobs: int = 20  # as vLLM's default max_logprobs

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_depth", "max_stop", "max_stop_chars"):
            if getattr(self, name) < 1:
                raise InputError(f"limits: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("header_timeout_s", "body_timeout_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise InputError(f"limits: {name} must be a number of seconds > 0, got {v}")


class RequestError(InputError):
    """A refused request: the HTTP status and the OpenAI-style error it is answered with."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        *,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        if kind is None:
            kind = "invalid_request_error" if status < 500 else "server_error"
            if status == 404:
                kind = "not_found_error"
        self.kind = kind

    def payload(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def kind_of(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"
