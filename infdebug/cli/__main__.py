"""``python -m infdebug.cli``: the same as the ``infdebug`` command."""

from infdebug.cli import main

main()
