"""The CLI's typed context: where the store is (``--home`` / ``--clickhouse``), handed to
every command by :data:`pass_cli` instead of click's untyped ``obj``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import click

from infdebug.console import fail
from infdebug.store import Store, StoreError, open_store


@dataclass(frozen=True)
class CliContext:
    """What the root group's options say about the store; commands open it through here."""

    home: str | None = None
    clickhouse: str | None = None

    def open_store(self) -> Store:
        """The store, or :class:`StoreError` (a busy embedded store, a server that refuses)."""
        return open_store(self.clickhouse, self.home)

    @contextmanager
    def store(self) -> Iterator[Store]:
        """The store for the length of a ``with``. A store that cannot be opened (busy,
        unreachable), or a :class:`StoreError` inside the ``with``, exits 2 with why: one
        line on stderr, or ``{"error": …}`` on stdout under ``--json`` (see ``fail``)."""
        try:
            st = self.open_store()
        except StoreError as e:
            fail(str(e))
        try:
            yield st
        except StoreError as e:
            fail(str(e))
        finally:
            st.close()


def current() -> CliContext:
    """The running command's context (a default one when a command runs outside the root group,
    as tests do with ``CliRunner().invoke(command)``)."""
    ctx = click.get_current_context()
    obj = ctx.find_object(CliContext)
    return obj if obj is not None else CliContext()


pass_cli = click.make_pass_decorator(CliContext, ensure=True)
