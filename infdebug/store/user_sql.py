"""Ad-hoc SQL from a user (``infdebug query``), checked by ClickHouse's own parser before it runs.

By default the SQL is one statement that only reads: ``formatQuerySingleLine`` (the SQL bound
as a parameter, so nothing of it runs) says whether it is one statement and gives it in
ClickHouse's canonical form; ``EXPLAIN AST`` of that form gives the statement's kind and every
function it calls; the canonical form is what then runs, on a session with ClickHouse's
``readonly = 1`` (no writes, no settings changes). Refused whatever the mode:

* table functions that are not local computations (``file``, ``url``, ``s3``, ``remote``,
  ``cluster``, ``mysql``, ``executable``, ``input``, chDB's ``python`` … — anything that is not
  in :data:`LOCAL_TABLE_FUNCTIONS`; the names come from ``system.table_functions``, so one
  added to ClickHouse later is refused too), and the ``file()`` function;
* ``INTO OUTFILE``, ``INSERT … FROM INFILE``, ``SYSTEM``, ``KILL``, ``BACKUP``, ``RESTORE``,
  ``ATTACH``, and statements infdebug does not know.

``write=True`` (``--write``) runs several statements, one after another, each checked the same
way, on the read-write session: INSERT … SELECT, ALTER, DELETE, UPDATE, TRUNCATE, DROP, CREATE,
OPTIMIZE, RENAME … still without the above, and without table engines other than the local ones
(:data:`LOCAL_ENGINES`), dictionaries, storage ``SETTINGS`` and ``ALTER … FREEZE / FETCH / MOVE
/ MODIFY SETTING`` (a disk setting can point at S3), ``SET`` (a ``dialect`` would change how
the statements after it parse), and INSERT with inline data (its end is not the parser's to
say). It is meant for an operator who knows what the SQL does; it is not a sandbox.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from infdebug.errors import InputError, StoreError
from infdebug.store.base import Params
from infdebug.store.ddl import SELECT_STAR_SETTINGS


class QueryRefused(InputError):
    """The SQL is not run: what in it infdebug refuses, and why."""


@runtime_checkable
class CheckedStore(Protocol):
    """What running user SQL needs from a store: a read-only session besides the usual one."""

    def query(
        self, sql: str, params: Params = None, settings: Params = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]: ...

    def command(self, sql: str, params: Params = None, settings: Params = None) -> None: ...

    def query_readonly(
        self, sql: str, params: Params = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]: ...

    def text(self, sql: str, params: Params = None, *, readonly: bool = False) -> str: ...

    def placeholders(self, sql: str) -> dict[str, set[str]]: ...


# Table functions that compute locally or read this store's own tables (lower case).
LOCAL_TABLE_FUNCTIONS = frozenset(
    {
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "generate_series",
        "generateseries",
        "primes",
        "values",
        "sqlstandardvalues",
        "null",
        "view",
        "viewifpermitted",
        "merge",
        "generaterandom",
        "format",
        "mergetreeindex",
        "mergetreeprojection",
    }
)
# Functions (not table functions) that read files.
FILE_FUNCTIONS = frozenset({"file"})
# Table and database engines that keep their data in this store (lower case).
LOCAL_ENGINES = frozenset(
    {
        "memory",
        "log",
        "tinylog",
        "stripelog",
        "null",
        "set",
        "join",
        "buffer",
        "merge",
        "generaterandom",
        "view",
        "materializedview",
        "atomic",
        "ordinary",
    }
)

READ_KINDS = frozenset(
    {
        "SelectWithUnionQuery",
        "Explain",
        "DescribeQuery",
        "ShowTables",
        "ShowColumns",
        "ShowIndexes",
        "ShowFunctions",
        "ShowSetting",
        "ShowEngineQuery",
        "ShowProcesslistQuery",
    }
)
READ_PREFIXES = ("ShowCreate", "Exists")
WRITE_KINDS = frozenset(
    {
        "InsertQuery",
        "AlterQuery",
        "DeleteQuery",
        "UpdateQuery",
        "TruncateQuery",
        "DropQuery",
        "UndropQuery",
        "DetachQuery",
        "OptimizeQuery",
        "CreateQuery",
        "CreateSQLFunctionQuery",
        "Rename",
        "CheckQuery",
        "UseQuery",
    }
)
REFUSED_ALTER = ("FREEZE", "UNFREEZE", "FETCH", "MOVE", "MODIFY_SETTING", "MODIFY_DATABASE_SETTING")

_MULTI = re.compile(r"Multi-statements are not allowed\): failed at position (\d+)")
# ClickHouse names the statement it failed in: ours, which only wraps the user's SQL.
_WRAPPER = re.compile(
    r"\.? ?:? In scope SELECT formatQuerySingleLine\(.*\)(?=\. \([A-Z_]+\)$)", re.S
)


@dataclass
class Node:
    """One node of ``EXPLAIN AST``: its kind (``Function``, ``SelectQuery`` …), the rest of its
    line, and its children."""

    kind: str
    label: str
    children: list[Node] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The function's or engine's name (``Function file`` → ``file``)."""
        words = self.label.split()
        return words[1] if len(words) > 1 else ""

    def walk(self) -> Iterator[Node]:
        yield self
        for c in self.children:
            yield from c.walk()


