"""Chat-template drift analyzers on real artifacts: the Llama-3 tokenizer and templates from
../shared/data, and the reference engine's sample logs (canary r3 ran with --inject double-bos)."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from infdebug.analyzers.base import AnalysisContext
from infdebug.analyzers.template_drift import classify_mismatch, skeleton, template_drift
from infdebug.collectors.ingest import ingest_paths
from infdebug.schema import Finding, Request, encode_records, read_records
from infdebug.store import Store
from infdebug.text.template import fixed_now, load_template, render_chat, template_fingerprint
from infdebug.text.tokenizer import TokenizerBundle, encode_prompt, load_tokenizer
from tests.conftest import REPO, make_request

SYSTEMS = ["You are terse.", "Answer in French.", "You are a careful assistant."]


def conversation(i: int) -> list[dict[str, Any]]:
    """Mixed shapes: with and without a system message, one or two user turns."""
    msgs: list[dict[str, Any]] = []
    if i % 3 == 0:
        msgs.append({"role": "system", "content": SYSTEMS[i % len(SYSTEMS)]})
    msgs.append({"role": "user", "content": f"What is {i} plus {i * 7}? Explain briefly."})
    if i % 4 == 1:
        msgs.append({"role": "assistant", "content": f"It is {i * 8}."})
        msgs.append({"role": "user", "content": "And doubled?"})
    return msgs


@pytest.fixture(scope="module")
def llama3(request: pytest.FixtureRequest) -> TokenizerBundle:
    from tests.conftest import SHARED_DATA

    path = os.path.join(SHARED_DATA, "tokenizers", "llama3")
    if not os.path.isdir(path):
        pytest.skip(f"real Llama-3 tokenizer {path} is absent (set INFDEBUG_SHARED_DATA)")
    return load_tokenizer(path)


def template(shared_data: str, name: str) -> str:
    return load_template(os.path.join(shared_data, "templates", name))


def ingest(store: Store, tmp_path: Any, records: list[Request]) -> None:
    path = tmp_path / "synthetic.requests.jsonl"
    path.write_bytes(encode_records(list(records)))
    report = ingest_paths(store, [str(path)], rejects_path=str(tmp_path / "rejects.jsonl"))
    assert not report.errors


def fleet(
    tok: TokenizerBundle,
    plan: dict[str, tuple[str, Callable[[str], list[int]]]],
    n: int,
    *,
    render: Callable[[str, list[dict[str, Any]]], str] | None = None,
    deployment: str = "stable",
) -> list[Request]:
    """``n`` requests per replica; ``plan`` maps replica → (template source, encoder)."""
    out = []
    for rep, (tpl, enc) in plan.items():
        for i in range(n):
            msgs = conversation(i)
            t = 1_764_000_000.0 + i * 37.0
            with fixed_now(datetime.fromtimestamp(t)):
                text = (
                    render(tpl, msgs)
                    if render
                    else render_chat(tpl, msgs, bos_token=tok.bos_token, eos_token=tok.eos_token)
                )
            out.append(
                make_request(
                    i,
                    request_id=f"{rep}-{i}",
                    replica=rep,
                    deployment=deployment,
                    t_arrival=t,
                    model="llama-3",
                    messages=msgs,
                    prompt_text=text,
                    prompt_ids=enc(text),
                    template_fp=template_fingerprint(tpl),
                    tokenizer_fp=tok.fingerprint,
                )
            )
    return out


def kinds(findings: list[Finding]) -> list[tuple[str, str | None]]:
    return sorted((f.kind, (f.scope or {}).get("replica")) for f in findings)


def above_info(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity != "info"]


# --- double / missing BOS ----------------------------------------------------------------


def test_llama31_special_tokens_give_the_double_bos(
    shared_data: str, llama3: TokenizerBundle
) -> None:
    tpl = template(shared_data, "llama3.1.jinja")
    text = render_chat(
        tpl,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        bos_token=llama3.bos_token,
        eos_token=llama3.eos_token,
    )
    assert llama3.encode(text, add_special_tokens=True)[:3] == [128000, 128000, 128006]
    assert encode_prompt(llama3, text)[:2] == [128000, 128006]


def test_double_bos_found_on_the_replica_that_adds_special_tokens(
    store: Store, tmp_path: Any, shared_data: str, llama3: TokenizerBundle
) -> None:
    tpl = template(shared_data, "llama3.1.jinja")
    recs = fleet(
        llama3,
        {
            "good": (tpl, lambda s: encode_prompt(llama3, s)),
            "bad": (tpl, lambda s: llama3.encode(s, add_special_tokens=True)),
        },
        30,
    )
    ingest(store, tmp_path, recs)
    found = template_drift(AnalysisContext(store=store, tokenizer=llama3, template=tpl))
    assert kinds(above_info(found)) == [("template.double_bos", "bad")]
    f = found[0]
    assert f.severity == "error" and f.values is not None and f.evidence is not None
    assert f.values["bos_id"] == 128000 and f.values["bos_source"] == "tokenizer"
    assert f.values["share"] == 1.0 and f.values["affected"] == 30
    assert f.evidence["first_ids"][:3] == [128000, 128000, 128006]
    assert f.evidence["first_pieces"][:3] == [
        "<|begin_of_text|>",
        "<|begin_of_text|>",
        "<|start_header_id|>",
    ]
    assert f.evidence["request_ids"][0] == "bad-0"
    assert f.evidence["share_by_replica"] == {"bad (stable)": 1.0, "good (stable)": 0.0}


def test_bos_is_inferred_model_by_model(
    store: Store, tmp_path: Any, shared_data: str, llama3: TokenizerBundle
) -> None:
    """A second model served from the same fleet (prompts of plain text, no BOS) must neither
    hide the first model's doubled BOS nor be blamed for missing one."""
    tpl = template(shared_data, "llama3.1.jinja")
    recs = fleet(
        llama3,
        {
            "r1": (tpl, lambda s: encode_prompt(llama3, s)),
            "r2": (tpl, lambda s: llama3.encode(s, add_special_tokens=True)),
        },
        30,
    )
    plain = [
        make_request(
            100 + i,
            request_id=f"plain-{i}",
            replica=f"r{1 + i % 2}",
            model="completion-model",
            prompt_text=f"Once upon a time {i}",
            prompt_ids=llama3.encode(f"Once upon a time {i}"),
        )
        for i in range(60)
    ]
    ingest(store, tmp_path, recs + plain)
    found = above_info(template_drift(AnalysisContext(store=store)))
    assert kinds(found) == [("template.double_bos", "r2")]
    assert found[0].values is not None and found[0].values["model"] == "llama-3"
    assert found[0].values["bos_id"] == 128000 and found[0].values["bos_source"] == "inferred"


