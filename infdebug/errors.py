"""infdebug's one exception tree: every error it raises on purpose is an ``InfdebugError``.

A caller that wants to catch "anything infdebug refused or could not do" catches
``InfdebugError``; one that wants a kind catches its branch. Each concrete error still lives
beside the code that raises it (``LineError`` in the schema, ``TokenizerLoadError`` in text/),
deriving from a branch here, and keeps the builtin base it had (``ValueError`` for bad input,
``RuntimeError`` for a failed operation), so existing ``except ValueError`` code still works.

::

    InfdebugError
    ├── InputError (ValueError)          bad input: a log line, a file, a flag value
    ├── StoreError (RuntimeError)        the ClickHouse store failed or refused
    │   └── StoreBusy                    the embedded store is held by another process
    ├── UnavailableError (RuntimeError)  an optional library or a device is missing
    └── OperationError (RuntimeError)    an operation failed (a fleet, a load run, a profile)
"""

from __future__ import annotations


class InfdebugError(Exception):
    """The root of every error infdebug raises on purpose; the message says what and where."""


class InputError(InfdebugError, ValueError):
    """Input that does not satisfy what was expected: names the file, line, field or flag."""


class StoreError(InfdebugError, RuntimeError):
    """A store operation failed; the message says what and where."""


class StoreBusy(StoreError):
    """The embedded store is held by another process (the message names it)."""


class UnavailableError(InfdebugError, RuntimeError):
    """An optional library or a piece of hardware is missing; the message says how to get it."""


class OperationError(InfdebugError, RuntimeError):
    """Something infdebug ran failed: a fleet, a load run, a profiler, a template."""
