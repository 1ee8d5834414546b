"""Analyzers: pure functions from store query results to Findings (see base.py).

Importing the package registers every analyzer module below.
"""

from infdebug.analyzers import output_drift, template_drift, tokenizer_drift  # noqa: F401
