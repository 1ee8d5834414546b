"""A model directory's text side without its weights: the tokenizer, the chat template, the
rendering of messages exactly as the reference engine renders them, and the fingerprints.

The reference engine's ``Replica`` renders through this, and so does the sidecar, which
derives prompt and output token IDs for an engine that does not return them: one code path,
so a sidecar in front of ``infdebug serve`` derives the very IDs the engine used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from infdebug.text.template import load_template, render_chat, template_fingerprint
from infdebug.text.tokenizer import TokenizerBundle, encode_prompt, load_tokenizer


@dataclass
class ModelText:
    """The tokenizer and chat template of one model directory (``load``)."""

    tokenizer: TokenizerBundle
    template: str | None
    source: str = ""  # the directory it was loaded from

    @classmethod
    def load(cls, model_dir: str, template_path: str | None = None) -> ModelText:
        """The model directory's tokenizer, and its chat template: ``template_path`` if
        given, else the tokenizer config's, else ``chat_template.jinja`` beside it."""
        tok = load_tokenizer(model_dir)
        if template_path:
            template: str | None = load_template(template_path)
        elif tok.chat_template:
            template = tok.chat_template
        else:
            p = os.path.join(model_dir, "chat_template.jinja")
            template = load_template(p) if os.path.exists(p) else None
        return cls(tok, template, model_dir)

    @property
    def tokenizer_fp(self) -> str:
        return self.tokenizer.fingerprint

    @property
    def template_fp(self) -> str | None:
        return template_fingerprint(self.template) if self.template else None

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: Any = None,
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """``messages`` rendered with the chat template as transformers renders them: the
        special tokens the config names, nothing for those it lacks (a template may test
        ``bos_token is defined``). ``ValueError`` when there is no template or it fails."""
        if not self.template:
            raise ValueError(f"the model at {self.source or '?'} has no chat template")
        special = dict(self.tokenizer.special_tokens)
        if self.tokenizer.bos_token is not None:
            special.setdefault("bos_token", self.tokenizer.bos_token)
        if self.tokenizer.eos_token is not None:
            special.setdefault("eos_token", self.tokenizer.eos_token)
        try:
            return render_chat(
                self.template,
                messages,
                add_generation_prompt=add_generation_prompt,
                tools=tools,
                **{**special, **kwargs},
            )
        except Exception as e:  # the client's messages or the template: either way, a ValueError
            raise ValueError(str(e)) from None

    def encode_prompt(self, text: str) -> list[int]:
        """A rendered prompt's IDs as the engine encodes it (the BOS the template wrote, no
        second one)."""
        return encode_prompt(self.tokenizer, text)

    def encode_output(self, text: str) -> tuple[list[int], list[int]]:
        """An output text's IDs and, for each, the character offset where it ends."""
        enc = self.tokenizer.tok.encode(text, add_special_tokens=False)
        return list(enc.ids), [end for _, end in enc.offsets]
