"""How a JSON field of a contract record becomes a stored column, and the fast ingest path's
checks on it, derived from its type (the tables are in store/ddl.py).

A ``Column`` gives the storage type, the type ClickHouse reads the JSON field as (``read``),
the expression that turns the read value into the stored one (``expr``), and two checks:
``check`` on the value ClickHouse parsed and ``raw`` on the field's JSON text in the
original line. The constructors (``text``, ``real``, ``uint``, ``token_ids`` …) derive all
of them from the contract type, so a new column gets its checks from its type.
"""

from __future__ import annotations

from dataclasses import dataclass

U32 = 2**32 - 1


@dataclass(frozen=True)
class Column:
    """One stored column and how a JSON field becomes it.

    ``read`` is the type ClickHouse parses the field as, ``expr`` turns it into the stored
    value, and ``check`` is a condition every row must meet on the fast ingest path: a row
    that fails it sends the whole file to the careful path, where the contract decoder
    judges each line exactly. ``raw`` is the same kind of condition on the field's JSON
    text in the original line (``{v}``, as ``JSONExtractKeysAndValuesRaw`` gives it, see
    ``Table.line_guard``): it tells ``"0.5"`` from ``0.5`` and ``[1,null]`` from ``[1,0]``,
    which the parsed value cannot. A column without one doubts every line that has the
    field. Checks may be stricter than the contract (a string of 19 digits or more is
    doubted), never looser.

    ``alias``: the store keeps no data under this name but an ``ALIAS`` column, this SQL
    expression of other stored columns, that queries read as they would the field. The
    line's field is still read and checked (``expr`` is its value in the read row, which
    the stored columns' ``expr`` may use), never inserted.
    """

    name: str
    type: str  # storage type
    read: str  # type of the JSON field as read
    expr: str = "{c}"  # SELECT expression from the read field
    check: str = ""  # fast-path condition on the read field
    json: bool = False  # stored as JSON text (objects / arrays of objects)
    raw: str = ""  # fast-path condition on the field's JSON text, ``{v}``
    alias: str = ""  # stored as ``ALIAS`` this expression of other columns, never inserted

    @property
    def select(self) -> str:
        return self.expr.format(c=f"`{self.name}`")

    @property
    def guard(self) -> str:
        return self.check.format(c=f"`{self.name}`")

    def raw_guard(self, v: str) -> str:
        """``raw`` on the JSON text ``v`` (an SQL expression); false where there is none."""
        return f"({self.raw.replace('{v}', v)})" if self.raw else "0"


# Conditions on a field's JSON text as ClickHouse re-serializes it from simdjson's parse of
# a valid line: no whitespace, numbers normalised (``1E2`` reads ``100``), strings
# re-escaped, and an integer that does not fit 64 bits given back as a *string* of its
# digits (``"184467…"``). So the first character tells the type, except that a string of
# 19 digits or more may be such a number and is doubted. Substituted with str.replace
# (``{v}``), not str.format.
RAW_NULL = "{v} = 'null'"
RAW_STR = "(startsWith({v}, '\"') AND NOT match({v}, '^\"-?[0-9]{19,}\"$'))"
RAW_OBJ = "startsWith({v}, '{')"
RAW_BOOL = "{v} IN ('true', 'false')"
RAW_NUM = "match({v}, '^-?[0-9]')"
# Token IDs: non-negative integers and nothing else (no '-', '.', 'e', quote or null). Their
# size is ``check``'s to bound: up to 2^63-1 one reads exactly as Int64, from 2^63 to 2^64-1
# it wraps to a negative, and past 2^64 simdjson gives a string, which this refuses.
RAW_IDS = r"match({v}, '^\\[[0-9,]*\\]$')"
RAW_NUMS = r"match({v}, '^\\[[-+0-9.eE,]*\\]$')"  # numbers only: no null, string or array
# Nested no deeper than this many levels (an upper bound: brackets in strings count too).
# msgspec refuses a line nested past Python's recursion limit (about 1000, less the depth
# of the stack it is called from) and simdjson reads 1024 levels, so between the two
# whether a line loads would depend on the caller's stack; the fast path stays far below.
MAX_NESTING = 500
RAW_SHALLOW = f"countSubstrings({{v}}, '[') + countSubstrings({{v}}, '{{') <= {MAX_NESTING}"


def _raw_or_null(cond: str, nullable: bool = True) -> str:
    return f"({RAW_NULL} OR ({cond}))" if nullable else f"({cond})"


def raw_int(hi: int) -> str:
    """An integer token no longer than ``hi`` (JSONEachRow refuses ``1.0`` and ``1e2`` for
    an Int64 field, and ``Column.check`` bounds the value it read)."""
    return f"({RAW_NUM} AND length({{v}}) <= {len(str(hi))})"


def _raw_all(item: str, items: str) -> str:
    """Every one of ``items`` (an array of JSON texts built from ``{v}``) meets ``item``."""
    return f"arrayAll(raw_item -> {item.replace('{v}', 'raw_item')}, {items})"


_PLAIN_TEXT = "({c} IS NULL OR isValidUTF8({c}))"


