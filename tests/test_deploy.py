"""deploy/: every YAML file parses, the OpenTelemetry Collector config's pipelines name only
components it defines and its ClickHouse exporter matches infdebug's otel_traces table, and
the central collector's manifest is consistent with itself (ports, probes, volumes).

Nothing here applies a manifest to a cluster or runs an OpenTelemetry Collector (neither is
available where the suite runs): deploy/k8s/README.md says what was and was not checked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from infdebug.store.base import Store

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
OTEL = DEPLOY / "otel-collector.yaml"
COLLECTOR = DEPLOY / "k8s" / "collector-deployment.yaml"

# The columns the contrib clickhouseexporter's traces INSERT names
# (exporter/clickhouseexporter/internal/sql_templates/traces_insert.sql).
EXPORTER_TRACE_COLUMNS = (
    "Timestamp",
    "TraceId",
    "SpanId",
    "ParentSpanId",
    "TraceState",
    "SpanName",
    "SpanKind",
    "ServiceName",
    "ResourceAttributes",
    "ScopeName",
    "ScopeVersion",
    "SpanAttributes",
    "Duration",
    "StatusCode",
    "StatusMessage",
    "Events.Timestamp",
    "Events.Name",
    "Events.Attributes",
    "Links.TraceId",
    "Links.SpanId",
    "Links.TraceState",
    "Links.Attributes",
)


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _collector_docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in _docs(COLLECTOR)}


def _container() -> dict[str, Any]:
    (c,) = _collector_docs()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def collector_args() -> list[str]:
    """The central collector's command line as the manifest gives it to the image's
    ``infdebug`` entrypoint (``$(VAR)`` references left as written)."""
    args = _container()["args"]
    assert all(isinstance(a, str) for a in args), args
    return list(args)


def _flag(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == name]


@pytest.mark.parametrize(
    "path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_deploy_yaml_parses(path: Path) -> None:
    docs = _docs(path)
    assert docs, path
    if path.parent.name == "k8s":
        for d in docs:
            assert d["apiVersion"] and d["kind"] and d["metadata"]["name"], (path, d)


def test_deploy_new_files_are_there() -> None:
    assert OTEL.is_file() and COLLECTOR.is_file()
    assert set(_collector_docs()) == {"PersistentVolumeClaim", "Deployment", "Service"}


def _pipeline_refs_defined(cfg: dict[str, Any], pipelines: dict[str, Any]) -> None:
    for name, p in pipelines.items():
        assert p.get("receivers") and p.get("exporters"), name
        for section in ("receivers", "processors", "exporters"):
            for ref in p.get(section) or []:
                assert ref in (cfg.get(section) or {}), (name, section, ref)
        procs = p.get("processors") or []
        if "memory_limiter" in procs:  # it has to see the data first to protect the rest
            assert procs[0] == "memory_limiter", name


def _alternative_pipelines(text: str) -> dict[str, Any]:
    """The commented-out alternative (a) pipeline, between its markers, uncommented."""
    m = re.search(r"# --- alternative \(a\) ---\n(.*?)# --- end alternative \(a\) ---", text, re.S)
    assert m, "alternative (a) markers missing"
    lines = [re.sub(r"^\s*# ?", "", ln) for ln in m.group(1).splitlines()]
    return yaml.safe_load("\n".join(lines))


def test_deploy_otel_pipelines_reference_only_defined_components() -> None:
    text = OTEL.read_text()
    cfg = yaml.safe_load(text)
    service = cfg["service"]
    _pipeline_refs_defined(cfg, service["pipelines"])
    for ext in service.get("extensions") or []:
        assert ext in cfg["extensions"], ext
    alt = _alternative_pipelines(text)
    _pipeline_refs_defined(cfg, alt)
    # The two alternatives: (b) active through infdebug, (a) straight into ClickHouse.
    assert service["pipelines"]["traces"]["exporters"] == ["otlphttp/infdebug"]
    assert alt["traces"]["exporters"] == ["clickhouse"]
    protocols = cfg["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    for name in ("otlphttp/infdebug", "clickhouse"):
        exp = cfg["exporters"][name]
        assert exp["sending_queue"]["enabled"] and exp["retry_on_failure"]["enabled"], name


def test_deploy_otel_forwards_to_the_collector_service() -> None:
    cfg = yaml.safe_load(OTEL.read_text())
    endpoint = cfg["exporters"]["otlphttp/infdebug"]["endpoint"]
    svc = _collector_docs()["Service"]
    port = next(p for p in svc["spec"]["ports"] if p["name"] == "otlp-http")
    assert endpoint == f"http://{svc['metadata']['name']}:{port['port']}"
    assert _flag(collector_args(), "--otlp") == [f"0.0.0.0:{port['port']}"]


def test_deploy_otel_clickhouse_exporter_fits_infdebugs_table(store: Store) -> None:
    """The exporter writes into the table infdebug made (create_schema: false) in its
    database, and every column its INSERT names is there; its ttl is infdebug's default
    retention (used only by the exporter's own DDL, which is off)."""
    from infdebug import settings

    exp = yaml.safe_load(OTEL.read_text())["exporters"]["clickhouse"]
    assert exp["create_schema"] is False
    assert exp["traces_table_name"] == "otel_traces" and exp["database"] == "infdebug"
    assert exp["ttl"] == f"{settings.retention_days() * 24}h"
    _, rows = store.query("DESCRIBE TABLE otel_traces")
    assert set(EXPORTER_TRACE_COLUMNS) <= {r[0] for r in rows}
    _, rows = store.query(
        "SELECT engine_full FROM system.tables "
        "WHERE database = currentDatabase() AND name = 'otel_traces'"
    )
    assert f"toIntervalDay({settings.retention_days()})" in rows[0][0]


def test_deploy_collector_manifest_is_consistent() -> None:
    docs = _collector_docs()
    pod = docs["Deployment"]["spec"]["template"]
    spec, c = pod["spec"], _container()
    args = collector_args()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    # --clickhouse is the global option: before the command.
    assert args[0] == "--clickhouse" and args.index("collect") == 2
    assert _flag(args, "--status-listen") == [f"0.0.0.0:{ports['status']}"] == ["0.0.0.0:9464"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["status"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/metrics", "port": "status"}
    # The spool is the PVC, mounted where --spool points, and writable.
    (spool,) = _flag(args, "--spool")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    assert not mounts[spool].get("readOnly")
    claim = vols[mounts[spool]["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert all(m["name"] in vols for m in c["volumeMounts"])
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"] and sc["runAsUser"] != 0
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert docs["Deployment"]["spec"]["strategy"]["type"] == "Recreate"  # RWO spool
    # $(VAR) in args must name variables the container defines.
    env = {e["name"] for e in c["env"]}
    assert {v for a in args for v in re.findall(r"\$\((\w+)\)", a)} <= env
    svc = docs["Service"]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)


def test_deploy_collector_args_are_accepted_by_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    """The manifest's flags, parsed by the real command line (``--help`` appended, so it
    stops after parsing: nothing is started and no store is opened)."""
    from infdebug.cli import cli

    rc = cli.main([*collector_args(), "--help"], prog_name="infdebug", standalone_mode=False)
    assert rc == 0
    out = capsys.readouterr().out
    assert "--otlp" in out and "--status-listen" in out