def parse_ast(text: str) -> Node:
    """The tree of ``EXPLAIN AST`` output (one node a line, indented one space a level)."""
    root: Node | None = None
    stack: list[tuple[int, Node]] = []
    for line in text.split("\n"):  # only "\n": a literal's \x1e or \u2028 is no line break
        if not line.strip(" "):
            continue
        depth = len(line) - len(line.lstrip(" "))
        label = line.strip(" ")
        node = Node(label.split(" ", 1)[0], label)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            stack[-1][1].children.append(node)
        elif root is None:
            root = node
        else:
            raise QueryRefused("ClickHouse explained this SQL as more than one statement")
        stack.append((depth, node))
    if root is None:
        raise QueryRefused("ClickHouse gave no syntax tree for this SQL")
    return root


@dataclass(frozen=True)
class SqlResult:
    """What the last statement returned (nothing for a write) and how many statements ran."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    statements: int


def run_sql(
    store: Any, sql: str, params: Mapping[str, Any] | None = None, *, write: bool = False
) -> SqlResult:
    """Check ``sql`` (see the module docstring) and run it with ``params`` bound.

    Raises :class:`QueryRefused` for SQL that is not run, :class:`StoreError` when ClickHouse
    refuses or fails it."""
    if not isinstance(store, CheckedStore):
        raise StoreError(f"{type(store).__name__} cannot run ad-hoc SQL read-only")
    params = dict(params or {})
    _utf8("the SQL", sql)
    for k, v in params.items():
        if isinstance(v, str):
            _utf8(f"--param {k}", v)
    stmts = split_statements(store, sql, several=write)
    types: dict[str, set[str]] = {}
    for stmt in stmts:
        for name, ts in store.placeholders(stmt).items():
            types.setdefault(name, set()).update(ts)
    unused = sorted(set(params) - set(types))
    if unused:
        raise QueryRefused(
            "; ".join(f"--param {n}: the SQL has no {{{n}:Type}} placeholder" for n in unused)
        )
    params = {k: _as_typed(v, types[k]) for k, v in params.items()}
    catalog = Catalog.of(store, engines=write)
    trees = [explain(store, s, params, catalog, write=write) for s in stmts]
    if not write:
        return SqlResult(*store.query_readonly(stmts[0], params), statements=1)
    cols: list[str] = []
    rows: list[tuple[Any, ...]] = []
    for stmt, tree in zip(stmts, trees, strict=True):
        bound = _used(store, stmt, params)
        if is_read(tree.kind):  # ``SELECT *`` with the ALIAS columns, as query_readonly
            cols, rows = store.query(stmt, bound, SELECT_STAR_SETTINGS)
        else:
            store.command(stmt, bound)
            cols, rows = [], []
    return SqlResult(cols, rows, len(stmts))


def split_statements(store: CheckedStore, sql: str, *, several: bool) -> list[str]:
    """The statements of ``sql`` in ClickHouse's canonical form, cut where ClickHouse's parser
    says one ends (``several=False``: exactly one, else :class:`QueryRefused`)."""
    rest = sql.encode("utf-8")
    out: list[str] = []
    while True:
        try:
            out.append(_format(store, rest))
            return out
        except _Empty:
            # empty, comments only, or an empty statement (";") before more
            probe = b"SELECT 1\n" + rest
            try:
                _format(store, probe)
            except _Several as e:
                rest = probe[e.position :]
                continue
            if out:
                return out
            raise QueryRefused("no SQL statement given") from None
        except _Several as e:
            if not several:
                raise QueryRefused(
                    "one statement at a time: this SQL has more than one (the first ends at "
                    f"byte {e.position}); --write runs several, one after another"
                ) from None
            with contextlib.suppress(_Empty):  # ";;": an empty statement
                out.append(_format(store, rest[: e.position - 1]))
            rest = rest[e.position :]


class _Empty(Exception):
    pass


class _Several(Exception):
    def __init__(self, position: int) -> None:
        super().__init__(position)
        self.position = position  # 1-based byte offset of the ";" that ends the first


def _format(store: CheckedStore, sql: bytes) -> str:
    try:
        _, rows = store.query_readonly(
            "SELECT formatQuerySingleLine({sql:String})", {"sql": sql.decode("utf-8")}
        )
    except StoreError as e:
        msg = str(e)
        if "Multi-statements are not allowed" in msg:
            m = _MULTI.search(msg)
            if m is None:
                raise QueryRefused(
                    "more than one statement, and ClickHouse did not say where the first ends"
                ) from None
            raise _Several(int(m.group(1))) from None
        if "Empty query" in msg:
            raise _Empty from None
        raise StoreError(_WRAPPER.sub("", msg)) from None
    return str(rows[0][0])


@dataclass(frozen=True)
class Catalog:
    """ClickHouse's own names of its table functions and engines (lower case)."""

    table_functions: frozenset[str]
    engines: frozenset[str]

    @classmethod
    def of(cls, store: CheckedStore, *, engines: bool = True) -> Catalog:
        tf = _names(store, "SELECT lower(name) FROM system.table_functions")
        eng: set[str] = set()
        if engines:
            eng = _names(store, "SELECT lower(name) FROM system.table_engines")
            try:
                eng |= _names(store, "SELECT lower(name) FROM system.database_engines")
            except StoreError:  # older servers have no system.database_engines
                eng |= {"mysql", "postgresql", "sqlite", "s3", "hdfs", "filesystem", "replicated"}
        return cls(frozenset(tf), frozenset(eng))


