"""Real database servers for the tests, started on loopback by the test command itself.

PostgreSQL's initdb and pg_ctl refuse to run as root, so under root they run as the unprivileged
`postgres` user (created by Debian's package) in a directory that user owns.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    ctl = shutil.which("pg_ctl")
    return Path(ctl).parent if ctl else None


@dataclass
class PostgresServer:
    bindir: Path
    root: Path
    port: int
    user: str | None  # OS user the server runs as; None = the current one

    def _cmd(self, *args: str) -> list[str]:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return [*prefix, *args]

    def start(self) -> None:
        data = self.root / "data"
        subprocess.run(
            self._cmd(str(self.bindir / "initdb"), "-D", str(data), "-U", "bitplan", "--auth=trust", "-E", "UTF8"),
            check=True, capture_output=True,
        )
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        subprocess.run(
            self._cmd(str(self.bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(self.root / "log"),
                      "-w", "start"),
            check=True, capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(
            self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop"),
            capture_output=True,
        )
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://bitplan@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"postgresql://bitplan@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def start_postgres() -> PostgresServer:
    bindir = postgres_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries not found (Debian package 'postgresql')")
    root = Path(tempfile.mkdtemp(prefix="bitplan-pg-"))
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        os.chmod(root, 0o755)
        shutil.chown(root, user=user)
    server = PostgresServer(bindir=bindir, root=root, port=free_port(), user=user)
    server.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1):
                return server
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@dataclass
class RedisServer:
    """A throwaway redis-server on loopback: no persistence, its own directory."""

    proc: subprocess.Popen
    root: Path
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def start_redis(port: int | None = None) -> RedisServer:
    """A fresh redis-server; `port` to start one where a stopped one was (a restart that lost its memory)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server not found (Debian package 'redis-server')")
    root = Path(tempfile.mkdtemp(prefix="bitplan-redis-"))
    port = port or free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(root), "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    server = RedisServer(proc=proc, root=root, port=port)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise OSError(f"redis-server did not start on port {port}")
            time.sleep(0.1)
