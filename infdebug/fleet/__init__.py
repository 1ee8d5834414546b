"""A fleet on one machine and the load it serves: replica processes (:mod:`.replicas`), real
workload traces (:mod:`.traces`) turned into prompts (:mod:`.prompts`) and replayed by
streaming clients (:mod:`.loadgen`). The demo and ``infdebug fleet`` / ``load`` use these."""

from infdebug.fleet.replicas import Fleet, FleetError, parse_injections

__all__ = ["Fleet", "FleetError", "parse_injections"]
