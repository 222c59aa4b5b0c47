"""The catalog's two databases: what differs between SQLite and PostgreSQL, and nothing else.

catalog.py writes every statement once, with `?` placeholders; a dialect opens connections
(each operation its own transaction), keeps the schema version, and supplies the few pieces
of SQL that differ: column types, upsert, JSON field extraction, table locks for a rebuild.

PostgreSQL: several stores (rigs, or a team's machines) may share one database. Each store
gets its own schema (named by the URL's `?schema=NAME`, else by the store's `catalog-schema`
file, made on first use), holding the same four tables as SQLite plus `catalog_meta` (the
schema version). A schema rather than a store column keeps `sql()` and `dump()` unchanged:
every query sees exactly one store's rows, and a store is dropped with its schema.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from labrig.drivers.errors import ConfigError

from .errors import StoreError

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 5  # s: a server that does not answer fails the operation, never hangs it
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
PG_SCHEMES = ("postgresql://", "postgres://")


class Session:
    """A connection inside one transaction; statements use `?` placeholders on every database."""

    def __init__(self, con, convert: Callable[[str], str], cursor: Callable):
        self.con, self._convert, self._cursor = con, convert, cursor

    def execute(self, sql: str, args: Iterable | None = ()):
        """None for args: the text goes to the database as it is (a user's SQL without placeholders)."""
        return self.con.execute(sql) if args is None else self.con.execute(self._convert(sql), list(args))

    def executemany(self, sql: str, rows: Iterable) -> None:
        rows = list(rows)
        if rows:
            self._cursor().executemany(self._convert(sql), rows)


class SQLite:
    types = {"int": "INTEGER", "real": "REAL", "text": "TEXT"}

    query_errors: tuple = (sqlite3.OperationalError,)
    damaged: tuple = (sqlite3.DatabaseError,)  # not a database (any more): discard() it, rebuild afresh

    def __init__(self, path: Path):
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    @property
    def exists(self) -> bool:
        return self.path.exists()

    @contextlib.contextmanager
    def session(self, prepare: Callable[[Session], None], *, readonly: bool = False):
        """A transaction: committed on success, rolled back on error, always closed. `prepare`
        makes the tables when the file is new or was made by another schema version."""
        con = sqlite3.connect(self.path, timeout=30)
        try:
            con.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
            con.execute("PRAGMA synchronous=NORMAL")  # the catalog can be rebuilt: no fsync per commit
            db = Session(con, str, con.cursor)
            prepare(db)
            if readonly:
                con.execute("PRAGMA query_only = ON")
            with con:
                yield db
        finally:
            con.close()

    @contextlib.contextmanager
    def setup(self, db: Session):
        """One process at a time (re)makes the tables: the others wait, then find them made."""
        db.con.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.con.rollback()
            raise
        db.con.commit()

    def version(self, db: Session) -> int | None:
        return db.execute("PRAGMA user_version").fetchone()[0]

    def set_version(self, db: Session, version: int) -> None:
        db.execute(f"PRAGMA user_version = {int(version)}")

    def upsert(self, table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> str:
        return f"INSERT OR REPLACE INTO {table} ({_names(columns)}) VALUES ({', '.join('?' * len(columns))})"

    def json_field(self, column: str, key: str) -> tuple[str, Any]:
        return f"json_extract({column}, ?)", f'$."{key}"'

    def json_value(self, value):
        return value

    def lock(self, db: Session, tables: Iterable[str]) -> None:
        """SQLite's first write locks the whole file until the commit: nothing to add."""

    def lock_shot(self, db: Session, number: int) -> None:
        """(As lock(): the file's write lock already serialises writers.)"""

    def discard(self) -> None:
        """A damaged file (it is only an index): delete it and its WAL, so the next connection starts afresh."""
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


class Postgres:
    types = {"int": "BIGINT", "real": "DOUBLE PRECISION", "text": "TEXT"}
    damaged: tuple = ()  # a server's tables are not damaged like a file; rebuild() recreates missing ones

    def __init__(self, url: str, schema: str | None):
        self.url = url
        conninfo, given = split_schema(url)
        self.schema = given or schema or "labrig"
        if not SCHEMA_NAME.match(self.schema):
            raise ConfigError(f"catalog {redact(url)}: schema {self.schema!r}: lower-case letters, digits and '_', "
                              "starting with a letter or '_', at most 63 characters")
        try:
            import psycopg
        except ImportError:
            raise ConfigError(f"catalog {redact(url)}: a PostgreSQL catalog needs the psycopg driver: "
                              "pip install 'labrig[postgres]' (or \"psycopg[binary]>=3.1\")") from None
        self._driver = psycopg
        try:
            params = psycopg.conninfo.conninfo_to_dict(conninfo)
        except psycopg.Error as exc:
            raise ConfigError(f"catalog {redact(url)}: not a valid PostgreSQL URL ({one_line(exc)}); "
                              "expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?schema=NAME]") from None
        self._password = str(params.get("password") or "")
        self._conninfo = conninfo
        self._options = {"application_name": "labrig"}
        if "connect_timeout" not in params:
            self._options["connect_timeout"] = CONNECT_TIMEOUT
        # the store's schema first: every statement (and a user's sql()) names the tables bare
        self._options["options"] = f"{params.get('options', '')} -c search_path={self.schema}".strip()
        # a query's own fault (not the connection's): bad SQL, bad values, a write in a read-only transaction
        self.query_errors = (psycopg.ProgrammingError, psycopg.DataError, psycopg.InternalError,
                             psycopg.IntegrityError, psycopg.NotSupportedError)

    def __str__(self) -> str:
        return f"{redact(self.url)} (schema {self.schema})"

    @property
    def exists(self) -> bool:
        with self._connect() as con:
            return con.execute("SELECT to_regclass(%s)", [f"{self.schema}.catalog_meta"]).fetchone()[0] is not None

    @contextlib.contextmanager
    def _connect(self):
        psycopg = self._driver
        try:
            con = psycopg.connect(self._conninfo, autocommit=True, **self._options)
        except psycopg.errors.ConnectionTimeout:
            raise StoreError(f"catalog {redact(self.url)}: the server did not answer within "
                             f"{self._options.get('connect_timeout', 'connect_timeout')} s: check that it runs and "
                             "the host and port; or use the store's own SQLite catalog (no --catalog, "
                             "LABRIG_CATALOG unset)") from None
        except psycopg.Error as exc:
            raise StoreError(f"catalog {redact(self.url)}: cannot connect ({self._hide(one_line(exc))}): check the "
                             "server, the URL's user, password and database; or use the store's own SQLite catalog "
                             "(no --catalog, LABRIG_CATALOG unset)") from None
        try:
            yield con
        except psycopg.OperationalError as exc:  # the server went away or refused mid-way: not the query's fault
            raise StoreError(f"catalog {redact(self.url)}: {self._hide(one_line(exc))}") from None
        finally:
            con.close()

    @contextlib.contextmanager
    def session(self, prepare: Callable[[Session], None], *, readonly: bool = False):
        with self._connect() as con:
            db = Session(con, _pyformat, con.cursor)
            with con.transaction():
                prepare(db)
            with con.transaction():
                if readonly:
                    con.execute("SET TRANSACTION READ ONLY")
                yield db

    def version(self, db: Session) -> int | None:
        if db.execute("SELECT to_regclass(?)", [f"{self.schema}.catalog_meta"]).fetchone()[0] is None:
            return None
        row = db.execute("SELECT value FROM catalog_meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else None

    def set_version(self, db: Session, version: int) -> None:
        db.execute(self.upsert("catalog_meta", ("key", "value"), ("key",)), ["schema_version", str(version)])

    @contextlib.contextmanager
    def setup(self, db: Session):
        """One process at a time (re)makes the schema (inside prepare's transaction, which commits it):
        the others wait on the lock, then find it made."""
        db.execute("SELECT pg_advisory_xact_lock(hashtext(?))", [f"labrig catalog {self.schema}"])
        db.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
        db.execute("CREATE TABLE IF NOT EXISTS catalog_meta (key TEXT PRIMARY KEY, value TEXT)")
        yield

    def upsert(self, table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> str:
        rest = [c for c in columns if c not in key]
        action = f"UPDATE SET {', '.join(f'{quote(c)} = EXCLUDED.{quote(c)}' for c in rest)}" if rest else "NOTHING"
        return (f"INSERT INTO {table} ({_names(columns)}) VALUES ({', '.join('?' * len(columns))}) "
                f"ON CONFLICT ({_names(key)}) DO {action}")

    def json_field(self, column: str, key: str) -> tuple[str, Any]:
        return f"({column}::jsonb -> ?)", key

    def json_value(self, value):
        """As SQLite's json_extract gives it: booleans as 1/0, arrays and objects as compact JSON text."""
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, (list, dict)):
            return json.dumps(value, separators=(",", ":"))
        return value

    def lock(self, db: Session, tables: Iterable[str]) -> None:
        """A rebuild waits for running writers and holds new ones until it commits (readers go on, seeing
        the old catalog); the order is the one add_shot writes in, so the two never deadlock."""
        db.execute(f"LOCK TABLE {', '.join(tables)} IN SHARE ROW EXCLUSIVE MODE")

    def lock_shot(self, db: Session, number: int) -> None:
        """Writers of the same shot take turns: a DELETE locks its rows in table order and an upsert in key
        order, so two at once can deadlock; writers of different shots never wait for each other."""
        db.execute("SELECT pg_advisory_xact_lock(hashtext(?), ?)", [f"labrig shot {self.schema}", int(number) % 2**31])

    def discard(self) -> None:
        pass

    def _hide(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text


def open_dialect(location: str | Path, schema: str | None = None) -> SQLite | Postgres:
    text = str(location)
    if text.startswith(PG_SCHEMES):
        return Postgres(text, schema)
    if "://" in text and not text.startswith("sqlite://"):
        raise ConfigError(f"catalog {redact(text)}: use a SQLite file (a path or sqlite:///PATH) or a PostgreSQL "
                          "URL (postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE)")
    return SQLite(Path(text.removeprefix("sqlite://")))


def redact(url: str) -> str:
    """The URL with its password (in the user part or a `password=` parameter) shown as ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r":[^:@/]*@", ":***@", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
    query = "&".join(f"{k}=***" if k == "password" else f"{k}={v}" for k, v in parse_qsl(parts.query, True))
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def split_schema(url: str) -> tuple[str, str | None]:
    """(the URL for the driver, its `schema` parameter): `schema` is labrig's, libpq would refuse it."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in pairs if k == "schema"), None)
    rest = urlencode([(k, v) for k, v in pairs if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


_PIECES = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?|%")


def _pyformat(sql: str) -> str:
    """`?` placeholders (outside quoted literals and names) as psycopg's %s; a literal % as %%."""
    return _PIECES.sub(lambda m: {"?": "%s", "%": "%%"}.get(m.group(0), m.group(0).replace("%", "%%")), sql)


def quote(name: str) -> str:
    return f'"{name}"'  # quoted: `user` is a reserved word in PostgreSQL


def _names(columns: Iterable[str]) -> str:
    return ", ".join(quote(c) for c in columns)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
