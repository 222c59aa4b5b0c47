"""The catalog: cross-shot questions in one call; rebuilt from the files, it says what it said before.

Every check runs on both databases: SQLite (the default) and PostgreSQL (a real server made for
this module; those variants start processes, so they carry the `processes` mark)."""
import json
import socket
import sys
import time

import numpy as np
import pytest
from catalog_support import DAY, five_shots, noon, postgres_server
from typer.testing import CliRunner

from labrig.drivers.errors import ConfigError
from labrig.supervisor.cli import app
from labrig.supervisor.store import ShotStore, StoreError
from labrig.supervisor.store.catalog import Catalog

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.processes)]


@pytest.fixture(scope="module")
def pg_url():
    with postgres_server() as url:
        yield url


@pytest.fixture(params=BACKENDS)
def catalog_url(request):
    """None: the store's own SQLite file; else a PostgreSQL URL (each store gets its own schema)."""
    return None if request.param == "sqlite" else request.getfixturevalue("pg_url")


@pytest.fixture
def store(tmp_path, catalog_url):
    return five_shots(ShotStore(tmp_path / "store", fsync="never", catalog=catalog_url))


def forget(store):
    """Lose the catalog: its SQLite file, or the store's PostgreSQL schema."""
    if store.catalog.path is not None:
        for suffix in ("", "-wal", "-shm"):
            store.catalog.path.with_name(store.catalog.path.name + suffix).unlink(missing_ok=True)
    else:
        _pg(store, f"DROP SCHEMA {store.catalog.dialect.schema} CASCADE")
    assert not store.catalog.exists


def damage(store):
    """A damaged catalog: garbage for a SQLite file; a dropped table and a stray row for PostgreSQL."""
    if store.catalog.path is not None:
        forget(store)
        store.catalog.path.write_bytes(b"not a database at all" * 100)
    else:
        schema = store.catalog.dialect.schema
        _pg(store, f"DROP TABLE {schema}.signals; INSERT INTO {schema}.shots (shot, status) VALUES (99, 'stray')")


def _pg(store, sql):
    import psycopg
    with psycopg.connect(store.catalog.dialect.url, autocommit=True) as con:
        con.execute(sql)


def test_peak_density_and_max_b_field_of_every_shot_of_a_day(store):
    frame = store.query("density.max", "b_field.max", day=DAY)
    assert frame.index.tolist() == [1, 2, 3]
    assert frame["density.max"].tolist() == [1e17, 2e17, 3e17]
    assert np.allclose(frame["b_field.max"], [0.01, 0.02, 0.03])
    assert frame["status"].tolist() == ["success", "success", "fail"]
    assert str(frame["time"].dt.date.iloc[0]) == "2025-05-01"


def test_query_filters_and_columns(store):
    frame = store.query("params.rf", "params.gas", "params.pulsed", "telemetry/pressure.mean", "density.n",
                        "n_trips", "expired_calibrations", status=["success", "abort"], since=noon(DAY, 0.5))
    assert frame.index.tolist() == [2, 4, 5]
    assert np.allclose(frame["params.rf"], [0.2, 0.4, 0.5]) and frame["density.n"].tolist() == [50, 50, 50]
    assert frame["params.gas"].tolist() == ["Ar"] * 3 and frame["params.pulsed"].tolist() == [1, 0, 0]
    assert frame["telemetry/pressure.mean"].tolist() == [1.3, 3.3, 4.3]
    assert frame["expired_calibrations"].tolist() == ["b_probe"] * 3
    assert store.query("n_trips", where="s.n_trips > ?", args=[0]).index.tolist() == [3]
    assert store.query(where="s.sequence LIKE 'dis%' AND s.shot IN (?, ?)", args=[1, 5]).index.tolist() == [1, 5]
    assert len(store.query(where="s.sequence LIKE 'dis%'")) == 5
    assert store.query(until=noon(DAY, 1.5), sequence="discharge", shots=[np.int64(2), 5]).index.tolist() == [2]
    assert store.query("path").loc[2, "path"] == "shots/shot-000002.h5"
    assert store.query("nothing.max").loc[1, "nothing.max"] is None  # a signal a shot lacks: empty, not an error
    assert store.query("params.nothing").loc[1, "params.nothing"] is None
    with pytest.raises(ConfigError, match="STAT one of min, max, mean"):
        store.query("density.peak")
    with pytest.raises(ConfigError, match="catalog query failed"):
        store.query(where="s.no_such_column > 1")
    top = store.sql("SELECT shot, max FROM signals WHERE name = 'density' ORDER BY max DESC LIMIT 1")
    assert top.values.tolist() == [[5, 5e17]]
    assert store.sql("SELECT count(*) AS n FROM signals WHERE grp = ?", ["telemetry"])["n"].tolist() == [5]
    with pytest.raises(ConfigError, match="catalog SQL failed"):
        store.sql("DELETE FROM shots")  # read-only
    assert len(store.query()) == 5