def test_missing_bos_when_the_tokenizer_adds_one(
    store: Store, tmp_path: Any, shared_data: str, llama3: TokenizerBundle
) -> None:
    tpl = template(shared_data, "llama3.1.jinja")
    recs = fleet(
        llama3,
        {
            "good": (tpl, lambda s: encode_prompt(llama3, s)),
            "nobos": (tpl, lambda s: encode_prompt(llama3, s)[1:]),
        },
        20,
    )
    ingest(store, tmp_path, recs)
    found = template_drift(AnalysisContext(store=store, tokenizer=llama3))
    assert kinds(above_info(found)) == [("template.missing_bos", "nobos")]


# --- skeletons and fingerprints ----------------------------------------------------------


def test_llama3_vs_llama31_is_a_new_skeleton_and_a_fingerprint_mismatch(
    store: Store, tmp_path: Any, shared_data: str, llama3: TokenizerBundle
) -> None:
    old, new = template(shared_data, "llama3.jinja"), template(shared_data, "llama3.1.jinja")

    def enc(s: str) -> list[int]:
        return encode_prompt(llama3, s)

    recs = fleet(llama3, {"r1": (old, enc), "r2": (old, enc), "r3": (new, enc)}, 40)
    ingest(store, tmp_path, recs)
    found = template_drift(AnalysisContext(store=store))  # no reference at all
    assert kinds(above_info(found)) == [
        ("template.fingerprint_mismatch", "r3"),
        ("template.new_skeleton", "r3"),
    ]
    sk = next(f for f in found if f.kind == "template.new_skeleton")
    assert sk.evidence is not None and sk.values is not None
    assert "Cutting Knowledge Date: December 2023" in sk.evidence["skeleton"]
    assert "Cutting Knowledge Date" not in sk.evidence["fleet_skeleton"]
    assert sk.evidence["request_ids"] and all(
        r.startswith("r3-") for r in sk.evidence["request_ids"]
    )
    assert sk.evidence["diff"]["reference"] is not None
    fp = next(f for f in found if f.kind == "template.fingerprint_mismatch")
    assert fp.values is not None and fp.values["template_fp"] == template_fingerprint(new)
    assert fp.values["fleet_template_fp"] == template_fingerprint(old)


