"""Analyzers: pure functions from store query results to Findings (see base.py).

Importing the package registers nothing: ``base.discover()`` imports every module of it,
and each ``@analyzer`` function registers itself on import; ``base.analyze`` runs them.
"""
