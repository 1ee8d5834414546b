"""The log-format registry: every ``readers_*`` module's ``READER`` spec is a format, and the
``ingest --format`` choice, detection and the "format not recognised … expected …" message all
come from it; a spec added through ``register`` is detected, read and ingested like the
built-in ones; and the imports run one way (the format modules never import ``readers``)."""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import re
from collections.abc import Iterable, Iterator
from typing import Any

import click
import pytest

import infdebug.collectors as collectors
from infdebug.collectors import readers
from infdebug.collectors.ingest import ingest_paths
from infdebug.collectors.readers import (
    READERS,
    ReaderSpec,
    convert_to_contract,
    detect_format,
    detect_line,
    format_names,
    not_recognised,
    read_engine_log,
    register,
)
from infdebug.collectors.readers_base import Context, build_request, replica_from_path
from infdebug.schema import LineError, Request
from infdebug.store import Store

BUILTIN = {"contract", "vllm", "sglang", "openai", "openai-batch", "prometheus"}
COLLECTORS = os.path.dirname(os.path.abspath(collectors.__file__))


def _format_modules() -> list[Any]:
    return [
        importlib.import_module(f"infdebug.collectors.{m.name}")
        for m in pkgutil.iter_modules(collectors.__path__)
        if m.name.startswith("readers_")
    ]


def test_every_readers_module_that_declares_a_spec_is_registered() -> None:
    declared = {mod.READER.name: mod.READER for mod in _format_modules() if hasattr(mod, "READER")}
    assert set(declared) == set(READERS) and set(READERS) >= BUILTIN
    assert all(READERS[name] is spec for name, spec in declared.items())
    assert format_names() == [
        s.name for s in sorted(READERS.values(), key=lambda s: (s.order, s.name))
    ]


def test_the_ingest_format_choice_is_the_registry() -> None:
    from infdebug.cli import cli

    opt = next(p for p in cli.commands["ingest"].params if p.name == "fmt")
    assert isinstance(opt.type, click.Choice)
    assert list(opt.type.choices) == ["auto", *format_names()]
    assert {"openai-batch", "prometheus"} <= set(opt.type.choices)


def test_the_not_recognised_message_lists_every_registered_format(
    store: Store, tmp_path: Any
) -> None:
    noise = tmp_path / "noise.log"
    noise.write_text("just noise\nmore noise\n")
    msg = not_recognised(str(noise))
    assert msg.startswith(f"{noise}: format not recognised") and msg.endswith("pass --format")
    with pytest.raises(ValueError) as e:
        list(read_engine_log(str(noise)))
    rep = convert_to_contract(str(noise), str(tmp_path / "o.jsonl"))
    ing = ingest_paths(store, [str(noise)], rejects_path=str(tmp_path / "rejects.jsonl"))
    for text in (msg, str(e.value), rep.error or "", ing.files[0].message):
        for spec in READERS.values():
            assert spec.describe in text, (spec.name, text)


def test_unknown_and_non_request_formats_are_refused_by_name(tmp_path: Any) -> None:
    p = tmp_path / "r1.prom"
    p.write_text("# HELP x_total X.\n# TYPE x_total counter\nx_total 1\n")
    assert detect_format(str(p)) == "prometheus"
    with pytest.raises(ValueError, match="not a request log"):
        list(read_engine_log(str(p)))
    with pytest.raises(ValueError, match=re.escape(f"expected auto, {', '.join(format_names())}")):
        list(read_engine_log(str(p), fmt="tgi"))


# --- a format added through the registry ---------------------------------------------------------

_TOY_RE = re.compile(r"TOYREQ id=(\S+) prompt_ids=([\d,]+) output_ids=([\d,]+)")


