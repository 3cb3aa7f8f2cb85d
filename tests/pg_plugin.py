"""Pytest plugin: throwaway PostgreSQL clusters for tests that need a real database.

Two session-scoped clusters, started lazily (only the modes a run selects) and stopped at the end:

- ``plain``: PostgreSQL 15 as Debian ships it.
- ``timescaledb``: the same with ``shared_preload_libraries = 'timescaledb'``. The extension comes
  from ``<repo>/../shared/timescaledb`` (installed with its ``install.sh`` when ``--check`` fails
  and we are root). When it cannot be had, the TimescaleDB-mode tests are SKIPPED with the
  reason, never passed.

Each cluster lives in its own temp dir (data, log, Unix socket), listens on a free TCP port on
127.0.0.1, trusts local connections (fsync off: the data is thrown away) and has a password role
``qryptify``/``secret`` that must authenticate with SCRAM over TCP (for "wrong password" tests).
PostgreSQL refuses to run as root, so when we are root the server runs as the ``postgres`` user.

Fixtures:

- ``pg_cluster``: a running :class:`PgCluster`, parametrized over ``["plain", "timescaledb"]``
  (test ids ``[plain]``/``[timescaledb]``, so ``-k plain`` works).
- ``db_mode``: ``"plain"`` or ``"timescaledb"`` for the current ``pg_cluster``.
- ``database_url``: a fresh, empty database on ``pg_cluster`` per test, dropped afterwards.
- ``pg_plain_cluster`` / ``plain_database_url`` and ``pg_timescaledb_cluster`` /
  ``timescaledb_database_url``: the same for tests that need only one mode.

Chaos helpers on :class:`PgCluster`: ``stop(mode="immediate")``, ``start()``, ``restart()``,
``dsn(dbname, user=..., password=...)``, ``execute(sql, dbname=...)``. A test that stops a cluster
need not restart it: the next ``database_url`` (and session teardown) brings it back.

Environment: ``QRYPTIFY_PG_BINDIR`` (default ``/usr/lib/postgresql/15/bin``),
``QRYPTIFY_TIMESCALEDB_DIR`` (default ``<repo>/../shared/timescaledb``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import psycopg
import pytest
from psycopg import sql

REPO_ROOT = Path(__file__).resolve().parents[1]
PG_BINDIR = Path(os.environ.get("QRYPTIFY_PG_BINDIR", "/usr/lib/postgresql/15/bin"))
TIMESCALEDB_DIR = Path(
    os.environ.get("QRYPTIFY_TIMESCALEDB_DIR", str(REPO_ROOT.parent / "shared" / "timescaledb"))
)
MODES = ("plain", "timescaledb")
PASSWORD_ROLE = ("qryptify", "secret")

Mode = Literal["plain", "timescaledb"]


class ClusterUnavailable(Exception):
    """This kind of cluster cannot be started here; the message says why (becomes a skip)."""


def _as_server_user() -> list[str]:
    """Command prefix that runs a server binary as a non-root user (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"]
    raise ClusterUnavailable("running as root and `runuser` is missing: cannot start PostgreSQL")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ensure_timescaledb_installed() -> None:
    """Install the prebuilt TimescaleDB if needed and possible, else raise ClusterUnavailable."""
    install = TIMESCALEDB_DIR / "install.sh"
    if not install.is_file():
        raise ClusterUnavailable(f"TimescaleDB not available: {install} does not exist")
    check = subprocess.run([install, "--check"], capture_output=True, text=True, check=False)
    if check.returncode == 0:
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable(
            f"TimescaleDB is not installed and we are not root: run `sudo {install}`"
        )
    done = subprocess.run([install], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ClusterUnavailable(
            f"TimescaleDB install failed: {(done.stderr or done.stdout).strip()[-500:]}"
        )


class PgCluster:
    """One throwaway PostgreSQL cluster in a temp dir; `start`/`stop` may be repeated."""

    def __init__(self, mode: Mode) -> None:
        self.mode: Mode = mode
        self.port = _free_port()
        self.host = "127.0.0.1"
        # /tmp, not $TMPDIR: the Unix socket path must stay under 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix=f"qryptify-pg-{mode}-", dir="/tmp"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._prefix = _as_server_user()
        if self._prefix:
            shutil.chown(self.root, "postgres", "postgres")
        self.root.chmod(0o755)
        self._initdb()

    # --- lifecycle ---------------------------------------------------------------------------

    def _run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [*self._prefix, *(str(a) for a in args)]
        # cwd=/ : the server's working directory must be readable by the postgres user.
        done = subprocess.run(cmd, capture_output=True, text=True, cwd="/", check=False)
        if check and done.returncode != 0:
            raise ClusterUnavailable(
                f"{Path(str(args[0])).name} failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-800:]}\n{self.log_tail()}"
            )
        return done

    def _initdb(self) -> None:
        if not (PG_BINDIR / "initdb").exists():
            raise ClusterUnavailable(f"PostgreSQL binaries not found in {PG_BINDIR}")
        self._run(
            PG_BINDIR / "initdb",
            "-D",
            self.data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        conf = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.root}'",
            # The OS never crashes under a test, so skipping fsync loses nothing. Commits stay
            # synchronous: chaos tests crash the server (stop -m immediate) and must find every
            # committed row after the restart.
            "fsync = off",
            "full_page_writes = off",
            "max_connections = 200",
            "password_encryption = 'scram-sha-256'",
        ]
        if self.mode == "timescaledb":
            conf += [
                "shared_preload_libraries = 'timescaledb'",
                "timescaledb.telemetry_level = off",
            ]
        # PostgreSQL 15's initdb has no -c option, so settings are appended to postgresql.conf.
        # The files belong to postgres; write them through `tee -a` as that user.
        self._append(self.data / "postgresql.conf", "\n".join(conf) + "\n")
        hba = (
            "local all all trust\n"
            f"host all {PASSWORD_ROLE[0]} 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 trust\n"
        )
        self._write(self.data / "pg_hba.conf", hba)

    def _append(self, path: Path, text: str) -> None:
        subprocess.run(
            [*self._prefix, "tee", "-a", str(path)],
            input=text,
            capture_output=True,
            text=True,
            check=True,
        )

    def _write(self, path: Path, text: str) -> None:
        subprocess.run(
            [*self._prefix, "tee", str(path)],
            input=text,
            capture_output=True,
            text=True,
            check=True,
        )

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run(PG_BINDIR / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start")

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Stop the server; `immediate` is a crash (no checkpoint), like pulling the plug."""
        if self.running:
            self._run(PG_BINDIR / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        self.stop(mode)
        self.start()

    def ensure_running(self) -> None:
        if not self.running:
            self.start()

    def destroy(self) -> None:
        with contextlib.suppress(ClusterUnavailable):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # --- connecting --------------------------------------------------------------------------

    def dsn(
        self, dbname: str = "postgres", *, user: str = "postgres", password: str | None = None
    ) -> str:
        """A libpq URL over TCP to this cluster (trust auth unless `user` is the password role)."""
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}"

    def execute(self, query: str | sql.Composable, dbname: str = "postgres") -> None:
        """Run one statement in autocommit mode as the superuser (setup and teardown helper)."""
        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            conn.execute(query)

    def create_database(self, name: str) -> str:
        self.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        # FORCE: a test may leave pool connections behind (or a crashed one); drop anyway.
        self.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )

    def __repr__(self) -> str:
        return f"PgCluster({self.mode}, port={self.port}, root={self.root})"


class _Clusters:
    """Session registry: each mode is created at most once, on first use."""

    def __init__(self) -> None:
        self._clusters: dict[str, PgCluster] = {}
        self._failures: dict[str, str] = {}

    def get(self, mode: Mode) -> PgCluster:
        if mode in self._failures:
            pytest.skip(self._failures[mode])
        cluster = self._clusters.get(mode)
        if cluster is None:
            try:
                if mode == "timescaledb":
                    _ensure_timescaledb_installed()
                cluster = PgCluster(mode)
                self._clusters[mode] = cluster
                cluster.start()
                cluster.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(PASSWORD_ROLE[0]), sql.Literal(PASSWORD_ROLE[1])
                    )
                )
            except ClusterUnavailable as exc:
                self._failures[mode] = f"{mode} PostgreSQL cluster unavailable: {exc}"
                pytest.skip(self._failures[mode])
        cluster.ensure_running()
        return cluster

    def close(self) -> None:
        for cluster in self._clusters.values():
            cluster.destroy()
        self._clusters.clear()


@pytest.fixture(scope="session")
def _pg_clusters() -> Iterator[_Clusters]:
    clusters = _Clusters()
    # atexit too: a KeyboardInterrupt during setup must not leave a postmaster behind.
    atexit.register(clusters.close)
    try:
        yield clusters
    finally:
        clusters.close()
        atexit.unregister(clusters.close)


@pytest.fixture(scope="session", params=MODES, ids=MODES)
def pg_cluster(request: pytest.FixtureRequest, _pg_clusters: _Clusters) -> PgCluster:
    """A running cluster per mode: plain PostgreSQL and PostgreSQL + TimescaleDB."""
    mode: Mode = request.param
    return _pg_clusters.get(mode)


@pytest.fixture(scope="session")
def pg_plain_cluster(_pg_clusters: _Clusters) -> PgCluster:
    """The plain PostgreSQL cluster, for tests that need only one mode."""
    return _pg_clusters.get("plain")


@pytest.fixture(scope="session")
def pg_timescaledb_cluster(_pg_clusters: _Clusters) -> PgCluster:
    """The TimescaleDB cluster, for TimescaleDB-only tests (skipped with the reason if absent)."""
    return _pg_clusters.get("timescaledb")


@pytest.fixture
def db_mode(pg_cluster: PgCluster) -> Mode:
    """'plain' or 'timescaledb': the mode of the current `pg_cluster`."""
    return pg_cluster.mode


def _fresh_database(cluster: PgCluster) -> Iterator[str]:
    cluster.ensure_running()
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = cluster.create_database(name)
    try:
        yield url
    finally:
        cluster.ensure_running()  # a chaos test may have left it stopped
        cluster.drop_database(name)


@pytest.fixture
def database_url(pg_cluster: PgCluster) -> Iterator[str]:
    """URL of a fresh empty database on `pg_cluster`, dropped after the test."""
    yield from _fresh_database(pg_cluster)


@pytest.fixture
def plain_database_url(pg_plain_cluster: PgCluster) -> Iterator[str]:
    """URL of a fresh empty database on the plain cluster, dropped after the test."""
    yield from _fresh_database(pg_plain_cluster)


@pytest.fixture
def timescaledb_database_url(pg_timescaledb_cluster: PgCluster) -> Iterator[str]:
    """URL of a fresh empty database on the TimescaleDB cluster, dropped after the test."""
    yield from _fresh_database(pg_timescaledb_cluster)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use a cluster get the `db` marker, so `-m "not db"` skips them all."""
    db_fixtures = {
        "pg_cluster",
        "pg_plain_cluster",
        "pg_timescaledb_cluster",
        "database_url",
        "plain_database_url",
        "timescaledb_database_url",
    }
    for item in items:
        if db_fixtures & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)
