"""Building a ``tokenizers.Tokenizer`` from the formats that are not ``tokenizer.json``:
``vocab.json`` + ``merges.txt`` (GPT-2 and Qwen2 byte-level BPE) and a tiktoken rank file
(Llama-3's ``tokenizer.model``).

Each builder reproduces how Hugging Face's converters lay out the same tokenizer, so the
result encodes to the IDs the model was trained on. Added tokens get their own IDs and
flags; an ID that ``tokenizers`` cannot honour (a gap after the vocabulary) is refused
rather than silently shifted.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from functools import lru_cache

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from infdebug.text.config import AddedTokenSpec, TextFormatError, read_json

# The split regexes, as the models' own tokenizers define them.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

LLAMA3_RANKS = 128_000
LLAMA3_NUM_SPECIAL = 256
# The names of the 256 IDs after the ranks, as Hugging Face's Llama-3 / Llama-3.1 tokenizers
# have them. The same ID can mean different things across revisions: 128008 is a reserved
# token in Llama-3.0 and <|eom_id|> from 3.1 on; Meta's llama-models code names 128005
# <|step_id|> and 128011 <|image|>, which HF's Llama-3.1 files keep reserved.
_LLAMA3_NAMED = {
    "3.0": [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|reserved_special_token_2|>",
        "<|reserved_special_token_3|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|reserved_special_token_4|>",
        "<|eot_id|>",
    ],
    "3.1": [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>",
        "<|reserved_special_token_2|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eom_id|>",
        "<|eot_id|>",
        "<|python_tag|>",
    ],
}


def _byte_level_bpe(
    vocab: dict[str, int], merges: list[tuple[str, str]], *, ignore_merges: bool = False
) -> models.BPE:
    """A plain byte-level BPE model: no unknown token, no prefixes or suffixes, no byte fallback."""
    return models.BPE(
        vocab=vocab,
        merges=merges,
        dropout=None,
        unk_token=None,
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
        byte_fallback=False,
        ignore_merges=ignore_merges,
    )


def llama3_special_tokens(revision: str = "3.1") -> list[str]:
    """The 256 special tokens that follow Llama-3's 128,000 ranks, in ID order."""
    named = _LLAMA3_NAMED.get(revision)
    if named is None:
        raise ValueError(
            f"expected Llama-3 special-token revision '3.0' or '3.1', found {revision!r}"
        )
    first_reserved = sum(1 for n in named if n.startswith("<|reserved_special_token_"))
    rest = LLAMA3_NUM_SPECIAL - len(named)
    return named + [f"<|reserved_special_token_{first_reserved + i}|>" for i in range(rest)]


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (byte-level BPE's alphabet)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    out = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def _bytes_to_piece(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def with_added_tokens(tok: Tokenizer, added: list[AddedTokenSpec], where: str = "") -> Tokenizer:
    """``tok`` with ``added`` as its added tokens, each at its own ID with its own flags.

    ``tokenizers`` numbers added tokens that are not in the vocabulary consecutively after
    it, so IDs with a gap cannot be honoured: that raises, naming ``where``."""
    if not added:
        return tok
    size = tok.get_vocab_size(with_added_tokens=True)
    contiguous = [t.id for t in added] == list(range(size, size + len(added)))
    if (
        contiguous
        and not tok.get_added_tokens_decoder()
        and all(tok.token_to_id(t.content) is None for t in added)
    ):
        # the common case (IDs right after the vocabulary): add in place, no re-serialisation
        tok.add_tokens(
            [
                AddedToken(
                    t.content,
                    single_word=t.single_word,
                    lstrip=t.lstrip,
                    rstrip=t.rstrip,
                    normalized=t.normalized,
                    special=t.special,
                )
                for t in added
            ]
        )
    else:
        data = json.loads(tok.to_str())
        by_id = {t["id"]: t for t in data.get("added_tokens") or []}
        for spec in added:
            by_id[spec.id] = spec.to_json()
        data["added_tokens"] = [by_id[i] for i in sorted(by_id)]
        tok = Tokenizer.from_str(json.dumps(data, ensure_ascii=False))
    for spec in added:
        got = tok.token_to_id(spec.content)
        if got != spec.id:
            raise TextFormatError(
                f"{where or 'added tokens'}: expected {spec.content!r} at id {spec.id}, "
                f"but it gets id {got}: "
                f"added-token IDs must follow the vocabulary ({size} entries) without gaps"
            )
    return tok


# --- vocab.json + merges.txt ----------------------------------------------------------------


def read_merges(path: str) -> list[tuple[str, str]]:
    """merges.txt: an optional ``#version`` line, then one ``left right`` pair a line.
    Line ends may be LF or CRLF (Qwen2's are CRLF); byte-level pieces never hold a real space."""
    merges: list[tuple[str, str]] = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.rstrip("\r\n")
                if not line or (lineno == 1 and line.startswith("#version")):
                    continue
                parts = line.split(" ")
                if len(parts) != 2 or not parts[0] or not parts[1]:
                    raise TextFormatError(
                        f"{path}:{lineno}: expected 'left right', found {line[:60]!r}"
                    )
                merges.append((parts[0], parts[1]))
    except UnicodeDecodeError as e:
        raise TextFormatError(
            f"{path}: expected UTF-8 text, found undecodable bytes at {e.start}"
        ) from e
    return merges


def read_vocab(path: str) -> dict[str, int]:
    vocab = read_json(path)
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise TextFormatError(f"{path}: expected a JSON object of token → integer id")
    return vocab


def byte_level_bpe(directory: str, flavour: str) -> Tokenizer:
    """A GPT-2 (``flavour="gpt2"``) or Qwen2 (``"qwen2"``) tokenizer from vocab.json + merges.txt.

    GPT-2: byte-level pre-tokenizer with its built-in regex. Qwen2: NFC, then Qwen2's split
    regex (single digits), then byte-level without a regex — as Hugging Face's Qwen2 converter.
    """
    vocab = read_vocab(os.path.join(directory, "vocab.json"))
    merges = read_merges(os.path.join(directory, "merges.txt"))
    model = _byte_level_bpe(vocab, merges)
    tok = Tokenizer(model)
    if flavour == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif flavour == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        raise ValueError(f"expected flavour 'gpt2' or 'qwen2', found {flavour!r}")
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


# --- tiktoken rank files --------------------------------------------------------------------

_RANK_LINE = re.compile(rb"^[A-Za-z0-9+/]+={0,2} \d+\r?$")


def looks_like_rank_file(path: str) -> bool:
    """A tiktoken rank file: lines of ``base64-token rank``. (A SentencePiece model is binary.)"""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    first = head.split(b"\n", 1)[0]
    return bool(_RANK_LINE.match(first))


def read_rank_file(path: str) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            parts = line.split(b" ")
            try:
                if len(parts) != 2:
                    raise ValueError
                token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
            except (ValueError, binascii.Error) as e:
                raise TextFormatError(
                    f"{path}:{lineno}: expected 'base64-token rank', found {line[:60]!r}"
                ) from e
            ranks[token] = rank
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TextFormatError(f"{path}: expected ranks 0..{len(ranks) - 1} without gaps or repeats")
    return ranks


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[str, str]]:
    """Recover BPE merges from tiktoken ranks: every split of a token into two tokens that are
    themselves in the table is a merge, ordered by the rank of the merged token (then by the
    ranks of its halves) — the same reconstruction Hugging Face's tiktoken converter does."""
    found: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            lr, rr = ranks.get(left), ranks.get(right)
            if lr is not None and rr is not None:
                found.append((rank, lr, rr, left, right))
    found.sort()
    return [(_bytes_to_piece(left), _bytes_to_piece(right)) for _, _, _, left, right in found]


