"""ShotStore: numbered shots as immutable HDF5 files, a journal per running shot, a catalog over them.

Folder (default: $LABRIG_STORE, else STATE_DIR/store; give `root` to choose):

    shots/shot-000042.h5         complete shots, read-only (shotfile.py has the layout)
    journal/shot-000043.journal  running shots (locked by their writer) or ones left by a crash
    derived/shot-000042/NAME.vK.h5  processed data, pointing at its source shot (derived.py)
    calibrations.jsonl           the calibration registry (calibrations.py)
    catalog.sqlite               the index (catalog.py), rebuilt from the files by reindex()
    catalog-schema               this store's schema name in a shared PostgreSQL catalog (made on first use)
    next-shot, .lock             the shot counter and the lock that guards it
"""
from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import inspect
import logging
import os
import platform
import re
import secrets
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from labrig.drivers.errors import ConfigError

from .calibrations import CalibrationRegistry
from .catalog import Catalog
from .dialects import PG_SCHEMES, SCHEMA_NAME, split_schema
from .errors import StoreError, StoreFull
from .journal import META, JournalWriter, read_journal
from .shotfile import Shot, build_shot, describe
from .writer import FULL, ShotWriter

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
SHOT_FILE = re.compile(r"^shot-(\d+)\.h5$")
JOURNAL_FILE = re.compile(r"^shot-(\d+)\.journal$")
UNCLOSED = ("the writer stopped before closing the shot (killed, crashed, or its disk filled up); the shot holds "
            "everything journaled until then")


def default_root() -> Path:
    from labrig.supervisor.state import state_dir
    return Path(os.environ["LABRIG_STORE"]) if os.environ.get("LABRIG_STORE") else state_dir() / "store"


