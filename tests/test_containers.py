"""Deployment files: docker-compose.yml, Dockerfile, .dockerignore, Grafana, systemd, wrapper.

No Docker daemon here, so these are static checks: the compose file is parsed and checked
against what the ingestor expects (config env names, metrics port), the Dockerfile is linted
with a few rules (and by hadolint when it is on PATH), and the dashboard may only query metrics
that PrometheusObserver really exports.
"""

from __future__ import annotations

import configparser
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from qryptify_ingestor.config import MetricsSettings, unknown_env_names
from qryptify_ingestor.metrics import PrometheusObserver

REPO = Path(__file__).resolve().parents[1]
METRICS_PORT = MetricsSettings().port


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


# --- docker-compose.yml ------------------------------------------------------------------------


def test_compose_has_the_two_services(compose: dict[str, Any]) -> None:
    """The compose file defines exactly the timescaledb and ingestor services."""
    assert set(compose["services"]) == {"timescaledb", "ingestor"}


def test_timescaledb_image_is_official_and_pinned(compose: dict[str, Any]) -> None:
    """TimescaleDB comes from the official image at an exact version for PostgreSQL 15."""
    image = compose["services"]["timescaledb"]["image"]
    assert re.fullmatch(r"timescale/timescaledb:\d+\.\d+\.\d+-pg15", image), image


def test_timescaledb_environment_and_port(compose: dict[str, Any]) -> None:
    """Database name, user and password as documented; 5432 published on loopback only."""
    db = compose["services"]["timescaledb"]
    env = db["environment"]
    assert env["POSTGRES_DB"] == "qryptify"
    assert env["POSTGRES_USER"] == "postgres"
    assert env["POSTGRES_PASSWORD"] == "postgres"
    assert db["ports"] == ["127.0.0.1:5432:5432"]


def test_timescaledb_healthcheck_uses_pg_isready(compose: dict[str, Any]) -> None:
    """The health check asks pg_isready about the qryptify database."""
    hc = compose["services"]["timescaledb"]["healthcheck"]
    test = " ".join(hc["test"]) if isinstance(hc["test"], list) else hc["test"]
    assert "pg_isready" in test and "qryptify" in test
    assert hc["retries"] >= 3


def test_timescaledb_volume_and_schema_init(compose: dict[str, Any]) -> None:
    """Data lives on a declared named volume; sql/ is mounted read-only as the init dir."""
    volumes = compose["services"]["timescaledb"]["volumes"]
    named = [v.split(":")[0] for v in volumes if not v.startswith((".", "/"))]
    assert named and all(n in compose["volumes"] for n in named)
    assert any(v.endswith(":/var/lib/postgresql/data") for v in volumes)
    assert "./sql:/docker-entrypoint-initdb.d:ro" in volumes
    assert sorted(p.name for p in (REPO / "sql").glob("*.sql"))[0].startswith("001_")


def test_ingestor_waits_for_healthy_database(compose: dict[str, Any]) -> None:
    """The ingestor starts only once the database health check passes."""
    ingestor = compose["services"]["ingestor"]
    assert ingestor["depends_on"] == {"timescaledb": {"condition": "service_healthy"}}
    assert ingestor["build"] in (".", {"context": "."})


def test_ingestor_database_url_points_at_the_service(compose: dict[str, Any]) -> None:
    """QRYPTIFY_DATABASE_URL uses the timescaledb service name, its database and credentials."""
    env = compose["services"]["ingestor"]["environment"]
    db_env = compose["services"]["timescaledb"]["environment"]
    expected = (
        f"postgresql://{db_env['POSTGRES_USER']}:{db_env['POSTGRES_PASSWORD']}"
        f"@timescaledb:5432/{db_env['POSTGRES_DB']}"
    )
    assert env["QRYPTIFY_DATABASE_URL"] == expected


def test_ingestor_environment_names_are_known_to_config(compose: dict[str, Any]) -> None:
    """Every QRYPTIFY_* variable in the compose file configures something (no typos)."""
    env = {k: str(v) for k, v in compose["services"]["ingestor"]["environment"].items()}
    assert unknown_env_names(env) == []


def test_ingestor_metrics_published_on_loopback_only(compose: dict[str, Any]) -> None:
    """The metrics port is published on 127.0.0.1 and matches the configured port."""
    ingestor = compose["services"]["ingestor"]
    port = int(ingestor["environment"].get("QRYPTIFY_METRICS_PORT", METRICS_PORT))
    assert ingestor["ports"] == [f"127.0.0.1:{port}:{port}"]
    for svc in compose["services"].values():
        for mapping in svc.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), mapping


# --- Dockerfile --------------------------------------------------------------------------------


def test_base_images_pinned_never_latest() -> None:
    """Every FROM names an exact python:3.11 slim tag, never `latest` or a bare name."""
    froms = [args.split()[0] for word, args in dockerfile_instructions() if word == "FROM"]
    assert froms
    for image in froms:
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), image
    assert "latest" not in (REPO / "Dockerfile").read_text()


