"""Chat-template rendering with transformers' semantics.

The conformance suite is huggingface.js's (../shared/data/templates/hfjs_e2e_cases.json):
53 real templates with their inputs and expected outputs. huggingface.js is a JavaScript
Jinja; where its expectation differs from what transformers (Python Jinja) renders, the case
is listed in KNOWN_FAILURES with the reason and must keep failing for that reason.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from functools import lru_cache
from typing import Any

import pytest
from conftest import SHARED_DATA

from infdebug.text.config import TextFormatError
from infdebug.text.template import (
    ChatTemplateError,
    compile_template,
    fixed_now,
    load_template,
    render_chat,
    template_fingerprint,
)
from infdebug.text.tokenizer import encode_prompt, load_tokenizer

CASES_PATH = os.path.join(SHARED_DATA, "templates", "hfjs_e2e_cases.json")

# case → why our (transformers-semantics) output differs from huggingface.js's expectation
KNOWN_FAILURES = {
    "MadeAgents/Hammer2.1": (
        "JS-specific: the template prints `tools|string`; huggingface.js stringifies objects as "
        "JSON ({\"type\": \"function\"}), Python Jinja as the Python repr ({'type': 'function'}), "
        "which is what transformers feeds the model"
    ),
    "ai21labs/AI21-Jamba-Large-1.6": (
        "harness semantics: the case leaves add_generation_prompt undefined and the template "
        "defaults it to true (`is not defined`); transformers always defines it (False unless "
        "asked), so the generation prompt is not rendered"
    ),
}
# what huggingface.js's test pins (it fakes the clock for strftime_now)
CASE_NOW = {"HuggingFaceTB/SmolLM3-3B": datetime(2025, 7, 10, 12, 0, 0)}


@lru_cache(maxsize=1)
def _cases() -> list[tuple[str, dict[str, Any]]]:
    if not os.path.isfile(CASES_PATH):
        return []
    with open(CASES_PATH, encoding="utf-8") as f:
        data = json.load(f)
    return [(name, case) for group in data.values() for name, case in group.items()]


def _render_case(name: str, case: dict[str, Any]) -> str:
    """Render a case as transformers' apply_chat_template(tokenize=False) would: the case's
    variables are template kwargs; add_generation_prompt defaults to False as there."""
    data = dict(case["data"])
    messages = data.pop("messages")
    add_generation_prompt = data.pop("add_generation_prompt", False)
    with fixed_now(CASE_NOW.get(name)):
        return render_chat(
            case["chat_template"], messages, add_generation_prompt=add_generation_prompt, **data
        )


def _first_difference(got: str, want: str) -> str:
    i = next(
        (k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
        min(len(got), len(want)),
    )
    return (
        f"at char {i}: got {got[max(0, i - 30) : i + 50]!r}, want {want[max(0, i - 30) : i + 50]!r}"
    )


def _params() -> list[Any]:
    out = []
    for name, _ in _cases():
        marks = (
            [pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[name])]
            if name in KNOWN_FAILURES
            else []
        )
        out.append(pytest.param(name, marks=marks, id=name))
    return out or [
        pytest.param(None, marks=pytest.mark.skip(reason=f"{CASES_PATH} is absent"), id="no-data")
    ]


@pytest.mark.parametrize("name", _params())
def test_hfjs_case(name: str) -> None:
    case = dict(_cases())[name]
    got = _render_case(name, case)
    assert got == case["target"], _first_difference(got, case["target"])


def test_hfjs_conformance_count(shared_data: str, capsys: pytest.CaptureFixture[str]) -> None:
    cases = _cases()
    assert len(cases) == 53, f"expected the 53 huggingface.js cases, found {len(cases)}"
    failures: dict[str, str] = {}
    for name, case in cases:
        try:
            got = _render_case(name, case)
        except ChatTemplateError as e:
            failures[name] = f"raised: {e}"
            continue
        if got != case["target"]:
            failures[name] = _first_difference(got, case["target"])
    passed = len(cases) - len(failures)
    with capsys.disabled():
        print(f"\nhuggingface.js conformance: {passed}/{len(cases)} byte-for-byte")
        for name, why in failures.items():
            print(f"  FAIL {name}: {KNOWN_FAILURES.get(name, 'UNEXPECTED')}\n       {why}")
    assert passed >= 50
    assert set(failures) <= set(KNOWN_FAILURES), (
        f"unexpected failures: {set(failures) - set(KNOWN_FAILURES)}"
    )


def test_known_failures_fail_for_the_stated_reason(shared_data: str) -> None:
    cases = dict(_cases())
    hammer = _render_case("MadeAgents/Hammer2.1", cases["MadeAgents/Hammer2.1"])
    assert "[{'type': 'function', 'function': {'name': 'get_current_temperature'" in hammer
    jamba_case = cases["ai21labs/AI21-Jamba-Large-1.6"]
    assert "add_generation_prompt" not in jamba_case["data"]
    # with add_generation_prompt=True (what the JS harness's `undefined` amounts to) it matches
    data = dict(jamba_case["data"])
    messages = data.pop("messages")
    assert (
        render_chat(jamba_case["chat_template"], messages, add_generation_prompt=True, **data)
        == jamba_case["target"]
    )


# --- Llama-3.1: the double BOS ---------------------------------------------------------------


def test_llama31_double_bos_and_encode_prompt(shared_data: str) -> None:
    template = load_template(os.path.join(shared_data, "templates", "llama3.1.jinja"))
    bundle = load_tokenizer(os.path.join(shared_data, "tokenizers", "llama3"))
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    rendered = render_chat(
        template, messages, bos_token=bundle.bos_token, eos_token=bundle.eos_token
    )
    assert rendered.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    doubled = bundle.encode(rendered, add_special_tokens=True)
    assert doubled[:3] == [128000, 128000, 128006]
    single = encode_prompt(bundle, rendered)
    assert single[:2] == [128000, 128006] and single.count(128000) == 1
    assert single == doubled[1:]
    assert single[-4:] == [128006, 78191, 128007, 271]  # assistant header, then "\n\n"


# --- the environment transformers builds -------------------------------------------------------


def test_tojson_is_not_html_escaped_and_keeps_unicode() -> None:
    tpl = (
        "{{ x|tojson }}|{{ x|tojson(indent=2) }}|"
        "{{ x|tojson(sort_keys=true, separators=(',', ':')) }}"
    )
    x = {"z": "<b>&'é</b>", "a": [1, None]}
    assert render_chat(tpl, [], x=x) == (
        '{"z": "<b>&\'é</b>", "a": [1, null]}|'
        + json.dumps(x, ensure_ascii=False, indent=2)
        + '|{"a":[1,null],"z":"<b>&\'é</b>"}'
    )


def test_raise_exception_carries_the_template_message() -> None:
    tpl = (
        "{% if messages[0]['role'] != 'user' %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
        "{% endif %}"
    )
    with pytest.raises(ChatTemplateError) as e:
        render_chat(tpl, [{"role": "assistant", "content": "x"}])
    assert str(e.value) == "Conversation roles must alternate user/assistant"
    assert e.value.raised_by_template
    assert render_chat(tpl, [{"role": "user", "content": "x"}]) == ""


def test_syntax_and_runtime_errors_become_chat_template_errors() -> None:
    with pytest.raises(ChatTemplateError, match="line 2") as e:
        render_chat("ok\n{% if %}", [])
    assert e.value.lineno == 2 and not e.value.raised_by_template
    with pytest.raises(ChatTemplateError, match="TypeError"):
        render_chat("{{ 'a' + messages[0].content }}", [{"role": "user", "content": None}])
    # the sandbox is immutable: a template cannot change the caller's messages
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(ChatTemplateError):
        render_chat("{{ messages.append({'role': 'x'}) }}", msgs)
    assert msgs == [{"role": "user", "content": "x"}]


def test_trim_blocks_lstrip_blocks_and_loop_controls() -> None:
    tpl = (
        "{% for m in messages %}\n"
        "    {% if m.role == 'skip' %}{% continue %}{% endif %}\n"
        "[{{ m.content }}]\n"
        "    {% if loop.index == 3 %}{% break %}{% endif %}\n"
        "{% endfor %}"
    )
    msgs = [{"role": r, "content": str(i)} for i, r in enumerate(["u", "skip", "u", "u", "u"])]
    assert render_chat(tpl, msgs) == "[0]\n[2]\n"


def test_generation_tag_renders_its_body() -> None:
    tpl = (
        "{% for m in messages %}"
        "{% if m.role == 'assistant' %}{% generation %}A:{{ m.content }}{% endgeneration %}"
        "{% else %}U:{{ m.content }}{% endif %}"
        "{% endfor %}"
    )
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert render_chat(tpl, msgs) == "U:hiA:yo"


def test_variables_as_transformers_passes_them() -> None:
    tpl = (
        "{{ bos_token }}|{{ eos_token is defined }}|{{ add_generation_prompt }}|"
        "{{ tools is none }}|{{ documents is none }}|{{ unk_token }}|{{ enable_thinking }}"
    )
    # unset special tokens stay undefined (render as ""), never as the string "None"
    assert render_chat(tpl, []) == "|False|True|True|True||"
    assert (
        render_chat(
            tpl,
            [],
            bos_token="<s>",
            eos_token="</s>",
            add_generation_prompt=False,
            unk_token=None,
            enable_thinking=False,
        )
        == "<s>|True|False|True|True||False"
    )


def test_strftime_now_uses_the_given_time() -> None:
    tpl = "{{ strftime_now('%d %B %Y') }}"
    with fixed_now(datetime(2024, 7, 26)):
        assert render_chat(tpl, []) == "26 July 2024"
        with fixed_now(None):
            assert render_chat(tpl, []) == datetime.now().strftime("%d %B %Y")
        assert render_chat(tpl, []) == "26 July 2024"
    assert render_chat(tpl, []) == datetime.now().strftime("%d %B %Y")


def test_smollm3_generation_tag_template(shared_data: str) -> None:
    template = load_template(os.path.join(shared_data, "templates", "smollm3.jinja"))
    assert "{% generation %}" in template
    msgs = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    with fixed_now(datetime(2025, 7, 10)):
        out = render_chat(template, msgs)
    assert "Today Date: 10 July 2025" in out and "Hello!" in out
    assert out.endswith("<|im_start|>assistant\n")


# --- loading and fingerprints ----------------------------------------------------------------


def test_template_fingerprint_is_whitespace_exact() -> None:
    a = "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert template_fingerprint(a) == template_fingerprint(str(a))
    assert template_fingerprint(a).startswith("tpl-")
    assert (
        len({template_fingerprint(t) for t in (a, a + "\n", a.replace("{{ ", "{{"), " " + a)}) == 4
    )


def test_load_template_sources(tmp_path: Any) -> None:
    src = "{{ bos_token }}\r\n{% for m in messages %}{{ m.content }}{% endfor %}\n"
    (tmp_path / "t.jinja").write_bytes(src.encode())
    assert load_template(str(tmp_path / "t.jinja")) == src  # exact: CRLF and the final newline kept
    cfg = {
        "chat_template": [
            {"name": "tool_use", "template": "T"},
            {"name": "default", "template": "D"},
        ]
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert load_template(str(tmp_path / "tokenizer_config.json")) == "D"
    assert (
        load_template(str(tmp_path)) == "D"
    )  # a directory: no chat_template.jinja, so the config's
    (tmp_path / "chat_template.jinja").write_text("J")
    assert load_template(str(tmp_path)) == "J"
    (tmp_path / "other.json").write_text('{"bos_token": "<s>"}')
    with pytest.raises(TextFormatError, match=r"other\.json: expected a \"chat_template\""):
        load_template(str(tmp_path / "other.json"))
    with pytest.raises(TextFormatError, match="cannot read"):
        load_template(str(tmp_path / "missing.jinja"))


def test_real_templates_compile(shared_data: str) -> None:
    folder = os.path.join(shared_data, "templates")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".jinja"))
    assert len(names) >= 30
    for n in names:
        compile_template(load_template(os.path.join(folder, n)))


def test_same_output_as_transformers(shared_data: str) -> None:
    """Where transformers is installed (it is not a dependency), our rendering of every real
    template must equal its own, byte for byte, error messages included."""
    chat_template_utils = pytest.importorskip("transformers.utils.chat_template_utils")
    folder = os.path.join(shared_data, "templates")
    conversations = [
        [{"role": "user", "content": "Hi there"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "A joke?"},
        ],
    ]
    specials = {"bos_token": "<s>", "eos_token": "</s>"}
    compared = 0
    for name in sorted(n for n in os.listdir(folder) if n.endswith(".jinja")):
        template = load_template(os.path.join(folder, name))
        if "strftime_now" in template:
            # the date would differ between the two calls only around midnight; skip the race
            continue
        for messages in conversations:
            for agp in (True, False):
                try:
                    theirs = chat_template_utils.render_jinja_template(
                        conversations=[messages],
                        chat_template=template,
                        add_generation_prompt=agp,
                        **specials,
                    )[0][0]
                except Exception as e:
                    with pytest.raises(ChatTemplateError) as ours_err:
                        render_chat(template, messages, add_generation_prompt=agp, **specials)
                    assert str(ours_err.value) == str(e), name
                else:
                    assert (
                        render_chat(template, messages, add_generation_prompt=agp, **specials)
                        == theirs
                    ), name
                compared += 1
    assert compared >= 150
