"""Tokenizer loading and fingerprints, HF-compatible chat-template rendering.

- ``tokenizer``: :func:`load_tokenizer` reads tokenizer.json, vocab.json + merges.txt or a
  Llama-3 tiktoken rank file (offline) into a :class:`TokenizerBundle`; :func:`encode_prompt`
  encodes a rendered chat prompt without doubling BOS.
- ``convert``: building ``tokenizers`` tokenizers from the non-tokenizer.json formats.
- ``config``: the Hugging Face side files (tokenizer_config.json and friends).
- ``fingerprint``: ``tok-…`` (what decides token IDs) and ``tpl-…`` (exact template source).
- ``template``: :func:`render_chat` with transformers' ``apply_chat_template`` semantics.
"""

from infdebug.text.config import TextFormatError
from infdebug.text.fingerprint import template_fingerprint, tokenizer_fingerprint
from infdebug.text.template import ChatTemplateError, fixed_now, load_template, render_chat
from infdebug.text.tokenizer import (
    TokenizerBundle,
    TokenizerLoadError,
    encode_prompt,
    load_tokenizer,
)

__all__ = [
    "ChatTemplateError",
    "TextFormatError",
    "TokenizerBundle",
    "TokenizerLoadError",
    "encode_prompt",
    "fixed_now",
    "load_template",
    "load_tokenizer",
    "render_chat",
    "template_fingerprint",
    "tokenizer_fingerprint",
]