def test_a_whole_canary_deployment_on_the_new_template_is_found_at_deployment_level(
    store: Store, tmp_path: Any, shared_data: str, llama3: TokenizerBundle
) -> None:
    """Two canary replicas agree with each other on Llama-3.1's template: replica against
    rest of fleet cannot see it (the rest holds their sibling); deployment against deployment
    can, and the established skeleton (the larger baseline's) is not the one called new."""
    old, new = template(shared_data, "llama3.jinja"), template(shared_data, "llama3.1.jinja")

    def enc(s: str) -> list[int]:
        return encode_prompt(llama3, s)

    recs = fleet(
        llama3, {"r1": (old, enc), "r2": (old, enc), "r3": (old, enc)}, 30, deployment="baseline"
    )
    recs += fleet(llama3, {"r4": (new, enc), "r5": (new, enc)}, 30, deployment="canary")
    ingest(store, tmp_path, recs)
    found = [
        f for f in template_drift(AnalysisContext(store=store)) if f.kind == "template.new_skeleton"
    ]
    assert [(f.scope or {}).get("deployment") for f in found] == ["canary"]
    assert "replica" not in (found[0].scope or {}) and "deployment canary" in found[0].summary
    assert "Cutting Knowledge Date" in found[0].evidence["skeleton"]  # type: ignore[index]


def test_a_template_change_in_the_middle_of_the_window_is_a_new_skeleton(
    store: Store, tmp_path: Any, shared_data: str, llama3: TokenizerBundle
) -> None:
    """r3 switched templates after 70% of its requests: the new skeleton is a minority on r3
    yet new to the fleet, and first_seen is the switch."""
    old, new = template(shared_data, "llama3.jinja"), template(shared_data, "llama3.1.jinja")

    def enc(s: str) -> list[int]:
        return encode_prompt(llama3, s)

    recs = fleet(llama3, {"r1": (old, enc), "r2": (old, enc)}, 40)
    switched = fleet(llama3, {"r3": (old, enc)}, 40)
    late = {
        r.request_id
        for r in fleet(llama3, {"r3": (new, enc)}, 40)
        if r.t_arrival >= switched[28].t_arrival
    }
    newer = {r.request_id: r for r in fleet(llama3, {"r3": (new, enc)}, 40)}
    recs += [newer[r.request_id] if r.request_id in late else r for r in switched]
    ingest(store, tmp_path, recs)
    found = [
        f for f in template_drift(AnalysisContext(store=store)) if f.kind == "template.new_skeleton"
    ]
    assert [(f.scope or {}).get("replica") for f in found] == ["r3"]
    assert found[0].scope["t_start"] >= switched[28].t_arrival  # type: ignore[index]


def test_skeleton_masks_contents_and_the_clock_date(shared_data: str) -> None:
    tpl = template(shared_data, "llama3.1.jinja")
    msgs = [{"role": "user", "content": "Hello there"}]
    a = render_chat(tpl, msgs, bos_token="<|begin_of_text|>", date_string="26 Jul 2024")
    b = render_chat(
        tpl,
        [{"role": "user", "content": "Other words"}],
        bos_token="<|begin_of_text|>",
        date_string="01 Jan 2025",
    )
    assert skeleton(a, msgs) == skeleton(b, [{"role": "user", "content": "Other words"}])
    assert "{user}" in skeleton(a, msgs) and "Cutting Knowledge Date: December 2023" in skeleton(
        a, msgs
    )
    # without messages: contents masked between markers, fixed lines kept
    assert skeleton(a, None) == skeleton(b, None)
    assert "Hello" not in skeleton(a, None) and "Cutting Knowledge Date" in skeleton(a, None)


