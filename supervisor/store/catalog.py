"""The catalog: an index of the shot files, derived from them and rebuilt from them at will.

SQLite (the stdlib's sqlite3) in the store's folder by default; a PostgreSQL URL
(postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?schema=NAME]) for a team, which several stores
may share, each in its own schema (dialects.py says how, and what else differs). Tables:

    shots(shot, status, reason, user, host, rig, rig_digest, sequence, sequence_hash, parameters
          (JSON), versions (JSON), t_start, t_end, n_events, n_trips, expired_calibrations,
          built_by, path, size)
    signals(shot, grp, name, unit, n, min, max, mean, t_first, t_last)   grp: signals|telemetry
    calibrations(shot, name, source, version, expired)
    derived(path, source_shot, name, version, code_sha256, created, user)

Nothing here is the truth: a lost or damaged catalog is rebuilt by `reindex` from the files.
Each operation opens its own connection and runs in one transaction (SQLite: WAL, busy timeout;
PostgreSQL: upserts, a rebuild locks out writers), so writers in several processes and readers
can share it. Statements are written once, with `?` placeholders, for both databases.
"""
from __future__ import annotations

import datetime as dt
import logging
import numbers
from pathlib import Path
from typing import Any, Iterable

from labrig.drivers.errors import ConfigError

from .dialects import Session, one_line, open_dialect, quote

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
# table -> ((column, type), ...), primary key; the types are the dialect's (int, real, text)
TABLES: dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, ...]]] = {
    "shots": ((("shot", "int"), ("status", "text"), ("reason", "text"), ("user", "text"), ("host", "text"),
               ("rig", "text"), ("rig_digest", "text"), ("sequence", "text"), ("sequence_hash", "text"),
               ("parameters", "text"), ("versions", "text"), ("t_start", "real"), ("t_end", "real"),
               ("n_events", "int"), ("n_trips", "int"), ("expired_calibrations", "text"), ("built_by", "text"),
               ("path", "text"), ("size", "int")), ("shot",)),
    "signals": ((("shot", "int"), ("grp", "text"), ("name", "text"), ("unit", "text"), ("n", "int"), ("min", "real"),
                 ("max", "real"), ("mean", "real"), ("t_first", "real"), ("t_last", "real")), ("grp", "name", "shot")),
    "calibrations": ((("shot", "int"), ("name", "text"), ("source", "text"), ("version", "text"),
                      ("expired", "int")), ("shot", "name", "source")),
    "derived": ((("path", "text"), ("source_shot", "int"), ("name", "text"), ("version", "int"),
                 ("code_sha256", "text"), ("created", "real"), ("user", "text")), ("path",)),
}
SHOT_COLUMNS, SIGNAL_COLUMNS, CAL_COLUMNS, DERIVED_COLUMNS = (tuple(c for c, _ in TABLES[t][0]) for t in TABLES)
WRITE_ORDER = ("signals", "calibrations", "shots", "derived")  # add_shot's order, which rebuild's lock follows
STATS = ("min", "max", "mean", "n", "t_first", "t_last", "unit")


def _ddl(types: dict[str, str]) -> list[str]:
    tables = [f"CREATE TABLE IF NOT EXISTS {t} ({', '.join(f'{quote(c)} {types[k]}' for c, k in cols)}, "
              f"PRIMARY KEY ({', '.join(quote(c) for c in key)}))" for t, (cols, key) in TABLES.items()]
    return tables + ["CREATE INDEX IF NOT EXISTS shots_by_time ON shots (t_start)"]