def explain(
    store: CheckedStore, stmt: str, params: Mapping[str, Any], catalog: Catalog, *, write: bool
) -> Node:
    """``EXPLAIN AST`` of one canonical statement, checked: :class:`QueryRefused` if refused."""
    text = store.text("EXPLAIN AST " + stmt, _used(store, stmt, params), readonly=not write)
    tree = parse_ast(text)
    check_tree(tree, stmt, catalog, write=write)
    return tree


def is_read(kind: str) -> bool:
    return kind in READ_KINDS or kind.startswith(READ_PREFIXES)


def check_tree(tree: Node, stmt: str, catalog: Catalog, *, write: bool) -> None:
    """Refuse a statement that writes (unless ``write``) or reaches files, the network or
    another process; ``stmt`` (canonical SQL) is only used to name the statement."""
    keyword = stmt.split(" ", 1)[0].upper()
    _check_statement(tree, keyword, write=write)
    for node in tree.walk():
        if node.kind == "Function":
            _check_function(node.name, catalog)
        elif node.kind == "FunctionWithKeyValueArguments" or node.label.startswith("Dictionary"):
            raise QueryRefused(f"dictionaries (their sources reach out): {_NEVER}")
        elif node.kind == "Storage":
            _check_storage(node, catalog.engines)
        elif node.kind == "AlterCommand" and node.name.startswith(REFUSED_ALTER):
            raise QueryRefused(f"ALTER … {node.name.replace('_', ' ')}: {_NEVER}")


