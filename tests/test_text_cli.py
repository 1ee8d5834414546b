"""``infdebug template render / tokenize / detokenize / fingerprint`` through click's CliRunner
(in process: these commands never open the store)."""

from __future__ import annotations

import json
import os
from typing import Any

import click
import pytest
import tokenizers
from click.testing import CliRunner, Result
from tokenizers import decoders, models, pre_tokenizers, trainers

from infdebug.cli.text import register, visible
from infdebug.text.template import template_fingerprint
from infdebug.text.tokenizer import load_tokenizer

CHATML = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if tools %}{{ 'TOOLS:' + tools|map(attribute='name')|join(',') + '\\n' }}{% endif %}"
    "{% if documents %}{{ 'DOCS:' + documents|length|string + '\\n' }}{% endif %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def group() -> click.Group:
    g = click.Group("infdebug")
    register(g)
    return g


def run(group: click.Group, *args: str) -> Result:
    return CliRunner().invoke(group, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model directory with a tokenizer trained here and a ChatML template."""
    d = tmp_path_factory.mktemp("model")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=350,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["hello world\n\thello there", "the world says hello"] * 30, trainer)
    tok.save(str(d / "tokenizer.json"))
    cfg = {
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "chat_template": CHATML,
        "tokenizer_class": "Qwen2Tokenizer",
    }
    (d / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return str(d)


@pytest.fixture
def messages_file(tmp_path: Any) -> str:
    p = tmp_path / "messages.json"
    p.write_text(json.dumps([{"role": "user", "content": "Hi"}]), encoding="utf-8")
    return str(p)


# --- template render -------------------------------------------------------------------------


def test_render_prints_exactly_the_prompt(
    group: click.Group, tmp_path: Any, messages_file: str
) -> None:
    (tmp_path / "t.jinja").write_text(CHATML, encoding="utf-8")
    r = run(group, "template", "render", str(tmp_path / "t.jinja"), "--messages", messages_file)
    assert r.exit_code == 0
    assert r.stdout == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    r = run(
        group,
        "template",
        "render",
        str(tmp_path / "t.jinja"),
        "--messages",
        messages_file,
        "--no-generation-prompt",
    )
    assert (
        r.stdout == "<|im_start|>user\nHi<|im_end|>\n"
    )  # no newline added after the prompt either way


def test_render_json_and_messages_object_with_tools(group: click.Group, tmp_path: Any) -> None:
    (tmp_path / "t.jinja").write_text(CHATML, encoding="utf-8")
    (tmp_path / "m.json").write_text(
        json.dumps(
            {
                "messages": [{"role": "user", "content": "é"}],
                "tools": [{"name": "f"}],
                "documents": [{"text": "d"}],
            }
        )
    )
    r = run(
        group,
        "template",
        "render",
        str(tmp_path / "t.jinja"),
        "--messages",
        str(tmp_path / "m.json"),
        "--json",
    )
    out = json.loads(r.stdout)
    assert out == {
        "rendered": "<|im_start|>user\né<|im_end|>\nTOOLS:f\nDOCS:1\n<|im_start|>assistant\n",
        "template_fp": template_fingerprint(CHATML),
    }
    (tmp_path / "tools.json").write_text(json.dumps([{"name": "g"}, {"name": "h"}]))
    r = run(
        group,
        "template",
        "render",
        str(tmp_path / "t.jinja"),
        "--messages",
        str(tmp_path / "m.json"),
        "--tools",
        str(tmp_path / "tools.json"),
        "--no-generation-prompt",
    )
    assert r.stdout.endswith("TOOLS:g,h\nDOCS:1\n")


def test_render_special_tokens_and_vars(
    group: click.Group, tmp_path: Any, messages_file: str
) -> None:
    (tmp_path / "t.jinja").write_text(
        "{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ enable_thinking }}|{{ n + 1 }}"
    )
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": {"content": "<s>", "special": True},
                "eos_token": "</s>",
                "pad_token": "<pad>",
                "chat_template": "C",
            }
        )
    )
    args = ["template", "render", str(tmp_path / "t.jinja"), "--messages", messages_file]
    r = run(group, *args)
    assert r.exit_code == 2 and "'n' is undefined" in r.stderr
    r = run(group, *args, "--var", "n=1")
    assert r.stdout == "||||2"
    r = run(
        group,
        *args,
        "--tokenizer-config",
        str(tmp_path / "tokenizer_config.json"),
        "--eos-token",
        "<eos>",
        "--var",
        "enable_thinking=false",
        "--var",
        "n=41",
    )
    assert r.stdout == "<s>|<eos>|<pad>|False|42"
    r = run(group, *args, "--var", "add_generation_prompt=false")
    assert r.exit_code == 2 and "--no-generation-prompt" in r.stderr


def test_render_now(group: click.Group, tmp_path: Any, messages_file: str) -> None:
    (tmp_path / "t.jinja").write_text("{{ strftime_now('%Y-%m-%d') }}")
    r = run(
        group,
        "template",
        "render",
        str(tmp_path / "t.jinja"),
        "--messages",
        messages_file,
        "--now",
        "2024-07-26T10:00:00",
    )
    assert r.stdout == "2024-07-26"
    r = run(
        group,
        "template",
        "render",
        str(tmp_path / "t.jinja"),
        "--messages",
        messages_file,
        "--now",
        "yesterday",
    )
    assert r.exit_code == 2 and "ISO 8601" in r.stderr


def test_render_tokenizer_config_as_template_uses_its_tokens(
    group: click.Group, shared_data: str, messages_file: str
) -> None:
    cfg = os.path.join(shared_data, "tokenizers", "phi-3", "tokenizer_config.json")
    r = run(group, "template", "render", cfg, "--messages", messages_file)
    assert r.exit_code == 0
    assert r.stdout == "<s><|user|>\nHi<|end|>\n<|assistant|>\n"


def test_render_errors_exit_2_with_the_message(
    group: click.Group, tmp_path: Any, messages_file: str
) -> None:
    (tmp_path / "raise.jinja").write_text("{{ raise_exception('System role not supported') }}")
    r = run(group, "template", "render", str(tmp_path / "raise.jinja"), "--messages", messages_file)
    assert r.exit_code == 2 and r.stdout == ""
    assert "System role not supported" in r.stderr
    (tmp_path / "syntax.jinja").write_text("{% for m in messages %}")
    r = run(
        group, "template", "render", str(tmp_path / "syntax.jinja"), "--messages", messages_file
    )
    assert r.exit_code == 2 and "syntax error at line 1" in r.stderr
    (tmp_path / "bad.json").write_text('{"msgs": []}')
    r = run(
        group,
        "template",
        "render",
        str(tmp_path / "raise.jinja"),
        "--messages",
        str(tmp_path / "bad.json"),
    )
    assert (
        r.exit_code == 2
        and 'expected a JSON list of messages or an object with "messages"' in r.stderr
    )
    r = run(group, "template", "render", str(tmp_path / "nope.jinja"), "--messages", messages_file)
    assert r.exit_code == 2 and "nope.jinja" in r.stderr


# --- tokenize / detokenize -------------------------------------------------------------------


def test_visible_whitespace() -> None:
    assert visible("a b\n\tc\r") == "a␣b↵→c␍"


def test_tokenize_table_and_json(group: click.Group, model_dir: str) -> None:
    bundle = load_tokenizer(model_dir)
    text = "hello world\n\thello<|im_end|>"
    ids = bundle.encode(text)
    r = run(group, "tokenize", model_dir, text)
    assert r.exit_code == 0
    assert f"{len(ids)} tokens" in r.stdout and bundle.fingerprint in r.stdout
    assert "␣world" in r.stdout and "↵" in r.stdout and "→" in r.stdout and "<|im_end|>" in r.stdout
    out = json.loads(run(group, "tokenize", model_dir, text, "--json").stdout)
    assert out["ids"] == ids and out["count"] == len(ids)
    assert (
        out["pieces"] == [bundle.piece(i) for i in ids]
        and out["tokenizer_fp"] == bundle.fingerprint
    )


def test_tokenize_golden_with_special_tokens(group: click.Group, shared_data: str) -> None:
    path = os.path.join(shared_data, "tokenizers", "llama3", "tokenizer.model")
    out = json.loads(
        run(
            group, "tokenize", path, "This is a test sentence.", "--add-special-tokens", "--json"
        ).stdout
    )
    assert out["ids"] == [128000, 2028, 374, 264, 1296, 11914, 13]
    assert out["pieces"][:3] == ["<|begin_of_text|>", "This", "Ġis"]


def test_detokenize(group: click.Group, model_dir: str) -> None:
    bundle = load_tokenizer(model_dir)
    ids = [str(i) for i in bundle.encode("<|im_start|>hello world\n")]
    r = run(group, "detokenize", model_dir, *ids)
    assert r.exit_code == 0 and r.stdout == "<|im_start|>hello world\n"
    assert (
        run(group, "detokenize", model_dir, *ids, "--skip-special-tokens").stdout == "hello world\n"
    )
    out = json.loads(run(group, "detokenize", model_dir, *ids, "--json").stdout)
    assert out["text"] == "<|im_start|>hello world\n" and out["pieces"][0] == "<|im_start|>"
    r = run(group, "detokenize", model_dir, "5", "999999")
    assert r.exit_code == 2 and "id 999999 is outside the vocabulary" in r.stderr


def test_tokenizer_errors_exit_2(group: click.Group, tmp_path: Any, shared_data: str) -> None:
    r = run(group, "tokenize", str(tmp_path), "x")
    assert r.exit_code == 2 and "no tokenizer here" in r.stderr
    r = run(group, "tokenize", os.path.join(shared_data, "tokenizers", "llama2"), "x")
    assert r.exit_code == 2 and "SentencePiece" in r.stderr


# --- fingerprint -----------------------------------------------------------------------------


def test_fingerprint_kinds(group: click.Group, model_dir: str, tmp_path: Any) -> None:
    bundle = load_tokenizer(model_dir)
    out = json.loads(run(group, "fingerprint", model_dir, "--json").stdout)
    assert out["tokenizer_fp"] == bundle.fingerprint and out["template_fp"] == template_fingerprint(
        CHATML
    )
    cfg = os.path.join(model_dir, "tokenizer_config.json")
    out = json.loads(run(group, "fingerprint", cfg, "--json").stdout)
    assert (out["tokenizer_fp"], out["template_fp"]) == (
        bundle.fingerprint,
        template_fingerprint(CHATML),
    )
    (tmp_path / "t.jinja").write_text(CHATML + "\n")
    out = json.loads(run(group, "fingerprint", str(tmp_path / "t.jinja"), "--json").stdout)
    assert out["tokenizer_fp"] is None and out["template_fp"] == template_fingerprint(CHATML + "\n")
    r = run(group, "fingerprint", model_dir)
    assert (
        r.exit_code == 0
        and bundle.fingerprint in r.stdout
        and template_fingerprint(CHATML) in r.stdout
    )
    r = run(group, "fingerprint", str(tmp_path / "missing"))
    assert r.exit_code == 2


def test_fingerprint_config_without_tokenizer(group: click.Group, shared_data: str) -> None:
    cfg = os.path.join(shared_data, "tokenizers", "ortx-configs", "qwen3", "tokenizer_config.json")
    out = json.loads(run(group, "fingerprint", cfg, "--json").stdout)
    assert out["tokenizer_fp"] is None and out["template_fp"].startswith("tpl-")
    a = json.loads(
        run(group, "fingerprint", os.path.join(shared_data, "tokenizers", "phi-3"), "--json").stdout
    )
    b = json.loads(
        run(
            group, "fingerprint", os.path.join(shared_data, "tokenizers", "phi-3-mini"), "--json"
        ).stdout
    )
    assert a["tokenizer_fp"] != b["tokenizer_fp"] and a["template_fp"] != b["template_fp"]
