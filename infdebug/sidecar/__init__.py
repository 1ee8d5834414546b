"""The sidecar tracer: infdebug beside an engine it cannot change (proxy.py), seeing every
request and producing the same records, metrics and spans as the in-process tracer."""
