"""Seeded random mutations of valid chat and completions bodies, for fuzzing a server's
request decoder: values replaced by weird ones (wrong types, huge numbers, NaN and
Infinity, lone surrogates), keys dropped or added, values nested deep or wrapped, the
encoded bytes cut or corrupted."""

from __future__ import annotations

import copy
import json
import math
import random
from collections.abc import Iterator
from typing import Any

WEIRD: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**63,
    -(2**64),
    10**19,
    1e308,
    -1e308,
    1e-300,
    0.5,
    -0.0,
    math.nan,
    math.inf,
    -math.inf,
    "",
    "x",
    "\ud800",
    "a\udfffb",
    "<|eot_id|>",
    [],
    [1],
    ["a"],
    [None],
    {},
    {"a": 1},
    {"role": "user"},
]


def _paths(v: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _paths(x, (*path, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _paths(x, (*path, i))


def _set(root: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node = root
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return root


def _get(root: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        root = root[k]
    return root


def mutate(rng: random.Random, body: dict[str, Any]) -> bytes:
    """One seeded mutation of a valid body: a value replaced by a weird one, a key dropped or
    added, a value nested deep or wrapped, or the encoded bytes cut or corrupted."""
    b = copy.deepcopy(body)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(list(_paths(b)))
        op = rng.randrange(7)
        if op == 0:
            b = _set(b, path, copy.deepcopy(rng.choice(WEIRD)))
        elif op == 1 and path:
            parent = _get(b, path[:-1])
            if isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent.pop(path[-1])
        elif op == 2:
            target = _get(b, path)
            if isinstance(target, dict):
                target[rng.choice(["unknown", "stream_options", "tools", "role", "\udc80"])] = (
                    rng.choice(WEIRD)
                )
        elif op == 3:
            v: Any = _get(b, path)
            for _ in range(rng.choice([2, 40, 70, 300])):
                v = [v] if rng.random() < 0.5 else {"k": v}
            b = _set(b, path, v)
        elif op == 4:
            b = _set(b, path, [copy.deepcopy(_get(b, path))])
        elif op == 5:
            b = _set(b, path, rng.choice([10**25, -(10**25), 1.5, "1", [0.5]]))
    if not isinstance(b, dict) and rng.random() < 0.5:
        b = {"prompt": b}
    try:
        raw = json.dumps(b, allow_nan=True).encode()
    except RecursionError:  # nested past what json.dumps writes: write the nesting raw
        raw = b'{"prompt": ' + b"[" * 3000 + b"]" * 3000 + b"}"
    r = rng.random()
    if r < 0.08:
        raw = raw[: rng.randrange(len(raw) + 1)]
    elif r < 0.14:
        i = rng.randrange(len(raw) + 1)
        raw = raw[:i] + bytes([rng.choice([0x80, 0xFF, 0xC3, 0x00, 0x22, 0x5C])]) + raw[i:]
    elif r < 0.18:
        raw = raw.replace(b"0.5", b"1e999", 1).replace(b"4", b"-Infinity", 1)
    return raw


def bodies(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    chat = {
        "model": name,
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": [{"type": "text", "text": "What is 2 plus 3?"}]},
            {
                "role": "assistant",
                "content": "It is 5.",
                "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "user", "content": "And doubled?", "name": "ann"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "max_tokens": 4,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 5,
        "seed": 7,
        "stop": ["\n\n"],
        "logprobs": True,
        "top_logprobs": 2,
        "user": "u-1",
        "return_token_ids": True,
    }
    completion = {
        "model": name,
        "prompt": "the fleet answers",
        "max_tokens": 4,
        "temperature": 0.5,
        "logprobs": 1,
        "stop": "zz",
        "stop_token_ids": [3],
        "seed": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return chat, completion
