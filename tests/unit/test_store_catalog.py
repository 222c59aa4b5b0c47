"""The catalog: cross-shot questions in one call; rebuilt from the files, it says what it said before."""
import datetime as dt
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from labrig.drivers.errors import ConfigError
from labrig.supervisor.cli import app
from labrig.supervisor.store import ShotStore

DAY = dt.date(2025, 5, 1)


def noon(day: dt.date, hours: float = 0.0) -> float:
    return dt.datetime.combine(day, dt.time(12)).timestamp() + 3600 * hours


@pytest.fixture
def store(tmp_path):
    """Five shots over two days (t_start set through the journal's metadata), one of them failed."""
    s = ShotStore(tmp_path / "store", fsync="never")
    s.calibrations.set("b_probe", {"gain": 2.0}, valid_from=noon(DAY, -48), valid_until=noon(DAY, -24))
    for i, (day, status) in enumerate([(DAY, "success"), (DAY, "success"), (DAY, "fail"),
                                       (DAY + dt.timedelta(days=1), "success"), (DAY + dt.timedelta(days=1), "abort")]):
        writer = s.open_shot(sequence="discharge", parameters={"rf": 0.1 * (i + 1)})
        t0 = noon(day, i)
        writer.journal.index.meta["t_start"] = t0  # the shot "started" then (only the file's attribute)
        writer.signal("density", t0 + np.arange(50) * 0.01, np.linspace(0, (i + 1) * 1e17, 50), unit="m^-3")
        writer.signal("b_field", t0, np.full(20, 0.01 * (i + 1)), dt=0.01, unit="T")
        writer.telemetry("pressure", [t0], [0.3 + i])
        writer.event("trip", t=t0, interlock="door") if status == "fail" else None
        writer.close(status)
    s.derive(2, "profile", np.arange(3.0), code="np.arange(3.0)")
    return s


def test_peak_density_and_max_b_field_of_every_shot_of_a_day(store):
    frame = store.query("density.max", "b_field.max", day=DAY)
    assert frame.index.tolist() == [1, 2, 3]
    assert frame["density.max"].tolist() == [1e17, 2e17, 3e17]
    assert np.allclose(frame["b_field.max"], [0.01, 0.02, 0.03])
    assert frame["status"].tolist() == ["success", "success", "fail"]
    assert str(frame["time"].dt.date.iloc[0]) == "2025-05-01"


def test_query_filters_and_columns(store):
    frame = store.query("params.rf", "telemetry/pressure.mean", "density.n", "n_trips", "expired_calibrations",
                        status=["success", "abort"], since=noon(DAY, 0.5))
    assert frame.index.tolist() == [2, 4, 5]
    assert np.allclose(frame["params.rf"], [0.2, 0.4, 0.5]) and frame["density.n"].tolist() == [50, 50, 50]
    assert frame["telemetry/pressure.mean"].tolist() == [1.3, 3.3, 4.3]
    assert frame["expired_calibrations"].tolist() == ["b_probe"] * 3
    assert store.query("n_trips", where="s.n_trips > ?", args=[0]).index.tolist() == [3]
    assert store.query("path").loc[2, "path"] == "shots/shot-000002.h5"
    assert store.query("nothing.max").loc[1, "nothing.max"] is None  # a signal a shot lacks: empty, not an error
    with pytest.raises(ConfigError, match="STAT one of min, max, mean"):
        store.query("density.peak")
    top = store.sql("SELECT shot, max FROM signals WHERE name = 'density' ORDER BY max DESC LIMIT 1")
    assert top.values.tolist() == [[5, 5e17]]


def test_the_catalog_rebuilt_from_the_files_equals_the_incremental_one(store, tmp_path):
    incremental = store.catalog.dump()
    assert len(incremental["shots"]) == 5 and len(incremental["signals"]) == 15 and len(incremental["derived"]) == 1
    store.catalog.path.unlink()
    for suffix in ("-wal", "-shm"):
        (tmp_path / "store" / f"catalog.sqlite{suffix}").unlink(missing_ok=True)
    assert store.reindex() == 5
    assert store.catalog.dump() == incremental
    store.catalog.path.write_bytes(b"not a database at all" * 100)  # a damaged catalog: it is only an index
    for suffix in ("-wal", "-shm"):
        (tmp_path / "store" / f"catalog.sqlite{suffix}").unlink(missing_ok=True)
    assert store.reindex() == 5 and store.catalog.dump() == incremental


def test_a_missing_catalog_is_built_on_first_query(store):
    store.catalog.path.unlink()
    assert store.query("density.max")["density.max"].tolist() == [1e17, 2e17, 3e17, 4e17, 5e17]


def test_a_postgres_catalog_is_refused_clearly(tmp_path):
    with pytest.raises(ConfigError, match="PostgreSQL is planned"):
        ShotStore(tmp_path, catalog="postgresql://lab@db/shots")


def test_the_store_commands(store, tmp_path):
    runner = CliRunner()
    env = {"LABRIG_STORE": str(store.root)}
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
    res = runner.invoke(app, ["store", "recover"], env=env)
    assert res.exit_code == 0 and "nothing to recover" in res.stdout
    out = tmp_path / "s1.mat"
    res = runner.invoke(app, ["store", "export", "1", "--format", "mat", "-o", str(out)], env=env)
    assert res.exit_code == 0 and out.exists()
    res = runner.invoke(app, ["store", "export", "1", "--format", "csv", "-o", str(tmp_path / "c")], env=env)
    assert res.exit_code == 0 and (tmp_path / "c" / "signals" / "density.csv").exists()
    res = runner.invoke(app, ["store", "export", "1", "--format", "xlsx"], env=env)
    assert res.exit_code == 2 and "mat, csv" in res.output
