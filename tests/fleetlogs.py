"""A synthetic but realistic fleet log: request records as a correct serving engine writes
them, built with a REAL tokenizer and a REAL chat template from ../shared/data, plus fault
knobs that break one replica the way real fleets break.

A model is Llama-3.1-8B-Instruct (Llama-3 tiktoken ranks + the Llama-3.1 chat template) or,
as a second model, Qwen2.5 (Qwen2 byte-level BPE + the Qwen2.5 ChatML template). For every
request: ``messages`` (user only, system + user, multi-turn, a tool call and its result),
``prompt_text`` = the rendered template, ``prompt_ids`` = that text encoded as a correct
engine does (no second BOS: the template writes it), outputs that are real IDs ending in the
end-of-turn ID with ``finish_reason="stop"`` (or cut at ``max_tokens``: ``length``; or at a
client's own stop token), ``output_text`` = their decoding, ``sampling.stop_ids``,
timestamps and token times, ``tokenizer_fp`` / ``template_fp`` / ``model``.

Faults (``FleetSpec.faults``: replica → knob), each on a share of that replica's requests:

- ``double_bos``: the prompt is encoded with ``add_special_tokens=True`` (BOS twice; a
  no-op for Qwen, whose tokenizer adds no BOS).
- ``other_template``: the replica renders with the Llama-3 template instead of Llama-3.1
  (Llama replicas only).
- ``other_tokenizer``: the replica logs another tokenizer fingerprint (tokenizer_config with
  ``eos_token=<|eot_id|>``; the IDs are the same).
- ``eot_ignored``: the end-of-turn ID is missing from the stop set; generation runs on past
  it into a new turn until ``max_tokens``.
- ``repetition``: outputs degenerate into a short loop until ``max_tokens``.
- ``decode_mismatch``: the logged output text lost a space (an incremental detokenizer bug).

Deterministic by seed. Renderings and encodings are cached per process: loading the
tokenizers takes ~3 s once; 3,600 requests then take ~2 s cold and ~0.3 s once the pool of
conversations and answers has been rendered and encoded.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

import msgspec

from infdebug.schema import Request, encode_records
from infdebug.text.fingerprint import tokenizer_fingerprint
from infdebug.text.template import load_template, render_chat, template_fingerprint
from infdebug.text.tokenizer import TokenizerBundle, encode_prompt, load_tokenizer

FAULTS = (
    "double_bos",
    "other_template",
    "other_tokenizer",
    "eot_ignored",
    "repetition",
    "decode_mismatch",
)
# share of the faulty replica's requests a fault touches (the others are always on)
FAULT_SHARE = {"repetition": 0.3, "decode_mismatch": 0.3}
T0 = 1_765_000_000.0


@dataclass(frozen=True)
class Model:
    """A served model: what a correct engine renders, encodes and stops on."""

    name: str
    tok: TokenizerBundle
    template: str
    stop_ids: tuple[int, ...]  # the generation config's EOS IDs
    eot_id: int  # what the model ends a turn with
    alt_template: str | None = None  # the other_template fault's template
    client_stop_id: int | None = None  # a "\n\n" token some clients add as their own stop
    turn_header: str = "<|start_header_id|>assistant<|end_header_id|>\n\n"  # a new assistant turn

    @property
    def template_fp(self) -> str:
        return template_fingerprint(self.template)


def _shared(shared_data: str, *parts: str) -> str:
    return os.path.join(shared_data, *parts)


@lru_cache(maxsize=4)
def llama31(shared_data: str) -> Model:
    tok = load_tokenizer(_shared(shared_data, "tokenizers", "llama3"))
    return Model(
        name="meta-llama/Llama-3.1-8B-Instruct",
        tok=tok,
        template=load_template(_shared(shared_data, "templates", "llama3.1.jinja")),
        stop_ids=(128001, 128008, 128009),
        eot_id=128009,
        alt_template=load_template(_shared(shared_data, "templates", "llama3.jinja")),
        client_stop_id=tok.encode("\n\n")[0],
    )


@lru_cache(maxsize=4)
def qwen25(shared_data: str) -> Model:
    tok = load_tokenizer(_shared(shared_data, "tokenizers", "qwen2-1.5b-instruct-finetune"))
    return Model(
        name="Qwen/Qwen2.5-1.5B-Instruct",
        tok=tok,
        template=load_template(_shared(shared_data, "templates", "qwen2.5.jinja")),
        stop_ids=(151645, 151643),
        eot_id=151645,
        turn_header="<|im_start|>assistant\n",
        client_stop_id=tok.encode("\n\n")[0],
    )


# --- text pools (fixed: the same conversations whatever the seed, so caches stay warm) ----

SYSTEMS = [
    "You are a helpful assistant.",
    "You are terse. Answer in one sentence.",
    "Réponds toujours en français, s'il te plaît.",
    "You are a senior Python reviewer. Point out bugs first.",
    "Always answer with valid JSON.",
]
TASKS = [
    "reverse a list",
    "read a CSV file",
    "parse JSON",
    "start a thread",
    "sort a dict by value",
    "open a socket",
    "format a date",
    "retry on timeout",
]
LANGS = ["Python", "Rust", "Go", "TypeScript", "C++"]
PLACES = ["Tokyo", "São Paulo", "Zürich", "Reykjavík", "Nairobi", "Montréal", "Kraków", "Seoul"]
PHRASES = ["good morning", "where is the station?", "thank you very much", "I'd like a coffee"]
TARGETS = ["French", "Japanese", "German", "Spanish"]
FACTS = [
    "The sky looks blue because air scatters short wavelengths more (Rayleigh scattering).",
    "Use `sorted(d.items(), key=lambda kv: kv[1])` to sort a dict by value.",
    "In Rust, `v.iter().rev()` walks a vector backwards without copying it.",
    "東京 is the capital of Japan; 大阪 is its second city.",
    "Water boils at 100 °C at sea level, and at about 70 °C on Everest.",
    (
        "A CSV reader yields one row per line:\n\n"
        "```python\nimport csv\nfor row in csv.reader(f):\n    print(row)\n```"
    ),
    "That is 42 — the answer to life, the universe and everything 🙂.",
    "Retry with exponential back-off: wait 1 s, 2 s, 4 s, then give up.",
    "Bonjour ! Voici la réponse : c'est très simple.",
    "The median is more robust to outliers than the mean.",
    "JSON has six types: object, array, string, number, boolean and null.",
    "Threads share memory; processes do not, so they need pipes or queues.",
    "Привет! Это пример ответа на русском языке.",
    "First, check the logs. Second, reproduce it. Third, write a test.",
]
LOOP_UNITS = [" I'm sorry.", " the the", "\n-", " Let me check again.", " **Note:**"]


def _question(rng: random.Random) -> str:
    k = rng.randrange(6)
    if k == 0:
        return f"How do I {rng.choice(TASKS)} in {rng.choice(LANGS)}?"
    if k == 1:
        return f'Translate "{rng.choice(PHRASES)}" into {rng.choice(TARGETS)}.'
    if k == 2:
        a, b = rng.randrange(2, 999), rng.randrange(2, 99)
        return f"What is {a} times {b}? Show your working."
    if k == 3:
        return "Summarize this in one line:\n\n" + " ".join(rng.sample(FACTS, 2))
    if k == 4:
        return f"What's the weather like in {rng.choice(PLACES)} today?"
    return f"Explain {rng.choice(TASKS)} to a beginner, with an example in {rng.choice(LANGS)}."


def _conversation(idx: int) -> list[dict[str, Any]]:
    """Conversation ``idx`` of the fixed pool: user only, system + user, multi-turn, tools."""
    rng = random.Random(1_000_003 * idx + 17)
    shape = rng.choice(["user", "user", "system", "multi", "system_multi", "tool"])
    msgs: list[dict[str, Any]] = []
    if shape.startswith("system"):
        msgs.append({"role": "system", "content": rng.choice(SYSTEMS)})
    if shape == "tool":
        place = rng.choice(PLACES)
        msgs.append({"role": "user", "content": f"Should I take an umbrella in {place}?"})
        call = {
            "name": "get_weather",
            "arguments": {"city": place, "unit": rng.choice(["celsius", "fahrenheit"])},
        }
        msgs.append({"role": "assistant", "tool_calls": [{"type": "function", "function": call}]})
        result = f"{rng.randrange(-5, 35)} degrees, {rng.choice(['rain', 'sunny', 'cloudy'])}"
        msgs.append({"role": "tool", "content": result})
        return msgs
    msgs.append({"role": "user", "content": _question(rng)})
    if shape.endswith("multi"):
        msgs.append({"role": "assistant", "content": rng.choice(FACTS)})
        msgs.append(
            {
                "role": "user",
                "content": rng.choice(["And why?", "Shorter, please.", "Give an example."]),
            }
        )
    return msgs


@cache
def conversation(idx: int) -> tuple[dict[str, Any], ...]:
    return tuple(_conversation(idx))


@cache
def answer(idx: int) -> str:
    rng = random.Random(7_000_001 * idx + 3)
    return " ".join(rng.sample(FACTS, rng.randint(1, 6)))


# --- cached rendering / encoding ------------------------------------------------------------

_RENDER: dict[tuple[str, str, int], str] = {}
_ENCODE: dict[tuple[str, str, bool], list[int]] = {}
_DECODE: dict[tuple[str, tuple[int, ...]], str] = {}
_PLAIN: dict[tuple[str, str], list[int]] = {}


def render(model: Model, template: str, conv: int) -> str:
    key = (template_fingerprint(template), model.name, conv)
    if key not in _RENDER:
        _RENDER[key] = render_chat(
            template,
            [dict(m) for m in conversation(conv)],
            bos_token=model.tok.bos_token,
            eos_token=model.tok.eos_token,
        )
    return _RENDER[key]


def encode(model: Model, text: str, *, engine: bool = True) -> list[int]:
    """``engine``: as a correct engine encodes a rendered prompt (encode_prompt); else
    ``add_special_tokens=True`` on top of a template that already wrote the BOS."""
    key = (model.name, text, engine)
    if key not in _ENCODE:
        _ENCODE[key] = (
            encode_prompt(model.tok, text)
            if engine
            else model.tok.encode(text, add_special_tokens=True)
        )
    return _ENCODE[key]


def decode(model: Model, ids: list[int]) -> str:
    key = (model.name, tuple(ids))
    if key not in _DECODE:
        _DECODE[key] = model.tok.decode(ids, skip_special_tokens=True)
    return _DECODE[key]


def _plain(model: Model, text: str) -> list[int]:
    """Text as the model generates it: no BOS, special-token text as special tokens."""
    key = (model.name, text)
    if key not in _PLAIN:
        _PLAIN[key] = model.tok.encode(text)
    return _PLAIN[key]


# --- the fleet ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replica:
    name: str
    deployment: str = "stable"
    model: str = "llama"  # llama | qwen


@dataclass
class FleetSpec:
    replicas: list[Replica]
    n: int  # requests in all
    seed: int = 0
    faults: dict[str, str] = field(default_factory=dict)  # replica name → FAULTS knob
    natural_loop_rate: float = 0.0  # rare degenerate outputs on every replica alike
    client_stop_rate: float = 0.05  # requests whose client adds its own "\n\n" stop token
    conversations: int = 400  # size of the conversation pool requests draw from
    # deployment → the only conversations its requests draw from (a tenant routed there;
    # repeat an index to weight it)
    deployment_convs: dict[str, list[int]] = field(default_factory=dict)
    hours: float = 6.0


def default_replicas(n: int = 6, canary: int = 2) -> list[Replica]:
    """``n`` replicas of one model: the first ``n - canary`` in ``stable``, the rest in
    ``canary``."""
    return [Replica(f"r{i}", "stable" if i < n - canary else "canary") for i in range(n)]


_OTHER_FP: dict[str, str] = {}


def other_tokenizer_fp(model: Model) -> str:
    """A real fingerprint of the same tokenizer with Llama-3.1-Instruct's tokenizer_config
    (eos_token <|eot_id|>): the same IDs, another tokenizer as far as the fleet can tell."""
    if model.name not in _OTHER_FP:  # hashing the serialised tokenizer takes seconds
        cfg = {**model.tok.config_for_fingerprint(), "eos_token": "<|eot_id|>"}
        _OTHER_FP[model.name] = tokenizer_fingerprint(model.tok.tok.to_str(), cfg)
    return _OTHER_FP[model.name]


def generate(spec: FleetSpec, shared_data: str) -> list[Request]:
    """The fleet's request records, in arrival order."""
    models = {"llama": llama31(shared_data)}
    if any(r.model == "qwen" for r in spec.replicas):
        models["qwen"] = qwen25(shared_data)
    for rep, knob in spec.faults.items():
        assert knob in FAULTS, knob
        assert any(r.name == rep for r in spec.replicas), rep
    rng = random.Random(spec.seed)
    weights = [1.0 / (1 + k) ** 0.8 for k in range(spec.conversations)]  # popular prompts repeat
    span = spec.hours * 3600.0
    arrivals = sorted(T0 + rng.random() * span for _ in range(spec.n))
    out: list[Request] = []
    for i, t in enumerate(arrivals):
        rep = rng.choice(spec.replicas)
        m = models[rep.model]
        fault = spec.faults.get(rep.name)
        if fault in FAULT_SHARE and rng.random() >= FAULT_SHARE[fault]:
            fault = None
        out.append(_request(rng, i, round(t, 3), rep, m, fault, spec, weights))
    return out


