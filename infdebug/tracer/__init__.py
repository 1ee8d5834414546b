"""Tracer: the reference engine, in-process tracer, exporters, GPU sampler and sidecar."""