def text(name: str, *, required: bool = False, lc: bool = False) -> Column:
    # Objects and arrays are read as their JSON text (for the JSON columns), so a text field
    # given an object or an array would load as that JSON's text: ``raw`` (the line check,
    # which the fast path always runs first) makes sure the field's JSON is a string. A text
    # that merely starts with ``[`` or ``{`` (``[INST] …``, a JSON prompt) is no doubt.
    storage = "String" if required else "Nullable(String)"
    if lc:
        storage = f"LowCardinality({storage})"
    check = _PLAIN_TEXT + (" AND {c} IS NOT NULL" if required else "")
    return Column(
        name,
        storage,
        "Nullable(String)",
        "assumeNotNull({c})" if required else "{c}",
        check,
        raw=_raw_or_null(RAW_STR, not required),
    )


def enum(
    name: str, values: tuple[str, ...], *, required: bool = False, default: str | None = None
) -> Column:
    """One of ``values``; ``default``: what a missing field is (never null, as in the
    contract), where ClickHouse would otherwise read it as ``''``."""
    allowed = ", ".join(f"'{v}'" for v in values)
    check = f"{{c}} IN ({allowed})" if required else f"({{c}} IS NULL OR {{c}} IN ({allowed}))"
    storage = "LowCardinality(String)" if required else "LowCardinality(Nullable(String))"
    expr = "assumeNotNull({c})" if required else "{c}"
    if default is not None:
        assert default in values and not required
        storage, expr = "LowCardinality(String)", f"ifNull({{c}}, '{default}')"
    return Column(
        name,
        storage,
        "Nullable(String)",
        expr,
        check,
        raw=_raw_or_null(RAW_STR, not required and default is None),
    )


def real(name: str, *, required: bool = False) -> Column:
    check = "isFinite({c})" if required else "({c} IS NULL OR isFinite({c}))"
    return Column(
        name,
        "Float64" if required else "Nullable(Float64)",
        "Nullable(Float64)",
        "assumeNotNull({c})" if required else "{c}",
        check,
        raw=_raw_or_null(RAW_NUM, not required),
    )


def uint(name: str, bits: int, *, default: int | None = None) -> Column:
    hi = 2**bits - 1 if bits < 64 else 2**63 - 1
    t = f"UInt{bits}"
    if default is None:
        return Column(
            name,
            f"Nullable({t})",
            "Nullable(Int64)",
            f"CAST({{c}}, 'Nullable({t})')",
            f"({{c}} IS NULL OR {{c}} BETWEEN 0 AND {hi})",
            raw=_raw_or_null(raw_int(hi)),
        )
    # A default, not an Optional: the contract refuses null where ClickHouse would default.
    return Column(
        name,
        t,
        "Nullable(Int64)",
        f"CAST(ifNull({{c}}, {default}), '{t}')",
        f"({{c}} IS NULL OR {{c}} BETWEEN 0 AND {hi})",
        raw=raw_int(hi),
    )


def token_ids(name: str) -> Column:
    return Column(
        name,
        "Array(UInt32)",
        "Array(Int64)",
        "CAST({c}, 'Array(UInt32)')",
        f"(empty({{c}}) OR (arrayMin({{c}}) >= 0 AND arrayMax({{c}}) <= {U32}))",
        raw=_raw_or_null(RAW_IDS),  # null is "not recorded", read as []
    )


def reals(name: str) -> Column:
    # A NaN or inf anywhere makes the sum non-finite; so may a huge but finite sum, which
    # only costs a detour through the careful path.
    return Column(
        name,
        "Array(Float64)",
        "Array(Float64)",
        check="isFinite(arraySum({c}))",
        raw=_raw_or_null(RAW_NUMS),
    )


def texts(name: str) -> Column:
    return Column(
        name,
        "Array(LowCardinality(String))",
        "Array(String)",
        check="arrayAll(x -> isValidUTF8(x) AND NOT startsWith(x, '{{'), {c})",
        raw=_raw_or_null(
            "startsWith({v}, '[') AND " + _raw_all(RAW_STR, "JSONExtractArrayRaw({v})")
        ),
    )


def json_text(name: str, opener: str, item: str | None = None) -> Column:
    """A JSON object (opener ``{``) or array (``[``) kept as its text; ``item``, a ``RAW_*``
    condition, is what each of its values (elements) must be, as the contract types it
    (``dict[str, str]``: ``RAW_STR``); ``None`` for any JSON."""
    op = opener.replace("{", "{{")  # literal brace in a str.format template
    raw = f"startsWith({{v}}, '{opener}') AND {RAW_SHALLOW}"
    if item is not None:
        items = (
            "JSONExtractArrayRaw({v})" if opener == "[" else "JSONExtractKeysAndValuesRaw({v}).2"
        )
        raw += " AND " + _raw_all(item, items)
    return Column(
        name,
        "Nullable(String)",
        "Nullable(String)",
        check=f"({{c}} IS NULL OR (isValidUTF8({{c}}) AND startsWith({{c}}, '{op}')))",
        json=True,
        raw=_raw_or_null(raw),
    )


def boolean(name: str) -> Column:
    # Not an Optional: the contract refuses null (and 0/1) where ClickHouse reads false.
    return Column(name, "Bool", "Bool", raw=RAW_BOOL)
