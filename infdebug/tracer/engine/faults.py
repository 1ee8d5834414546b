"""The faults a replica can have injected (``serve --inject``, ``fleet --inject REPLICA:FAULT``).

This is the registry: ``Injections.parse`` (replica.py) accepts exactly these, and every
help text and error message lists them from here. It imports nothing heavy, so ``--help``
stays fast without torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    key: str  # what comes before "=" (or the whole spec for a flag)
    arg: str | None  # the value's metavar, e.g. FILE; None for a flag
    example: str  # a spec that parses, for tests and docs
    what: str  # one line: the real change it makes to the serving path

    @property
    def spec(self) -> str:
        """How the fault is written: ``double-bos``, ``slow=FACTOR``."""
        return self.key if self.arg is None else f"{self.key}={self.arg}"


FAULTS: tuple[Fault, ...] = (
    Fault(
        "double-bos",
        None,
        "double-bos",
        "encode the rendered prompt with special tokens added (BOS twice)",
    ),
    Fault("template", "FILE", "template=t.jinja", "serve with another chat template"),
    Fault(
        "tokenizer",
        "DIR",
        "tokenizer=tok/",
        "serve with another tokenizer (the model is unchanged)",
    ),
    Fault("ignore-eos", "ID", "ignore-eos=2", "drop an end-of-turn / EOS ID from the stop set"),
    Fault("slow", "FACTOR", "slow=1.5", "every engine step takes FACTOR (>= 1) times as long"),
    Fault(
        "dtype",
        "DTYPE",
        "dtype=float16",
        "run the model in float16, bfloat16 or float32 (numerics skew)",
    ),
    Fault(
        "throttle",
        None,
        "throttle",
        "with --simulate-gpu: the simulated GPU overheats and throttles",
    ),
    Fault(
        "fail-request",
        "TEXT",
        "fail-request=POISON",
        "a request whose prompt holds TEXT fails in the engine at its second token",
    ),
)

FAULT_KEYS: frozenset[str] = frozenset(f.key for f in FAULTS)


def fault_specs() -> str:
    """Every fault as it is written, comma-separated: ``double-bos, template=FILE, …``."""
    return ", ".join(f.spec for f in FAULTS)