def llama3_from_ranks(path: str, revision: str = "3.1") -> tuple[Tokenizer, list[AddedTokenSpec]]:
    """Llama-3's tokenizer from its tiktoken rank file: byte-level BPE whose merges are
    rebuilt from the ranks, Llama-3's split regex, and the 256 special tokens after the ranks.
    Returns the tokenizer and its special tokens."""
    ranks = read_rank_file(path)
    if len(ranks) != LLAMA3_RANKS:
        raise TextFormatError(
            f"{path}: a tiktoken rank file with {len(ranks):,} ranks; only Llama-3's "
            f"({LLAMA3_RANKS:,} ranks) is known, since the split regex and special tokens are "
            "not in the file. Pass a tokenizer.json for other tiktoken models"
        )
    vocab = {_bytes_to_piece(tok): rank for tok, rank in ranks.items()}
    model = _byte_level_bpe(
        vocab, merges_from_ranks(ranks), ignore_merges=True
    )  # tiktoken: a piece in the table is taken whole
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [
        AddedTokenSpec(id=LLAMA3_RANKS + i, content=s)
        for i, s in enumerate(llama3_special_tokens(revision))
    ]
    bos = specials[0].content
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A",
                pair=f"{bos} $A {bos} $B:1",
                special_tokens=[(bos, LLAMA3_RANKS)],
            ),
        ]
    )
    return with_added_tokens(tok, specials, path), specials