def read_toy(
    lines: Iterable[tuple[int, str]], ctx: Context
) -> Iterator[tuple[int, Request | LineError]]:
    for n, text in lines:
        if not text.strip():
            continue
        ctx.stats.lines += 1
        m = _TOY_RE.search(text)
        if m is None:
            if "TOYREQ" in text:
                yield n, LineError("a TOYREQ line without id, prompt_ids and output_ids")
            else:
                ctx.stats.ignored += 1
            continue
        ids = [[int(x) for x in g.split(",")] for g in (m.group(2), m.group(3))]
        yield (
            n,
            build_request(
                ctx,
                n,
                {
                    "request_id": m.group(1),
                    "prompt_ids": ids[0],
                    "output_ids": ids[1],
                    "t_arrival": 1_764_000_000.0 + n,
                },
            ),
        )


TOY = ReaderSpec(
    "toy",
    "toy 'TOYREQ id=…' lines",
    read=read_toy,
    text_line=lambda t: "TOYREQ " in t,
    engine="toy-engine",
)
TOY_JSON = ReaderSpec(
    "toy-json", 'toy {"toy": …} JSONL', read=read_toy, json_line=lambda o: "toy" in o, order=5
)


@pytest.fixture
def toy() -> Iterator[ReaderSpec]:
    register(TOY)
    register(TOY_JSON)
    try:
        yield TOY
    finally:
        READERS.pop(TOY.name, None)
        READERS.pop(TOY_JSON.name, None)


def _toy_log(tmp_path: Any) -> str:
    p = tmp_path / "toy-r7.log"
    p.write_text(
        "starting the toy server\nTOYREQ id=a prompt_ids=1,2,3 output_ids=7,8\n"
        "TOYREQ broken\nTOYREQ id=b prompt_ids=4 output_ids=9\n"
    )
    return str(p)


def test_a_registered_spec_is_detected_read_and_described(toy: ReaderSpec, tmp_path: Any) -> None:
    path = _toy_log(tmp_path)
    assert (
        detect_line("INFO TOYREQ id=x") == "toy"
        and detect_line('{"toy": 1, "kind": "request"}') == "toy-json"
    )
    assert (
        detect_line('{"kind": "request"}') == "contract"
    )  # the built-in ones are still told as before
    assert detect_format(path) == "toy" and "toy" in format_names()
    got = list(read_engine_log(path))
    reqs = [r for _, r in got if isinstance(r, Request)]
    assert [r.request_id for r in reqs] == ["a", "b"] and [
        n for n, r in got if isinstance(r, LineError)
    ] == [3]
    assert reqs[0].replica == replica_from_path(path) == "toy-r7" and reqs[0].engine == "toy-engine"
    assert toy.describe in not_recognised("x.log")
    with pytest.raises(ValueError, match="registered twice"):
        register(ReaderSpec("toy", "another toy", read=read_toy))


def test_a_registered_spec_ingests_like_the_built_in_ones(
    toy: ReaderSpec, store: Store, tmp_path: Any
) -> None:
    path = _toy_log(tmp_path)
    rep = ingest_paths(store, [path], rejects_path=str(tmp_path / "rejects.jsonl"))
    f = rep.files[0]
    assert f.rows["request"] == 2 and f.rejected == 1 and f.path_taken.startswith("toy log → ")
    _, rows = store.query("SELECT request_id, engine FROM requests ORDER BY request_id")
    assert [tuple(r) for r in rows] == [("a", "toy-engine"), ("b", "toy-engine")]


# --- the arrows -----------------------------------------------------------------------------------


def _imports(path: str) -> set[str]:
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_the_format_modules_never_import_the_registry() -> None:
    """readers → readers_<format> → readers_base, and never back (no import inside a function
    either)."""
    users = [
        n for n in os.listdir(COLLECTORS) if n.startswith("readers_") or n == "prom_snapshot.py"
    ]
    assert "readers_base.py" in users and len(users) >= 8
    for name in users:
        assert readers.__name__ not in _imports(os.path.join(COLLECTORS, name)), name
    assert not {
        m
        for m in _imports(os.path.join(COLLECTORS, "readers_base.py"))
        if m.startswith("infdebug.collectors.readers_")
    } - {"infdebug.collectors.readers_fields", "infdebug.collectors.readers_shipper"}