def test_the_catalog_rebuilt_from_the_files_equals_the_incremental_one(store):
    incremental = store.catalog.dump()
    assert len(incremental["shots"]) == 5 and len(incremental["signals"]) == 15 and len(incremental["derived"]) == 1
    forget(store)
    assert store.reindex() == 5
    assert store.catalog.dump() == incremental
    damage(store)  # a damaged catalog: it is only an index
    assert store.reindex() == 5 and store.catalog.dump() == incremental


def test_a_missing_catalog_is_built_on_first_query(store):
    forget(store)
    assert store.query("density.max")["density.max"].tolist() == [1e17, 2e17, 3e17, 4e17, 5e17]


def test_the_store_commands(store, tmp_path, catalog_url):
    runner = CliRunner()
    env = {"LABRIG_STORE": str(store.root), "LABRIG_CATALOG": catalog_url}
    res = runner.invoke(app, ["store", "list", "--json"], env=env)
    assert res.exit_code == 0, res.output
    assert [r["shot"] for r in json.loads(res.stdout)] == [1, 2, 3, 4, 5]
    res = runner.invoke(app, ["store", "list", "--day", "2025-05-02"], env=env)
    assert res.exit_code == 0 and "2 shots" in res.stdout
    res = runner.invoke(app, ["store", "show", "3"], env=env)
    assert res.exit_code == 0 and "fail" in res.stdout and "density" in res.stdout and "trip 1" in res.stdout
    assert "b_probe v1 (EXPIRED)" in res.stdout
    res = runner.invoke(app, ["store", "show", "2"], env=env)
    assert "derived: profile.v1.h5" in res.stdout
    res = runner.invoke(app, ["store", "show", "42"], env=env)
    assert res.exit_code == 2 and "no shot 42" in res.output
    res = runner.invoke(app, ["store", "reindex"], env=env)
    assert res.exit_code == 0 and "5 shots indexed" in res.stdout
    assert str(store.catalog) in res.stdout  # which catalog: the file, or the URL and the store's schema
    res = runner.invoke(app, ["store", "recover"], env=env)
    assert res.exit_code == 0 and "nothing to recover" in res.stdout
    out = tmp_path / "s1.mat"
    res = runner.invoke(app, ["store", "export", "1", "--format", "mat", "-o", str(out)], env=env)
    assert res.exit_code == 0 and out.exists()
    res = runner.invoke(app, ["store", "export", "1", "--format", "csv", "-o", str(tmp_path / "c")], env=env)
    assert res.exit_code == 0 and (tmp_path / "c" / "signals" / "density.csv").exists()
    res = runner.invoke(app, ["store", "export", "1", "--format", "xlsx"], env=env)
    assert res.exit_code == 2 and "mat, csv" in res.output


# -- catalogs it cannot use: refused clearly, the password never shown --------------------------------------
def test_a_catalog_url_it_cannot_use_is_refused_clearly(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"mysql://lab:\*\*\*@db/shots: use a SQLite file .* or a PostgreSQL URL"):
        ShotStore(tmp_path, catalog="mysql://lab:secret@db/shots")
    with pytest.raises(ConfigError, match=r"not a valid PostgreSQL URL \(invalid URI query parameter: \"colour\"\)"):
        Catalog("postgresql://lab:secret@db/shots?colour=blue")
    with pytest.raises(ConfigError, match="schema 'Rig-1': lower-case letters"):
        Catalog("postgresql://lab@db/shots?schema=Rig-1")
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the driver were not installed
    with pytest.raises(ConfigError, match=r"postgresql://lab@db/shots: .*pip install 'labrig\[postgres\]'"):
        ShotStore(tmp_path, catalog="postgresql://lab@db/shots")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once it closes


def test_a_server_that_is_not_there_fails_at_once_and_loses_no_shot(tmp_path, caplog):
    url = f"postgresql://lab:secret@127.0.0.1:{_closed_port()}/shots"
    store = ShotStore(tmp_path, catalog=url, fsync="never")  # no connection yet: the files need none
    with store.open_shot(sequence="discharge") as shot:
        shot.signal("density", 0.0, np.ones(10), dt=0.1)
    assert store.numbers() == [1] and "not in the catalog" in caplog.text  # the file is the truth
    with pytest.raises(StoreError) as error:
        store.query("density.max")
    message = str(error.value)
    assert "catalog postgresql://lab:***@127.0.0.1:" in message and "cannot connect" in message
    assert "Connection refused" in message and "secret" not in message and "SQLite" in message


def test_a_server_that_does_not_answer_fails_within_the_connect_timeout(tmp_path):
    with socket.socket() as silent:  # accepts connections (the kernel does), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql://lab:secret@127.0.0.1:{silent.getsockname()[1]}/shots"
        t0 = time.monotonic()
        with pytest.raises(StoreError, match=r"postgresql://lab:\*\*\*@127.0.0.1:\d+/shots: the server did not "
                                             r"answer within 5 s"):
            Catalog(url).dump()
        assert time.monotonic() - t0 < 60  # bounded (5 s), not hung until the test's own timeout