def _check_function(name: str, catalog: Catalog) -> None:
    """Any call, wherever it stands (FROM, JOIN, IN, a view, INSERT INTO FUNCTION, CREATE …
    AS): a name ClickHouse knows as a table function must be a local one."""
    low = name.lower()
    if low in FILE_FUNCTIONS:
        raise QueryRefused(f"{name}() reads files: {_NEVER}")
    if low in catalog.table_functions and low not in LOCAL_TABLE_FUNCTIONS:
        raise QueryRefused(
            f"table function {name}() reaches files, the network or another process: {_NEVER}"
        )


_NEVER = "infdebug query does not run it (not with --write either)"


def _check_statement(tree: Node, keyword: str, *, write: bool) -> None:
    kind = tree.kind
    if kind == "Explain":
        inner = [c for c in tree.children if is_read(c.kind) or c.kind in WRITE_KINDS]
        if len(inner) != 1:
            raise QueryRefused(f"EXPLAIN of this statement: {_NEVER}")
        _check_statement(inner[0], keyword, write=write)
    if is_read(kind):
        if any(c.kind == "Literal" for c in tree.children):
            raise QueryRefused(
                f"INTO OUTFILE writes a file: {_NEVER}; print --json and redirect it"
            )
        if kind in ("SelectWithUnionQuery", "Explain") and any(
            c.kind == "Identifier" for c in tree.children
        ):
            raise QueryRefused("FORMAT: infdebug query prints a table, or JSON with --json")
        return
    if kind not in WRITE_KINDS:
        raise QueryRefused(f"{keyword} statements: {_NEVER}")
    if not write:
        raise QueryRefused(
            f"{keyword} is not a read, and infdebug query is read-only by default "
            "(--write lifts that, for an operator who means it)"
        )
    if kind == "InsertQuery":
        if any(c.kind == "Literal" for c in tree.children):
            raise QueryRefused(f"INSERT … FROM INFILE reads a file: {_NEVER}; use infdebug ingest")
        if not any(c.kind == "SelectWithUnionQuery" for c in tree.children):
            raise QueryRefused(
                "INSERT with inline data (VALUES, FORMAT …) is not run by infdebug query: "
                "write INSERT … SELECT, or load files with infdebug ingest"
            )


def _check_storage(node: Node, engines: frozenset[str]) -> None:
    for c in node.children:
        name = c.name.lower()
        if c.kind == "Function" and name in engines and not _local_engine(name):
            raise QueryRefused(
                f"ENGINE = {c.name} reaches files, the network or another process: {_NEVER}"
            )
        if c.kind == "Set":
            raise QueryRefused(f"table SETTINGS (a disk can point at S3): {_NEVER}")


def _local_engine(name: str) -> bool:
    return name in LOCAL_ENGINES or (
        name.endswith("mergetree") and not name.startswith(("replicated", "shared"))
    )


def _as_typed(value: Any, types: set[str]) -> Any:
    """A text value for a placeholder that is no string type is ClickHouse's text of that type
    (``-p ids=[1, 2]`` for ``{ids:Array(UInt32)}``, ``-p r=['a', 'b']`` for an array of
    strings): sent as written. For a string placeholder the text is the value itself."""
    from infdebug.store.client import ParamText

    if isinstance(value, str) and not any(_stringy(t) for t in types):
        return ParamText(value)
    return value


def _stringy(type_name: str) -> bool:
    t = type_name.replace(" ", "")
    while t.startswith(("Nullable(", "LowCardinality(")) and t.endswith(")"):
        t = t[t.index("(") + 1 : -1]
    return t == "String" or t.startswith(("FixedString(", "Enum"))


def _utf8(what: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(e.object[e.start])  # an undecodable byte, as Python keeps it (surrogateescape)
        byte = f"0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        raise QueryRefused(f"{what} is not valid UTF-8 ({byte} at character {e.start})") from None


def _used(store: CheckedStore, stmt: str, params: Mapping[str, Any]) -> dict[str, Any]:
    names = store.placeholders(stmt)
    return {k: v for k, v in params.items() if k in names}


def _names(store: CheckedStore, sql: str) -> set[str]:
    _, rows = store.query_readonly(sql)
    return {str(r[0]) for r in rows}