def test_runs_as_non_root_user() -> None:
    """The final stage switches to a named, non-root user before the entrypoint."""
    final = dockerfile_instructions()
    last_from = max(i for i, (w, _) in enumerate(final) if w == "FROM")
    users = [args for w, args in final[last_from:] if w == "USER"]
    assert users, "no USER in the final stage"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_pip_installs_are_pinned_and_cacheless() -> None:
    """Every pip install uses --no-cache-dir and the requirements.lock constraints."""
    runs = [args for w, args in dockerfile_instructions() if w == "RUN" and "pip install" in args]
    assert runs
    for args in runs:
        assert "--no-cache-dir" in args
        assert "requirements.lock" in args
    assert any(
        a.startswith("requirements.lock") for w, a in dockerfile_instructions() if w == "COPY"
    )


def test_healthcheck_entrypoint_and_cmd() -> None:
    """HEALTHCHECK probes /health on the metrics port; ENTRYPOINT/CMD run the ingestor."""
    ins = dockerfile_instructions()
    health = [a for w, a in ins if w == "HEALTHCHECK"]
    assert len(health) == 1 and f"127.0.0.1:{METRICS_PORT}/health" in health[0]
    assert [a for w, a in ins if w == "EXPOSE"] == [str(METRICS_PORT)]
    assert json.loads([a for w, a in ins if w == "ENTRYPOINT"][-1]) == ["qryptify"]
    assert json.loads([a for w, a in ins if w == "CMD"][-1]) == [
        "run",
        "--config",
        "/app/config.yaml",
    ]


def test_no_remote_add_no_sudo_no_apt_cache() -> None:
    """No ADD of URLs, no sudo, and apt-get (if ever used) without recommends or caches."""
    for word, args in dockerfile_instructions():
        assert word != "ADD", "use COPY (ADD fetches URLs and unpacks archives implicitly)"
        if word == "RUN":
            assert "sudo " not in args
            if "apt-get install" in args:
                assert "--no-install-recommends" in args
                assert "rm -rf /var/lib/apt/lists" in args


def _dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    return any(
        fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") or path == p
        for p in patterns
    )


def test_copied_files_exist_and_are_not_dockerignored() -> None:
    """Every COPY source from the build context exists and survives .dockerignore."""
    patterns = _dockerignore_patterns()
    for word, args in dockerfile_instructions():
        if word != "COPY" or "--from=" in args:
            continue
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"COPY source {src} does not exist"
            assert not _ignored(src, patterns), f"COPY source {src} is excluded by .dockerignore"


def test_dockerignore_keeps_secrets_and_junk_out() -> None:
    """The build context leaves out .git, the venv, local data and env files."""
    patterns = _dockerignore_patterns()
    for path in (".git", ".venv", ".data", ".env", "tests"):
        assert _ignored(path, patterns), path


def test_hadolint_when_available() -> None:
    """hadolint finds nothing at warning level (skipped when it is not installed)."""
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not on PATH (no offline install); the rules above stand in")
    done = subprocess.run(
        [hadolint, "--failure-threshold", "warning", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- Grafana, systemd, wrapper ---------------------------------------------------------------


def _exported_metric_names() -> set[str]:
    obs = PrometheusObserver()
    names: set[str] = set()
    for family in obs.registry.collect():
        for suffix in ("", "_total", "_bucket", "_count", "_sum", "_created"):
            names.add(family.name + suffix)
    return names


def test_grafana_dashboard_queries_only_exported_metrics() -> None:
    """Every metric the dashboard queries is one PrometheusObserver exports."""
    dash = json.loads((REPO / "deploy" / "grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    exprs = [
        t["expr"] for p in dash["panels"] if p.get("type") != "row" for t in p.get("targets", [])
    ]
    assert len(exprs) >= 10
    used = {m for e in exprs for m in re.findall(r"\bqryptify_[a-z_]+\b", e)}
    exported = _exported_metric_names()
    assert used and used <= exported, used - exported
    core = {
        "qryptify_candles_written_total",
        "qryptify_stream_lag_seconds",
        "qryptify_close_to_commit_seconds_bucket",
        "qryptify_rest_weight_used",
        "qryptify_rest_errors_total",
        "qryptify_ws_reconnects_total",
    }
    assert core <= used
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_systemd_unit_restarts_and_stops_cleanly() -> None:
    """The unit runs as a dedicated user, restarts on failure and stops with SIGTERM in 10 s."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(REPO / "deploy" / "qryptify.service")
    svc = unit["Service"]
    assert svc["User"] not in ("", "root")
    assert svc["Restart"] == "on-failure"
    assert svc["KillSignal"] == "SIGTERM"
    assert svc["TimeoutStopSec"] == "10"
    assert "qryptify run" in svc["ExecStart"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_verify_wrapper_passes_arguments_through() -> None:
    """verify_ingestion.sh is executable bash that execs `qryptify verify "$@"`."""
    script = REPO / "verify_ingestion.sh"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash")
    assert 'verify "$@"' in text
    subprocess.run(["bash", "-n", str(script)], check=True)
    if not (REPO / ".venv" / "bin" / "qryptify").exists():
        pytest.skip("no .venv/bin/qryptify to run the wrapper with")
    done = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "qryptify verify" in done.stdout