# --- render mismatch ---------------------------------------------------------------------


def test_render_mismatch_classes(
    store: Store, tmp_path: Any, shared_data: str, llama3: TokenizerBundle
) -> None:
    tpl = template(shared_data, "llama3.1.jinja")
    bos, eos = llama3.bos_token, llama3.eos_token

    def no_gen(t: str, msgs: list[dict[str, Any]]) -> str:
        return render_chat(t, msgs, add_generation_prompt=False, bos_token=bos, eos_token=eos)

    def drop_system(t: str, msgs: list[dict[str, Any]]) -> str:
        return render_chat(
            t, [m for m in msgs if m["role"] != "system"], bos_token=bos, eos_token=eos
        )

    def enc(s: str) -> list[int]:
        return encode_prompt(llama3, s)

    recs = fleet(llama3, {"ok": (tpl, enc)}, 30)
    recs += fleet(llama3, {"nogen": (tpl, enc)}, 30, render=no_gen)
    recs += fleet(llama3, {"nosys": (tpl, enc)}, 30, render=drop_system)
    ingest(store, tmp_path, recs)
    found = [
        f
        for f in template_drift(AnalysisContext(store=store, tokenizer=llama3, template=tpl))
        if f.kind == "template.render_mismatch"
    ]
    by_rep = {(f.scope or {})["replica"]: f for f in found}
    assert set(by_rep) == {"nogen", "nosys"}
    assert (
        by_rep["nogen"].values is not None
        and by_rep["nogen"].values["class"] == "missing_generation_prompt"
    )
    assert by_rep["nogen"].values["mismatched"] == 30 and by_rep["nogen"].severity == "error"
    nosys = by_rep["nosys"]
    assert nosys.values is not None and nosys.values["class"] == "system_dropped"
    assert nosys.values["mismatched"] == 10  # the conversations that had a system message
    assert nosys.evidence is not None
    diff = nosys.evidence["diff"]
    assert diff["after_marker"] == "<|end_header_id|>"
    assert diff["logged"] != diff["reference"] and SYSTEMS[0] in diff["reference"]


def test_classify_whitespace_and_role_marker() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    ref = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert classify_mismatch(ref.replace("\n", " "), ref, None, msgs) == "whitespace"
    assert (
        classify_mismatch(ref.replace("<|im_start|>user", "<|im_start|>human"), ref, None, msgs)
        == "role_marker"
    )


# --- the reference engine's sample logs ---------------------------------------------------


def sample_tokenizer(tmp_path: Any) -> TokenizerBundle:
    """The sample fleet's tokenizer, rebuilt the way ``make-model --preset small`` trains it."""
    from infdebug.tracer.engine.make_model import PRESETS, train_tokenizer, write_tokenizer

    out = str(tmp_path / "tok")
    os.makedirs(out)
    tok = train_tokenizer(PRESETS["small"]["vocab_size"], "llama3")
    write_tokenizer(tok, "llama3", out, PRESETS["small"]["max_position_embeddings"])
    return load_tokenizer(out)


