"""`make demo`: the simulator and the ingestor together, no internet, no Docker.

Starts a throwaway PostgreSQL cluster (scripts/localdb.sh in a temp dir), `qryptify sim` on a free
port, then `qryptify run` against both: backfill progress, then live closes landing. Stops
everything after the first live closes (or --seconds) and prints `qryptify status`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=75.0, help="stop after this long")
    parser.add_argument("--days", type=float, default=14.0, help="history to backfill")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="qryptify-demo-"))
    os.chmod(tmp, 0o755)
    db_port = free_port()
    sim_port = free_port()
    env = {
        **os.environ,
        "QRYPTIFY_LOCALDB_DIR": str(tmp / "pg"),
        "QRYPTIFY_LOCALDB_PORT": str(db_port),
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        print("== starting a temporary PostgreSQL cluster", flush=True)
        url = subprocess.run(
            [str(ROOT / "scripts/localdb.sh"), "start"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        print(f"   {url}")
        print(f"== starting the Binance simulator on 127.0.0.1:{sim_port}", flush=True)
        sim = subprocess.Popen([str(BIN / "qryptify"), "sim", "--port", str(sim_port)])
        procs.append(sim)
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", sim_port)) == 0:
                    break
            time.sleep(0.1)
        start = (datetime.now(UTC) - timedelta(days=args.days)).strftime("%Y-%m-%dT%H:%M")
        run_env = {
            **env,
            "QRYPTIFY_DATABASE_URL": url,
            "QRYPTIFY_REST_URL": f"http://127.0.0.1:{sim_port}",
            "QRYPTIFY_WS_URL": f"ws://127.0.0.1:{sim_port}/market",
            "QRYPTIFY_SYMBOLS": "BTCUSDT,ETHUSDT,BNBUSDT",
            "QRYPTIFY_INTERVALS": "1m,5m",
            "QRYPTIFY_START_DATE": start,
            "QRYPTIFY_METRICS_ENABLED": "false",
        }
        print(
            f"== qryptify run: backfill from {start} UTC, then live"
            f" (stops after {args.seconds:.0f} s)",
            flush=True,
        )
        ingestor = subprocess.Popen(
            [str(BIN / "qryptify"), "run", "--config", os.devnull], env=run_env
        )
        procs.append(ingestor)
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline and ingestor.poll() is None:
            time.sleep(0.5)
        if ingestor.poll() is None:
            ingestor.send_signal(signal.SIGTERM)
            ingestor.wait(timeout=10)
        print(f"== ingestor exited with {ingestor.returncode}; status:", flush=True)
        subprocess.run(
            [str(BIN / "qryptify"), "status", "--config", os.devnull], env=run_env, check=False
        )
        return 0 if ingestor.returncode == 0 else 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=10)
        subprocess.run(
            [str(ROOT / "scripts/localdb.sh"), "stop"], env=env, check=False, capture_output=True
        )
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
