"""A PostgreSQL catalog, on a real server made for this module: it says what the SQLite one says
about the same files, several stores share one database without mixing, and concurrent writers
and a rebuild leave it whole. (The checks shared with SQLite run on both in tests/unit/test_store_catalog.py.)"""
import os
import threading

import pandas as pd
import pytest
from catalog_support import DAY, five_shots, postgres_server
from typer.testing import CliRunner

from labrig.supervisor.cli import app
from labrig.supervisor.store import ShotStore
from labrig.supervisor.store.shotfile import describe

pytestmark = pytest.mark.processes


@pytest.fixture(scope="module")
def pg_url():
    with postgres_server() as url:
        yield url


@pytest.fixture
def files(tmp_path):
    """Five shots with the default SQLite catalog: the reference."""
    return five_shots(ShotStore(tmp_path / "store", fsync="never"))


def test_a_postgres_catalog_rebuilt_from_the_files_says_what_the_sqlite_one_says(files, pg_url):
    shared = ShotStore(files.root, catalog=pg_url)
    assert not shared.catalog.exists
    assert shared.reindex() == 5
    assert shared.catalog.dump() == files.catalog.dump()
    columns = ("density.max", "b_field.max", "telemetry/pressure.mean", "density.unit", "params.rf", "params.gas",
               "params.pulsed", "n_trips", "expired_calibrations", "path")
    theirs = shared.query(*columns, day=DAY)
    assert theirs.index.tolist() == [1, 2, 3] and theirs["density.max"].tolist() == [1e17, 2e17, 3e17]
    pd.testing.assert_frame_equal(theirs, files.query(*columns, day=DAY))
    ours = shared.sql("SELECT s.shot, j.max FROM shots s JOIN signals j ON j.shot = s.shot AND j.name = ? "
                      "WHERE s.status <> 'success' ORDER BY s.shot", ["b_field"])
    pd.testing.assert_frame_equal(ours, files.sql(
        "SELECT s.shot, j.max FROM shots s JOIN signals j ON j.shot = s.shot AND j.name = ? "
        "WHERE s.status <> 'success' ORDER BY s.shot", ["b_field"]))


def test_stores_sharing_one_database_keep_their_rows_apart(tmp_path, pg_url):
    rig_a = five_shots(ShotStore(tmp_path / "a" / "shots", fsync="never", catalog=pg_url))
    rig_b = ShotStore(tmp_path / "b" / "shots", fsync="never", catalog=pg_url)  # the same folder name, another rig
    with rig_b.open_shot(sequence="conditioning", parameters={"rf": 9.0}) as shot:
        shot.signal("density", 0.0, [7e17, 8e17], dt=0.1)
    assert rig_a.catalog.dialect.schema != rig_b.catalog.dialect.schema
    assert rig_a.query("density.max").index.tolist() == [1, 2, 3, 4, 5]
    frame = rig_b.query("density.max", "params.rf")
    assert frame.index.tolist() == [1] and frame.loc[1, "density.max"] == 8e17 and frame.loc[1, "params.rf"] == 9.0
    assert rig_b.sql("SELECT count(*) AS n FROM shots")["n"].tolist() == [1]
    rig_b.reindex()  # a rebuild replaces its own store's rows only
    assert len(rig_a.query()) == 5 and len(rig_b.query()) == 1
    # the same files reached by another path (another machine's mount): the same rows, named in the folder
    os.symlink(tmp_path / "a", tmp_path / "mount")
    assert ShotStore(tmp_path / "mount" / "shots", catalog=pg_url).query().index.tolist() == [1, 2, 3, 4, 5]
    # a schema named in the URL: a catalog of its own
    named = ShotStore(rig_a.root, catalog=pg_url + "?schema=ishtar")
    assert named.catalog.dialect.schema == "ishtar" and not named.catalog.exists
    assert len(named.query()) == 5 and named.catalog.dump() == rig_a.catalog.dump()


def test_concurrent_writers_and_a_rebuild_leave_the_catalog_whole(files, pg_url):
    """Writers re-adding shots at once (the same ones and others) while a rebuild runs: no deadlock, no
    lost or doubled row, and the end state is the files' (transactions and upserts, writers of one shot
    taking turns, a rebuild's table lock). Without the turns, this deadlocked about one run in ten."""
    shared = ShotStore(files.root, catalog=pg_url)
    infos = [describe(files.path_of(n), files.root) for n in files.numbers()]
    errors: list[BaseException] = []
    start = threading.Barrier(7)

    def run(work):
        try:
            start.wait(timeout=30)
            work()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    def writer(k):
        return lambda: [shared.catalog.add_shot(infos[(k + i) % 5]) for i in range(40)]

    threads = [threading.Thread(target=run, args=(writer(k),)) for k in range(6)]
    threads.append(threading.Thread(target=run, args=(lambda: [shared.reindex() for _ in range(5)],)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a writer hung"
    assert not errors, errors
    dump = shared.catalog.dump()
    assert dump["shots"] == files.catalog.dump()["shots"] and dump["signals"] == files.catalog.dump()["signals"]
    assert dump["calibrations"] == files.catalog.dump()["calibrations"]


def test_a_catalog_of_another_schema_version_is_made_afresh(files, pg_url):
    shared = ShotStore(files.root, catalog=pg_url)
    shared.reindex()
    import psycopg
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute(f"UPDATE {shared.catalog.dialect.schema}.catalog_meta SET value = '0' "
                    "WHERE key = 'schema_version'")
    assert len(shared.query()) == 0  # dropped, not migrated: it is only an index
    shared.reindex()
    assert shared.catalog.dump() == files.catalog.dump()


def test_the_catalog_option_of_the_store_commands(files, pg_url):
    runner = CliRunner()
    url = pg_url.replace("labrig@", "labrig:hunter2@")  # trust authentication ignores it; it must not be shown
    res = runner.invoke(app, ["store", "reindex", "--store", str(files.root), "--catalog", url])
    assert res.exit_code == 0, res.output
    assert "5 shots indexed" in res.stdout and "labrig:***@" in res.stdout and "hunter2" not in res.stdout
    res = runner.invoke(app, ["store", "list", "--json", "--store", str(files.root)], env={"LABRIG_CATALOG": url})
    assert res.exit_code == 0, res.output
    assert '"shot":3' in res.stdout and '"status":"fail"' in res.stdout