def _request(
    rng: random.Random,
    i: int,
    t: float,
    rep: Replica,
    m: Model,
    fault: str | None,
    spec: FleetSpec,
    weights: list[float],
) -> Request:
    conv = rng.choices(range(spec.conversations), weights)[0]
    pool = spec.deployment_convs.get(rep.deployment)
    if pool:
        conv = pool[conv % len(pool)]
    template = m.template
    if fault == "other_template" and m.alt_template is not None:
        template = m.alt_template
    prompt = render(m, template, conv)
    prompt_ids = encode(m, prompt, engine=fault != "double_bos")
    tok_fp = other_tokenizer_fp(m) if fault == "other_tokenizer" else m.tok.fingerprint
    max_tokens = rng.choice([64, 128, 256, 256, 512, 1024])
    stop_ids = list(m.stop_ids)
    if fault == "eot_ignored":
        stop_ids.remove(m.eot_id)
    client_stop = m.client_stop_id is not None and rng.random() < spec.client_stop_rate
    if client_stop:
        stop_ids.append(int(m.client_stop_id))  # type: ignore[arg-type]
    body = _plain(m, answer(rng.randrange(300)))
    ids: list[int]
    finish = "stop"
    loop = fault == "repetition" or rng.random() < spec.natural_loop_rate
    if loop:
        unit = _plain(m, rng.choice(LOOP_UNITS))
        head = body[: rng.randrange(0, 12)]
        ids = head + unit * (max_tokens // len(unit) + 1)
    elif fault == "eot_ignored":  # the turn ends, the engine does not stop: a new turn begins
        ids = body + [m.eot_id]
        while len(ids) <= max_tokens:
            more = _plain(m, answer(rng.randrange(300)))
            ids += _plain(m, m.turn_header) + more + [m.eot_id]
    else:
        ids = body + [m.eot_id]
        if client_stop and m.client_stop_id in body:  # the client's stop token ends it early
            ids = body[: body.index(int(m.client_stop_id)) + 1]  # type: ignore[arg-type]
    if len(ids) > max_tokens:
        ids, finish = ids[:max_tokens], "length"
    text = decode(m, ids)
    if finish == "stop" and ids[-1] == m.client_stop_id:
        text = decode(m, ids[:-1])  # the stop string is not part of the text
    # cut inside a character: the incremental detokenizer holds its first bytes back (vLLM)
    text = text.rstrip("\ufffd")
    if fault == "decode_mismatch" and " " in text.strip():
        at = text.index(" ", 1)
        text = text[:at] + text[at + 1 :]
    queue = round(rng.expovariate(50.0), 4)
    prefill = round(len(prompt_ids) * 2e-5 + rng.random() * 0.005, 4)
    ttft = round(queue + prefill, 4)
    step = 0.012 + rng.random() * 0.004
    times = [round(ttft + k * step, 4) for k in range(len(ids))]
    return Request(
        request_id=f"chatcmpl-{spec.seed:x}-{i:06d}-{rng.getrandbits(32):08x}",
        replica=rep.name,
        deployment=rep.deployment,
        t_arrival=t,
        model=m.name,
        engine="vllm",
        engine_version="0.6.3.post1",
        tokenizer_fp=tok_fp,
        template_fp=template_fingerprint(template),
        queue_s=queue,
        prefill_s=prefill,
        ttft_s=ttft,
        e2e_s=times[-1] if times else ttft,
        token_times_s=times,
        messages=[dict(x) for x in conversation(conv)],
        prompt_text=prompt,
        prompt_ids=list(prompt_ids),
        output_text=text,
        output_ids=list(ids),
        cached_prompt_tokens=0,
        finish_reason=finish,  # type: ignore[arg-type]
        sampling={"temperature": 0.7, "top_p": 0.9, "max_tokens": max_tokens, "stop_ids": stop_ids},
    )


# --- writing logs ---------------------------------------------------------------------------


def write_jsonl(path: str, records: list[Request]) -> str:
    with open(path, "wb") as f:
        f.write(encode_records(list(records)))
    return path


def split_files(directory: str, records: list[Request], parts: int, seed: int) -> list[str]:
    """``records`` shuffled and dealt into ``parts`` files (every file non-empty)."""
    recs = list(records)
    random.Random(seed).shuffle(recs)
    os.makedirs(directory, exist_ok=True)
    return [
        write_jsonl(os.path.join(directory, f"part-{k}.jsonl"), recs[k::parts])
        for k in range(parts)
    ]


def twice(directory: str, records: list[Request]) -> list[str]:
    """The same log given twice: one file, and a byte-identical copy under another name."""
    os.makedirs(directory, exist_ok=True)
    a = write_jsonl(os.path.join(directory, "fleet.jsonl"), records)
    b = os.path.join(directory, "fleet-copy.jsonl")
    shutil.copyfile(a, b)
    return [a, b, a]


def renamed(records: list[Request], mapping: dict[str, str]) -> list[Request]:
    """The records with their replicas renamed by ``mapping``."""
    return [msgspec.structs.replace(r, replica=mapping.get(r.replica, r.replica)) for r in records]
