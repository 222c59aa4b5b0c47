"""The catalog: an index of the shot files, derived from them and rebuilt from them at will.

SQLite (the stdlib's sqlite3) in the store's folder by default. Tables:

    shots(shot, status, reason, user, host, rig, rig_digest, sequence, sequence_hash, parameters
          (JSON), versions (JSON), t_start, t_end, n_events, n_trips, expired_calibrations,
          built_by, path, size)
    signals(shot, grp, name, unit, n, min, max, mean, t_first, t_last)   grp: signals|telemetry
    calibrations(shot, name, source, version, expired)
    derived(path, source_shot, name, version, code_sha256, created, user)

Nothing here is the truth: a lost or damaged catalog is rebuilt by `reindex` from the files.
Each operation opens its own connection (WAL, busy timeout), so writers in several processes
and readers can share it. A catalog that is not SQLite (a PostgreSQL URL) is not written yet.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any, Iterable

from labrig.drivers.errors import ConfigError

SCHEMA_VERSION = 1
SHOT_COLUMNS = ("shot", "status", "reason", "user", "host", "rig", "rig_digest", "sequence", "sequence_hash",
                "parameters", "versions", "t_start", "t_end", "n_events", "n_trips", "expired_calibrations",
                "built_by", "path", "size")
SIGNAL_COLUMNS = ("shot", "grp", "name", "unit", "n", "min", "max", "mean", "t_first", "t_last")
CAL_COLUMNS = ("shot", "name", "source", "version", "expired")
DERIVED_COLUMNS = ("path", "source_shot", "name", "version", "code_sha256", "created", "user")
STATS = ("min", "max", "mean", "n", "t_first", "t_last", "unit")
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS shots (shot INTEGER PRIMARY KEY, status TEXT, reason TEXT, user TEXT, host TEXT,
    rig TEXT, rig_digest TEXT, sequence TEXT, sequence_hash TEXT, parameters TEXT, versions TEXT, t_start REAL,
    t_end REAL, n_events INTEGER, n_trips INTEGER, expired_calibrations TEXT, built_by TEXT, path TEXT, size INTEGER);
CREATE INDEX IF NOT EXISTS shots_by_time ON shots (t_start);
CREATE TABLE IF NOT EXISTS signals (shot INTEGER, grp TEXT, name TEXT, unit TEXT, n INTEGER, min REAL, max REAL,
    mean REAL, t_first REAL, t_last REAL, PRIMARY KEY (grp, name, shot));
CREATE TABLE IF NOT EXISTS calibrations (shot INTEGER, name TEXT, source TEXT, version TEXT, expired INTEGER,
    PRIMARY KEY (shot, name, source));
CREATE TABLE IF NOT EXISTS derived (path TEXT PRIMARY KEY, source_shot INTEGER, name TEXT, version INTEGER,
    code_sha256 TEXT, created REAL, user TEXT);
PRAGMA user_version = {SCHEMA_VERSION};
"""


