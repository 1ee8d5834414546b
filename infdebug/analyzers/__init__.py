"""Analyzers: pure functions from store query results to Findings."""
