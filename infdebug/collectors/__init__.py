"""Collectors: ingestion paths from files, OTLP, Prometheus and NVML into the store."""
