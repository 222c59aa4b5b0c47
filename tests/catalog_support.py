"""For the catalog tests (importable as `catalog_support`: tests/ is on pytest's path): a store of
five shots, and a throwaway PostgreSQL server.

Debian's postgresql package (`apt-get install postgresql`; scripts/test installs it): a cluster made
by initdb in a temporary folder, on a free loopback port, its socket in that folder, trust
authentication, fsync off (it holds nothing worth keeping). As root it runs as the `postgres`
user (PostgreSQL refuses to run as root). Without the binaries the tests skip, unless $CI is set:
then they fail, so CI never passes by skipping.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

USER = "labrig"
DAY = dt.date(2025, 5, 1)


def noon(day: dt.date, hours: float = 0.0) -> float:
    return dt.datetime.combine(day, dt.time(12)).timestamp() + 3600 * hours


def five_shots(store):
    """Five shots over two days (t_start set through the journal's metadata), one failed, one aborted,
    an expired calibration, telemetry, a trip, and a derived file of shot 2."""
    store.calibrations.set("b_probe", {"gain": 2.0}, valid_from=noon(DAY, -48), valid_until=noon(DAY, -24))
    for i, (day, status) in enumerate([(DAY, "success"), (DAY, "success"), (DAY, "fail"),
                                       (DAY + dt.timedelta(days=1), "success"), (DAY + dt.timedelta(days=1), "abort")]):
        writer = store.open_shot(sequence="discharge", parameters={"rf": 0.1 * (i + 1), "gas": "Ar", "pulsed": i == 1})
        t0 = noon(day, i)
        writer.journal.index.meta["t_start"] = t0  # the shot "started" then (only the file's attribute)
        writer.signal("density", t0 + np.arange(50) * 0.01, np.linspace(0, (i + 1) * 1e17, 50), unit="m^-3")
        writer.signal("b_field", t0, np.full(20, 0.01 * (i + 1)), dt=0.01, unit="T")
        writer.telemetry("pressure", [t0], [0.3 + i])
        writer.event("trip", t=t0, interlock="door") if status == "fail" else None
        writer.close(status)
    store.derive(2, "profile", np.arange(3.0), code="np.arange(3.0)")
    return store


def binaries() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def require() -> Path:
    bindir = binaries()
    if bindir is None:
        message = "PostgreSQL server binaries not found (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run the PostgreSQL catalog tests")
        pytest.skip(message)
    return bindir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server(database: str = "labrig_test"):
    """Yields the URL of a new, empty database on a new server; stops the server and removes its
    folder at the end, whatever happened."""
    bindir = require()
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="labrig-pg-"))
    if os.geteuid() == 0:  # postgres refuses root: run its tools as the package's user
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log = folder / "data", folder / "server.log"
    port = _free_port()
    started = False
    try:
        subprocess.run([*as_user, bindir / "initdb", "-D", data, "-U", USER, "--auth=trust", "-E", "UTF8",
                        "--no-sync", "--no-instructions"], check=True, capture_output=True, timeout=120)
        options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off -c full_page_writes=off"
        started = True  # from here on, stop it (pg_ctl stop is harmless if the start failed)
        result = subprocess.run([*as_user, bindir / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "60",
                                 "start"], capture_output=True, text=True, timeout=90)
        if result.returncode != 0:
            raise RuntimeError(f"postgres did not start: {result.stdout}{result.stderr}\n"
                               f"{log.read_text() if log.exists() else ''}")
        import psycopg
        with psycopg.connect(f"postgresql://{USER}@127.0.0.1:{port}/postgres", autocommit=True,
                             connect_timeout=10) as con:
            con.execute(f"CREATE DATABASE {database}")
        yield f"postgresql://{USER}@127.0.0.1:{port}/{database}"
    finally:
        if started:
            try:
                subprocess.run([*as_user, bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "60", "stop"],
                               capture_output=True, timeout=90)
            finally:
                _kill_leftover(data / "postmaster.pid")
        shutil.rmtree(folder, ignore_errors=True)


def _kill_leftover(pidfile: Path) -> None:
    """A server that pg_ctl could not stop: its own pid file names it; SIGQUIT is an immediate shutdown."""
    try:
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, signal.SIGQUIT)
    except (FileNotFoundError, IndexError, ValueError, ProcessLookupError):
        pass