class ShotStore:
    """`ShotStore(root=None, *, catalog=None, fsync="interval", compression="gzip")`.

    catalog: where the index lives: default $LABRIG_CATALOG, else ROOT/catalog.sqlite; a SQLite
    path, or a PostgreSQL URL (postgresql://USER@HOST/DATABASE) that several stores may share.
    fsync: the journal's policy (journal.py); "never" also skips the shot file's fsync (for
    synthetic data only). compression: "gzip" (readable everywhere) or None.
    """

    def __init__(self, root: str | Path | None = None, *, catalog: str | Path | None = None,
                 fsync: str = "interval", compression: str | None = "gzip"):
        self.root = Path(root) if root else default_root()
        self.shots_dir, self.journal_dir, self.derived_dir = (self.root / d for d in ("shots", "journal", "derived"))
        for d in (self.shots_dir, self.journal_dir, self.derived_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.compression = compression
        location = str(catalog or os.environ.get("LABRIG_CATALOG") or self.root / "catalog.sqlite")
        shared = location.startswith(PG_SCHEMES) and split_schema(location)[1] is None
        self.catalog = Catalog(location, schema=self._schema() if shared else None)
        self.calibrations = CalibrationRegistry(self.root / "calibrations.jsonl")

    def __repr__(self) -> str:
        return f"ShotStore({str(self.root)!r})"

    def _schema(self) -> str:
        """This store's schema in a shared PostgreSQL catalog: kept in the store's folder, so every
        machine that opens these files (whatever the mount path) finds the same rows."""
        path = self.root / "catalog-schema"
        if not path.exists():
            base = re.sub(r"[^a-z0-9_]", "_", self.root.resolve().name.lower())[:24]
            tmp = path.with_name(f".catalog-schema.{os.getpid()}.{secrets.token_hex(4)}")
            try:
                tmp.write_text(f"labrig_{base}_{secrets.token_hex(4)}\n")
                try:
                    os.link(tmp, path)  # the first process to name it wins; the others read its name
                except FileExistsError:
                    pass
                finally:
                    tmp.unlink()
            except OSError as exc:
                raise ConfigError(f"{path}: cannot name this store's schema in the PostgreSQL catalog ({exc.strerror});"
                                  " name it in the catalog URL: ...?schema=NAME") from None
        name = path.read_text().strip()
        if not SCHEMA_NAME.match(name):
            raise ConfigError(f"{path}: {name!r} is not a schema name: lower-case letters, digits and '_', "
                              "starting with a letter or '_', at most 63 characters")
        return name

    # -- writing ---------------------------------------------------------------------------------
    def open_shot(self, *, sequence: str | Callable = "", source: str | None = None, sequence_hash: str | None = None,
                  parameters: dict[str, Any] | None = None, rig=None, calibrations: Iterable[dict] | None = None,
                  versions: dict[str, str] | None = None, firmware: dict[str, str] | None = None,
                  user: str | None = None, metadata: dict[str, Any] | None = None) -> ShotWriter:
        """Allocate the next shot number and start its journal with the shot's context.

        sequence: its name, or the sequence function (its source is then recorded); sequence_hash:
        default sha256 of the source (a runner passes its plan's hash). rig: a Rig or
        a rig file path (its text is snapshotted). calibrations: default, the registry's versions
        in force now (expired ones flagged) and, with a rig, its signals' calibrations."""
        now = time.time()
        name, source = _sequence(sequence, source)
        meta = {"t_start": now, "user": user or getpass.getuser(), "host": socket.gethostname(),
                "sequence": name, "source": source,
                "sequence_hash": sequence_hash if sequence_hash is not None else
                hashlib.sha256(source.encode()).hexdigest() if source else "",
                "parameters": dict(parameters or {}), **_rig_meta(rig),
                "versions": {**software_versions(), **(versions or {})}, "firmware": dict(firmware or {}),
                "extra": dict(metadata or {})}
        cals = list(calibrations) if calibrations is not None else \
            [v.record(now) for v in self.calibrations.in_force(now).values()]
        meta["calibrations"] = cals + meta.pop("rig_calibrations")
        try:
            number, journal = self._allocate()
        except OSError as exc:
            if exc.errno in FULL:
                raise StoreFull(f"no space in {self.root} to start a shot ({exc.strerror})") from None
            raise
        writer = ShotWriter(self, number, journal)
        try:
            writer._append(META, {"shot": number, **meta})
        except BaseException:
            journal.close()  # the journal stays: recover() turns it into a (partial, empty) shot
            raise
        return writer

    def _allocate(self) -> tuple[int, JournalWriter]:
        """The next number and its journal, created and locked under the store's lock: no two writers,
        in any process, get the same number, and recover() never takes a journal being born."""
        with self._locked():
            counter = self.root / "next-shot"
            try:
                number = int(counter.read_text())
            except (FileNotFoundError, ValueError):
                number = 1 + max(self._numbers(), default=0)
            while self.path_of(number).exists() or self.journal_path(number).exists():
                number += 1
            tmp = counter.with_name(f".next-shot.{os.getpid()}")
            tmp.write_text(str(number + 1))  # first: a journal that then fails to start only skips a number
            os.replace(tmp, counter)
            journal = JournalWriter(self.journal_path(number), fsync=self.fsync)
        return number, journal

    @contextlib.contextmanager
    def _locked(self):
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield  # released when the file closes

    def _finish(self, writer: ShotWriter, status: str, reason: str) -> Path:
        """Build a closing writer's file; keep the journal if that fails (recover() retries)."""
        try:
            build_shot(writer.journal.index, writer.journal.path, writer.path, number=writer.number, status=status,
                       reason=reason, built_by="close", compression=self.compression, durable=self.fsync != "never")
        except StoreFull as exc:
            raise StoreFull(f"shot {writer.number}: {exc}; its journal {writer.journal.path} keeps everything "
                            "recorded: free space, then run `labrig store recover`") from None
        finally:
            writer.journal.close()
        self._drop_journal(writer.number)
        self._index(writer.path)
        return writer.path

    def _drop_journal(self, number: int) -> None:
        self.journal_path(number).unlink(missing_ok=True)
        if self.fsync != "never":
            fd = os.open(self.journal_dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _index(self, path: Path) -> None:
        """Add a new file to the catalog; the file is the truth, so a catalog error only warns."""
        try:
            self.catalog.add_shot(describe(path, self.root))
        except Exception as exc:  # noqa: BLE001 - e.g. a locked or damaged catalog: reindex repairs it
            log.warning("%s is complete but not in the catalog (%s); run `labrig store reindex`", path, exc)

    # -- crash recovery ---------------------------------------------------------------------------
    def recover(self) -> list[int]:
        """Build shots from journals whose writer is gone (marked 'partial' unless the journal had
        recorded its close); skip journals still locked by a running writer. Returns the numbers."""
        done = []
        for path in sorted(self.journal_dir.glob("shot-*.journal")):
            match = JOURNAL_FILE.match(path.name)
            if not match:
                continue
            number = int(match.group(1))
            with self._locked():  # a journal is locked by its writer from birth (see _allocate)
                fd = os.open(path, os.O_RDONLY)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a running shot
                if not self.path_of(number).exists():
                    index = read_journal(path)
                    status, reason = ((index.end["status"], index.end["reason"]) if index.end
                                      else ("partial", UNCLOSED))
                    if index.meta is None:
                        reason += "; the journal had no metadata (the writer died as the shot opened)"
                    if index.dropped:
                        reason += f"; {index.dropped} bytes of an unfinished record at its end were left out"
                    build_shot(index, path, self.path_of(number), number=number, status=status, reason=reason,
                               built_by="recover", compression=self.compression, durable=self.fsync != "never")
                self._drop_journal(number)
                self._index(self.path_of(number))
                done.append(number)
            finally:
                os.close(fd)
        for tmp in self.shots_dir.glob(".shot-*.tmp*"):  # half-built files of writers that died mid-build
            number = int(tmp.name.split("-")[1].split(".")[0])
            if not self.journal_path(number).exists() or number in done:
                tmp.unlink(missing_ok=True)
        return done

    # -- reading -----------------------------------------------------------------------------------
    def path_of(self, number: int) -> Path:
        return self.shots_dir / f"shot-{int(number):06d}.h5"

    def journal_path(self, number: int) -> Path:
        return self.journal_dir / f"shot-{int(number):06d}.journal"

    def shot(self, number: int) -> Shot:
        """A complete shot, open read-only (use it in a `with`)."""
        path = self.path_of(number)
        if not path.exists():
            running = self.journal_path(number).exists()
            known = self._numbers(files_only=True)
            hint = (" it is running, or was left by a crash (`labrig store recover`)" if running else
                    f" shots here: {known[0]}..{known[-1]}" if known else " the store is empty")
            raise StoreError(f"no shot {number} in {self.root}:{hint}")
        return Shot(path)

    def _numbers(self, files_only: bool = False) -> list[int]:
        found = [int(m.group(1)) for p in os.scandir(self.shots_dir) if (m := SHOT_FILE.match(p.name))]
        if not files_only:
            found += [int(m.group(1)) for p in os.scandir(self.journal_dir) if (m := JOURNAL_FILE.match(p.name))]
        return sorted(found)

    def numbers(self) -> list[int]:
        """Every complete shot's number, from the files."""
        return self._numbers(files_only=True)

    # -- the catalog -------------------------------------------------------------------------------
    def reindex(self) -> int:
        """Rebuild the catalog from the shot and derived files alone; returns the number of shots."""
        from .derived import describe_derived
        shots = [describe(self.path_of(n), self.root) for n in self.numbers()]
        derived = [describe_derived(p, self.root) for p in sorted(self.derived_dir.glob("shot-*/*.h5"))]
        self.catalog.rebuild(shots, derived)  # a damaged SQLite file is made afresh: it is only an index
        return len(shots)

    def query(self, *columns: str, **filters) -> "pd.DataFrame":
        """One row per shot, e.g. the peak density and max B field of every shot of a day:

            store.query("density.max", "b_field.max", day="2025-05-01")

        filters: day, since, until, status, sequence, shots, where (SQL over shots `s`), args."""
        if not self.catalog.exists:
            self.reindex()
        return self.catalog.query(columns, **filters)

    def sql(self, text: str, args: Iterable = ()):
        """Any SQL over the catalog (tables shots, signals, calibrations, derived) as a DataFrame."""
        if not self.catalog.exists:
            self.reindex()
        return self.catalog.sql(text, args)

    # -- processed data and export ----------------------------------------------------------------
    def derive(self, source_shot: int, name: str, data, *, code, metadata: dict | None = None) -> Path:
        """Write processed data as a new file that points at its source shot and records the code."""
        from .derived import write_derived
        return write_derived(self, source_shot, name, data, code=code, metadata=metadata)

    def export(self, number: int, fmt: str = "mat", dest: str | Path | None = None) -> Path:
        """Export a shot to MATLAB (.mat) or CSV (a folder of files); returns what was written."""
        from .export import export_shot
        return export_shot(self, number, fmt, dest)


def _sequence(sequence, source: str | None) -> tuple[str, str]:
    if callable(sequence):
        try:
            text = inspect.getsource(sequence)
        except (OSError, TypeError):
            text = ""
        return getattr(sequence, "__qualname__", repr(sequence)), source if source is not None else text
    if not isinstance(sequence, str):
        raise ConfigError(f"sequence {sequence!r}: give its name or the sequence function")
    return sequence, source or ""


def _rig_meta(rig) -> dict[str, Any]:
    if rig is None:
        return {"rig": "", "rig_digest": "", "rig_text": "", "rig_calibrations": []}
    if isinstance(rig, (str, os.PathLike)):
        from labrig.supervisor.rig import Rig
        rig = Rig.load(rig)
    cals = [{"name": name, "source": "rig", "version": s.calibration.version, "params":
             s.calibration.model_dump(exclude={"version"}), "expired": False} for name, s in rig.signals.items()]
    return {"rig": rig.name, "rig_digest": rig.digest, "rig_text": rig.text, "rig_calibrations": cals}


_VERSIONS: dict[str, str] = {}


def software_versions() -> dict[str, str]:
    """labrig's and its data path's versions, recorded with every shot."""
    if not _VERSIONS:
        from importlib.metadata import PackageNotFoundError, version
        import h5py
        import numpy
        try:
            _VERSIONS["labrig"] = version("labrig")
        except PackageNotFoundError:
            _VERSIONS["labrig"] = "unknown"
        _VERSIONS.update(python=platform.python_version(), numpy=numpy.__version__, h5py=h5py.__version__,
                         hdf5=h5py.version.hdf5_version, platform=platform.platform())
    return dict(_VERSIONS)
