"""infdebug: observability and debugging for LLM inference fleets."""

__version__ = "0.1.0"