class Catalog:
    def __init__(self, location: str | Path):
        text = str(location)
        if "://" in text and not text.startswith("sqlite://"):
            raise ConfigError(f"catalog {text!r}: only SQLite catalogs (a file path or sqlite:///PATH) are "
                              "implemented; PostgreSQL is planned")
        self.path = Path(text.removeprefix("sqlite://")) if text.startswith("sqlite://") else Path(text)

    @contextlib.contextmanager
    def connect(self):
        """A connection in a transaction: committed on success, rolled back on error, always closed."""
        con = sqlite3.connect(self.path, timeout=30)
        try:
            con.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
            con.execute("PRAGMA synchronous=NORMAL")  # the catalog can be rebuilt: no fsync per commit
            if con.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                con.executescript("DROP TABLE IF EXISTS shots; DROP TABLE IF EXISTS signals; "
                                  "DROP TABLE IF EXISTS calibrations; DROP TABLE IF EXISTS derived;")
                con.executescript(SCHEMA)
            with con:
                yield con
        finally:
            con.close()

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def add_shot(self, info: dict[str, Any], con: sqlite3.Connection | None = None) -> None:
        """Insert or replace one shot's rows from `shotfile.describe`."""
        if con is None:
            with self.connect() as con:
                return self.add_shot(info, con)
        row, number = info["shot"], info["shot"]["shot"]
        for table in ("signals", "calibrations"):
            con.execute(f"DELETE FROM {table} WHERE shot = ?", (number,))
        con.execute(_insert("shots", SHOT_COLUMNS), [row.get(c) for c in SHOT_COLUMNS])
        con.executemany(_insert("signals", SIGNAL_COLUMNS),
                        [(number, s["group"], s["name"], s["unit"], s["n"], _num(s["min"]), _num(s["max"]),
                          _num(s["mean"]), _num(s["t_first"]), _num(s["t_last"])) for s in info["signals"]])
        con.executemany(_insert("calibrations", CAL_COLUMNS),
                        [(number, c["name"], c["source"], c["version"], int(c["expired"]))
                         for c in info["calibrations"]])

    def add_derived(self, row: dict[str, Any], con: sqlite3.Connection | None = None) -> None:
        if con is None:
            with self.connect() as con:
                return self.add_derived(row, con)
        con.execute(_insert("derived", DERIVED_COLUMNS), [row.get(c) for c in DERIVED_COLUMNS])

    def rebuild(self, shots: Iterable[dict], derived: Iterable[dict]) -> None:
        """Replace the whole content in one transaction (readers see the old catalog until it commits)."""
        with self.connect() as con:
            for table in ("shots", "signals", "calibrations", "derived"):
                con.execute(f"DELETE FROM {table}")
            for info in shots:
                self.add_shot(info, con)
            for row in derived:
                self.add_derived(row, con)

    def dump(self) -> dict[str, list[tuple]]:
        """Every table, sorted: two catalogs with the same dump say the same thing."""
        with self.connect() as con:
            return {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                    for t in ("shots", "signals", "calibrations", "derived")}

    def query(self, columns: Iterable[str] = (), *, day=None, since=None, until=None, status=None,
              sequence=None, shots=None, where: str | None = None, args: Iterable = ()):
        """One row per shot (a pandas DataFrame indexed by shot). `columns`: "NAME.STAT" for a signal's
        summary (STAT: min, max, mean, n, t_first, t_last, unit), "telemetry/NAME.STAT" for telemetry,
        "params.KEY" for a sequence parameter, or any column of the shots table."""
        import pandas as pd
        select = ["s.shot", "s.t_start", "s.status", "s.user", "s.sequence"]
        names = ["shot", "t_start", "status", "user", "sequence"]
        joins, select_args, join_args = [], [], []
        for i, col in enumerate(columns):
            expr, sargs, join, jargs = _column(col, i)
            select.append(expr)
            names.append(col)
            select_args += sargs
            if join:
                joins.append(join)
                join_args += jargs
        conds, cargs = _filters(day=day, since=since, until=until, status=status, sequence=sequence, shots=shots)
        if where:
            conds.append(f"({where})")
            cargs += list(args)
        sql = (f"SELECT {', '.join(select)} FROM shots s {' '.join(joins)}"
               + (f" WHERE {' AND '.join(conds)}" if conds else "") + " ORDER BY s.shot")
        with self.connect() as con:
            try:
                rows = con.execute(sql, select_args + join_args + cargs).fetchall()
            except sqlite3.OperationalError as exc:
                raise ConfigError(f"catalog query failed: {exc} (columns {list(columns)}, where {where!r})") from None
        frame = pd.DataFrame.from_records(rows, columns=names)
        frame.insert(1, "time", pd.to_datetime(frame["t_start"], unit="s", utc=True).dt.tz_convert(_local_tz()))
        return frame.set_index("shot")

    def sql(self, text: str, args: Iterable = ()):
        """Any read-only SQL over the catalog's tables, as a DataFrame."""
        import pandas as pd
        with self.connect() as con:
            cur = con.execute(text, list(args))
            return pd.DataFrame.from_records(cur.fetchall(), columns=[d[0] for d in cur.description or ()])


def _insert(table: str, columns: tuple[str, ...]) -> str:
    return f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def _num(value):
    """NaN (no samples) is stored as NULL, which SQL aggregates skip."""
    return None if value is None or value != value else value


def _column(col: str, i: int) -> tuple[str, list, str, list]:
    """(select expression, its arguments, join clause, its arguments) of one query column."""
    if col.startswith("params."):
        return "json_extract(s.parameters, ?)", [f'$."{col[len("params."):]}"'], "", []
    if col in SHOT_COLUMNS:
        return f"s.{col}", [], "", []
    group, _, rest = col.rpartition("/") if "/" in col else ("signals", "", col)
    name, _, stat = rest.rpartition(".")
    if not name or stat not in STATS or group not in ("signals", "telemetry"):
        raise ConfigError(f"query column {col!r}: use SIGNAL.STAT (STAT one of {', '.join(STATS)}), "
                          "telemetry/SIGNAL.STAT, params.KEY, or a shots column: " + ", ".join(SHOT_COLUMNS))
    return (f"j{i}.{stat}", [], f"LEFT JOIN signals j{i} ON j{i}.shot = s.shot AND j{i}.grp = ? AND j{i}.name = ?",
            [group, name])


def _filters(*, day, since, until, status, sequence, shots) -> tuple[list[str], list]:
    from .calibrations import as_time
    conds, args = [], []
    if day is not None:
        start = dt.datetime.combine(dt.date.fromisoformat(day) if isinstance(day, str) else day, dt.time())
        conds.append("s.t_start >= ? AND s.t_start < ?")
        args += [start.timestamp(), (start + dt.timedelta(days=1)).timestamp()]  # local midnights
    if since is not None:
        conds.append("s.t_start >= ?")
        args.append(as_time(since, "since"))
    if until is not None:
        conds.append("s.t_start < ?")
        args.append(as_time(until, "until"))
    for column, value in (("status", status), ("sequence", sequence), ("shot", shots)):
        if value is None:
            continue
        values = [value] if isinstance(value, (str, int)) else list(value)
        conds.append(f"s.{column} IN ({', '.join('?' * len(values))})")
        args += values
    return conds, args


def _local_tz():
    return dt.datetime.now().astimezone().tzinfo