@pytest.mark.parametrize("with_tokenizer", [True, False], ids=["tokenizer", "inferred"])
def test_sample_logs_double_bos_only_on_canary_r3(
    store: Store, tmp_path: Any, with_tokenizer: bool
) -> None:
    logs = [os.path.join(REPO, "sample_logs", d) for d in ("baseline", "canary")]
    report = ingest_paths(store, logs, rejects_path=str(tmp_path / "rejects.jsonl"))
    assert not report.errors
    tok = None
    if with_tokenizer:
        tok = sample_tokenizer(tmp_path)
        assert tok.fingerprint == "tok-c02fa7267fc8868267d7"  # the sample fleet's tokenizer_fp
    found = template_drift(AnalysisContext(store=store, tokenizer=tok))
    # the fault is on from the canary r3's first request (read from its log: `make sample-logs`
    # remakes it)
    r3 = sorted(
        (
            r
            for path in glob.glob(
                os.path.join(REPO, "sample_logs", "canary", "r3-*.requests.jsonl")
            )
            for _, r in read_records(path)
            if isinstance(r, Request)
        ),
        key=lambda r: (r.t_arrival, r.request_id),
    )
    t_start = r3[0].t_arrival
    assert [(f.kind, f.scope) for f in above_info(found)] == [
        (
            "template.double_bos",
            {"replica": "r3", "deployment": "canary", "t_start": pytest.approx(t_start)},
        )
    ]
    f = above_info(found)[0]
    assert f.severity == "error" and f.values is not None and f.evidence is not None
    assert f.values["bos_id"] == 5072 and f.values["affected"] == len(
        r3
    )  # every request of canary r3
    assert f.values["bos_source"] == ("tokenizer" if with_tokenizer else "inferred")
    if not with_tokenizer:
        assert f.values["bos_inferred_share"] == 1.0 and f.values["bos_text"] == "<|begin_of_text|>"
    assert f.evidence["first_ids"][:2] == [5072, 5072]
    assert f.evidence["request_ids"][0] == r3[0].request_id  # the earliest


# --- no false alarms -----------------------------------------------------------------------


def test_clean_fleet_with_mixed_conversations_reports_nothing(
    store: Store, tmp_path: Any, shared_data: str, llama3: TokenizerBundle
) -> None:
    tpl = template(shared_data, "llama3.1.jinja")

    def enc(s: str) -> list[int]:
        return encode_prompt(llama3, s)

    recs = fleet(llama3, {"r1": (tpl, enc), "r2": (tpl, enc)}, 60, deployment="stable")
    recs += fleet(llama3, {"r3": (tpl, enc)}, 60, deployment="canary")
    ingest(store, tmp_path, recs)
    assert above_info(template_drift(AnalysisContext(store=store))) == []
    assert (
        above_info(template_drift(AnalysisContext(store=store, tokenizer=llama3, template=tpl)))
        == []
    )


def test_no_bos_inferred_when_prompts_start_with_text(store: Store, tmp_path: Any) -> None:
    recs = [
        make_request(i, prompt_text=f"hello {i}", prompt_ids=[22, 22, 5 + i], messages=None)
        for i in range(30)
    ]
    ingest(store, tmp_path, recs)
    assert above_info(template_drift(AnalysisContext(store=store))) == []


@pytest.mark.parametrize("name", ["llama3.1.jinja", "qwen2.5.jinja"])
def test_skeleton_masks_tool_definitions_and_calls(shared_data: str, name: str) -> None:
    """Tools a client sends and the calls' arguments are content: two clients with other tools
    and other arguments render to one skeleton on the real Llama-3.1 and Qwen2.5 templates."""
    from infdebug.analyzers.template_text import mask_json

    tpl = template(shared_data, name)

    def tool(fn: str, param: str) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": fn,
                "description": f"Look up {param}.",
                "parameters": {
                    "type": "object",
                    "properties": {param: {"type": "string"}},
                    "required": [param],
                },
            },
        }

    def render(fn: str, param: str, value: str) -> tuple[str, list[dict[str, Any]]]:
        msgs: list[dict[str, Any]] = [
            {"role": "user", "content": f"What about {value}?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": {"name": fn, "arguments": {param: value}}}
                ],
            },
            {"role": "tool", "content": f"{value}: fine"},
        ]
        return render_chat(
            tpl,
            msgs,
            tools=[tool(fn, param)],
            bos_token="<|begin_of_text|>",
            date_string="26 Jul 2024",
        ), msgs

    a, ma = render("get_weather", "city", "Paris")
    b, mb = render("find_flight", "airport", "Tokyo Haneda")
    assert a != b and skeleton(a, ma) == skeleton(b, mb)
    # templates that print a call's Python repr instead of JSON
    assert (
        mask_json("[TOOL_CALLS] [{'name': 'f', 'arguments': {'q': \"it's\"}}]</s>")
        == "[TOOL_CALLS] {json}</s>"
    )