class Catalog:
    """`Catalog(location, *, schema=None)`: a SQLite path (or sqlite:///PATH) or a PostgreSQL URL;
    `schema`: the store's schema in a PostgreSQL database, unless the URL names one."""

    def __init__(self, location: str | Path, *, schema: str | None = None):
        self.dialect = open_dialect(location, schema)
        self.path: Path | None = getattr(self.dialect, "path", None)  # the SQLite file; None on PostgreSQL
        self._ddl = _ddl(self.dialect.types)
        self._upsert = {t: self.dialect.upsert(t, tuple(c for c, _ in cols), key) for t, (cols, key) in TABLES.items()}

    def __str__(self) -> str:
        return str(self.dialect)

    def __repr__(self) -> str:
        return f"Catalog({str(self)!r})"

    def connect(self, *, readonly: bool = False):
        """A Session in a transaction: committed on success, rolled back on error, always closed."""
        return self.dialect.session(self._prepare, readonly=readonly)

    def _prepare(self, db: Session) -> None:
        """Make the tables if they are missing or of another schema version (only an index: dropped, not migrated)."""
        if self.dialect.version(db) == SCHEMA_VERSION:
            return
        with self.dialect.setup(db):
            if self.dialect.version(db) != SCHEMA_VERSION:  # not made by another process meanwhile
                for table in TABLES:
                    db.execute(f"DROP TABLE IF EXISTS {table}")
                for statement in self._ddl:
                    db.execute(statement)
                self.dialect.set_version(db, SCHEMA_VERSION)

    @property
    def exists(self) -> bool:
        return self.dialect.exists

    def add_shot(self, info: dict[str, Any], con: Session | None = None) -> None:
        """Insert or replace one shot's rows from `shotfile.describe`."""
        if con is None:
            with self.connect() as con:
                return self.add_shot(info, con)
        number = info["shot"]["shot"]
        self.dialect.lock_shot(con, number)
        for table in ("signals", "calibrations"):
            con.execute(f"DELETE FROM {table} WHERE shot = ?", (number,))
        self._write(con, [info], [])

    def add_derived(self, row: dict[str, Any], con: Session | None = None) -> None:
        if con is None:
            with self.connect() as con:
                return self.add_derived(row, con)
        self._write(con, [], [row])

    def _write(self, con: Session, shots: list[dict], derived: list[dict]) -> None:
        """Many shots' rows in one statement per table (in WRITE_ORDER)."""
        con.executemany(self._upsert["signals"], [
            (i["shot"]["shot"], s["group"], s["name"], s["unit"], s["n"], _num(s["min"]), _num(s["max"]),
             _num(s["mean"]), _num(s["t_first"]), _num(s["t_last"])) for i in shots for s in i["signals"]])
        con.executemany(self._upsert["calibrations"], [
            (i["shot"]["shot"], c["name"], c["source"], c["version"], int(c["expired"]))
            for i in shots for c in i["calibrations"]])
        con.executemany(self._upsert["shots"], [[i["shot"].get(c) for c in SHOT_COLUMNS] for i in shots])
        con.executemany(self._upsert["derived"], [[row.get(c) for c in DERIVED_COLUMNS] for row in derived])

    def rebuild(self, shots: Iterable[dict], derived: Iterable[dict]) -> None:
        """Replace the whole content in one transaction (readers see the old catalog until it commits).
        A damaged SQLite file is deleted and made afresh: it is only an index."""
        shots, derived = list(shots), list(derived)
        try:
            self._rebuild(shots, derived)
        except self.dialect.damaged as exc:
            log.warning("catalog %s unreadable (%s): rebuilding it from scratch", self, exc)
            self.dialect.discard()
            self._rebuild(shots, derived)

    def _rebuild(self, shots: list[dict], derived: list[dict]) -> None:
        with self.connect() as con:  # a table dropped by hand (the version says it is there): made again
            for statement in self._ddl:  # (its own transaction: CREATE INDEX locks `shots` out of WRITE_ORDER)
                con.execute(statement)
        with self.connect() as con:
            self.dialect.lock(con, WRITE_ORDER)
            for table in WRITE_ORDER:
                con.execute(f"DELETE FROM {table}")
            self._write(con, shots, derived)

    def dump(self) -> dict[str, list[tuple]]:
        """Every table, sorted: two catalogs with the same dump say the same thing."""
        with self.connect(readonly=True) as con:
            return {t: sorted((tuple(r) for r in con.execute(f"SELECT * FROM {t}").fetchall()), key=repr)
                    for t in TABLES}

    def query(self, columns: Iterable[str] = (), *, day=None, since=None, until=None, status=None,
              sequence=None, shots=None, where: str | None = None, args: Iterable = ()):
        """One row per shot (a pandas DataFrame indexed by shot). `columns`: "NAME.STAT" for a signal's
        summary (STAT: min, max, mean, n, t_first, t_last, unit), "telemetry/NAME.STAT" for telemetry,
        "params.KEY" for a sequence parameter, or any column of the shots table. `where`: SQL over the
        shots table `s`, with `?` placeholders filled from `args` (on either database)."""
        import pandas as pd
        select = ["s.shot", "s.t_start", "s.status", 's."user"', "s.sequence"]
        names = ["shot", "t_start", "status", "user", "sequence"]
        joins, select_args, join_args, json_columns = [], [], [], []
        for i, col in enumerate(columns):
            expr, sargs, join, jargs = self._column(col, i)
            select.append(expr)
            names.append(col)
            select_args += sargs
            if col.startswith("params."):
                json_columns.append(col)
            if join:
                joins.append(join)
                join_args += jargs
        conds, cargs = _filters(day=day, since=since, until=until, status=status, sequence=sequence, shots=shots)
        if where:
            conds.append(f"({where})")
            cargs += list(args)
        sql = (f"SELECT {', '.join(select)} FROM shots s {' '.join(joins)}"
               + (f" WHERE {' AND '.join(conds)}" if conds else "") + " ORDER BY s.shot")
        with self.connect(readonly=True) as con:
            try:
                rows = con.execute(sql, select_args + join_args + cargs).fetchall()
            except self.dialect.query_errors as exc:
                raise ConfigError(f"catalog query failed: {one_line(exc)} (columns {list(columns)}, "
                                  f"where {where!r})") from None
        frame = pd.DataFrame.from_records([tuple(r) for r in rows], columns=names)
        for col in json_columns:
            frame[col] = frame[col].map(self.dialect.json_value, na_action="ignore")
        frame.insert(1, "time", pd.to_datetime(frame["t_start"], unit="s", utc=True).dt.tz_convert(_local_tz()))
        return frame.set_index("shot")

    def sql(self, text: str, args: Iterable = ()):
        """Any read-only SQL over the catalog's tables, as a DataFrame; `?` placeholders take `args`
        (without args the text goes to the database as written)."""
        import pandas as pd
        args = list(args)
        with self.connect(readonly=True) as con:
            try:
                cur = con.execute(text, args or None)
            except self.dialect.query_errors as exc:
                raise ConfigError(f"catalog SQL failed: {one_line(exc)} ({text!r})") from None
            return pd.DataFrame.from_records([tuple(r) for r in cur.fetchall()],
                                             columns=[d[0] for d in cur.description or ()])

    def _column(self, col: str, i: int) -> tuple[str, list, str, list]:
        """(select expression, its arguments, join clause, its arguments) of one query column."""
        if col.startswith("params."):
            expr, arg = self.dialect.json_field("s.parameters", col[len("params."):])
            return expr, [arg], "", []
        if col in SHOT_COLUMNS:
            return f"s.{quote(col)}", [], "", []
        group, _, rest = col.rpartition("/") if "/" in col else ("signals", "", col)
        name, _, stat = rest.rpartition(".")
        if not name or stat not in STATS or group not in ("signals", "telemetry"):
            raise ConfigError(f"query column {col!r}: use SIGNAL.STAT (STAT one of {', '.join(STATS)}), "
                              "telemetry/SIGNAL.STAT, params.KEY, or a shots column: " + ", ".join(SHOT_COLUMNS))
        return (f"j{i}.{quote(stat)}", [],
                f"LEFT JOIN signals j{i} ON j{i}.shot = s.shot AND j{i}.grp = ? AND j{i}.name = ?", [group, name])


def _num(value):
    """NaN (no samples) is stored as NULL, which SQL aggregates skip."""
    return None if value is None or value != value else value


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
        values = [value] if isinstance(value, (str, numbers.Integral)) else list(value)
        if column == "shot":
            values = [int(v) for v in values]  # numpy integers too
        conds.append(f"s.{column} IN ({', '.join('?' * len(values))})")
        args += values
    return conds, args


def _local_tz():
    return dt.datetime.now().astimezone().tzinfo
