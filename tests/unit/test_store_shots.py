"""The shot store in one process: shot files, statuses, slices, calibrations, derived data, export."""
import io
import json
import os
import shutil
import stat
import subprocess
import time

import h5py
import numpy as np
import pytest

from labrig.drivers.errors import ConfigError
from labrig.supervisor.store import ShotStore, StoreError


@pytest.fixture
def store(tmp_path):
    return ShotStore(tmp_path / "store", fsync="never")


def test_a_shot_file_holds_its_whole_context(store, ishtar_path):
    store.calibrations.set("langmuir_I", {"gain": 0.01}, by="alice")

    def discharge(rf=0.4):
        return rf
    with store.open_shot(sequence=discharge, parameters={"rf": 0.4}, rig=ishtar_path, firmware={"ard1": "1.2"},
                         user="bob", metadata={"note": "first"}) as shot:
        t = 100 + np.arange(1000) * 1e-3
        shot.signal("density", t, np.linspace(0, 2e18, 1000), unit="m^-3")
        shot.signal("fast", 100.0, np.arange(5000, dtype=np.int16), dt=8e-9, unit="counts")
        shot.telemetry("pressure", [100, 101], [0.4, 0.5], unit="Pa")
        shot.event("trip", t=100.5, interlock="vacuum", reason="pressure high")
        shot.audit({"t": 100.2, "node": "rp1", "op": "write", "signal": "rf_drive", "value": 0.4, "outcome": "ok"})
    assert shot.number == 1 and shot.path.exists()
    assert not store.journal_path(1).exists()
    assert stat.S_IMODE(shot.path.stat().st_mode) == 0o444  # complete: read-only
    with store.shot(1) as s:
        a = s.attrs
        assert (a["status"], a["user"], a["rig"], a["sequence"]) == ("success", "bob", "ishtar", "test_a_shot_file_"
                                                                     "holds_its_whole_context.<locals>.discharge")
        assert "def discharge(rf=0.4)" in s.source and len(a["sequence_hash"]) == 64
        assert s.metadata("parameters") == {"rf": 0.4} and s.metadata("firmware") == {"ard1": "1.2"}
        assert s.metadata("versions")["h5py"] == h5py.__version__ and s.metadata("extra") == {"note": "first"}
        assert s.rig_text == ishtar_path.read_text()
        cals = {(c["name"], c["source"]): c for c in s.calibrations()}
        assert cals[("langmuir_I", "registry")]["version"] == "1" and not cals[("langmuir_I", "registry")]["expired"]
        assert ("langmuir_I", "rig") in cals  # the rig's own calibration of the signal, too
        t, v = s.read("density")
        assert v.shape == (1000,) and v[-1] == 2e18 and t[0] == 100
        info = s.info("density")
        assert (info["unit"], info["n"], info["min"], info["max"]) == ("m^-3", 1000, 0.0, 2e18)
        t, v = s.read("fast", 10, 13)
        assert list(v) == [10, 11, 12] and np.allclose(t, 100 + 8e-9 * np.arange(10, 13))
        assert s.read("pressure", group="telemetry")[1].tolist() == [0.4, 0.5]
        assert [e["kind"] for e in s.events()] == ["trip", "audit"]  # in the order they were recorded
        trip, = s.events("trip")
        assert trip == {"t": 100.5, "kind": "trip", "interlock": "vacuum", "reason": "pressure high"}
        assert s.events("audit")[0]["node"] == "rp1"


def test_a_run_always_closes_with_its_exit_status(store):
    with pytest.raises(RuntimeError):
        with store.open_shot(sequence="a") as shot:
            shot.signal("x", [1.0], [2.0])
            raise RuntimeError("probe arced")
    with pytest.raises(KeyboardInterrupt):
        with store.open_shot(sequence="b"):
            raise KeyboardInterrupt
    writer = store.open_shot(sequence="c")
    writer.close("abort", reason="operator stop")
    statuses = {n: (store.shot(n).status, store.shot(n).reason) for n in store.numbers()}
    assert statuses == {1: ("fail", "RuntimeError: probe arced"), 2: ("abort", "interrupted"),
                        3: ("abort", "operator stop")}
    with pytest.raises(StoreError, match="shot 3 is closed"):
        writer.signal("x", [1.0], [1.0])
    assert writer.close() == store.path_of(3)  # closing twice is harmless


def test_bad_input_gets_a_clear_error_and_nothing_recorded_is_lost(store):
    with store.open_shot() as shot:
        shot.signal("x", [0.0, 1.0], [1.0, 2.0], unit="V")
        with pytest.raises(ConfigError, match="2 times for 3 values"):
            shot.signal("x", [2.0, 3.0], [1, 2, 3])
        with pytest.raises(ConfigError, match="unit 'mV', but its first chunk had 'V'"):
            shot.signal("x", [2.0], [1.0], unit="mV")
        with pytest.raises(ConfigError, match="keep giving one"):
            shot.signal("x", 2.0, [1.0], dt=0.1)
        with pytest.raises(ConfigError, match="signal name 'a/b'"):
            shot.signal("a/b", [0.0], [1.0])
        with pytest.raises(ConfigError, match="1-D"):
            shot.signal("img", [0.0], np.zeros((2, 2)))
        with pytest.raises(ConfigError, match="numbers or booleans, got dtype object"):
            shot.signal("x", [3.0], np.array([None]))
        shot.signal("counts", [0.0], np.array([7], dtype=np.int16))
        with pytest.raises(ConfigError, match="values of dtype float64 cannot join its int16 values"):
            shot.signal("counts", [1.0], [1.5])
        shot.signal("x", [2.0], np.array([3], dtype=np.int32))  # ints join floats
    writer = store.open_shot()
    with pytest.raises(ConfigError, match="success, abort, fail"):
        writer.close("done")
    writer.close("success")
    with store.shot(1) as s:
        assert s.read("x")[1].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(StoreError, match="no shot 9 .* shots here: 1..2"):
        store.shot(9)


def test_a_slice_reads_only_the_chunks_it_covers(store):
    n = 400_000
    with store.open_shot() as shot:
        rng = np.random.default_rng(0)
        for i in range(4):
            shot.signal("probe", i * 1.0, rng.normal(size=n // 4), dt=1e-6)
    path = store.path_of(1)

    class Counting(io.FileIO):
        read_bytes = 0

        def readinto(self, b):
            got = super().readinto(b)
            Counting.read_bytes += got or 0
            return got

    with h5py.File(Counting(path, "r"), "r") as f:
        d = f["signals/probe/values"]
        assert d.compression == "gzip" and d.shuffle and d.chunks[0] < n
        opened = Counting.read_bytes
        part = d[250_000:250_010]
        used = Counting.read_bytes - opened
    with store.shot(1) as s:
        t, v = s.read("probe", 250_000, 250_010)
    assert np.array_equal(part, v) and np.allclose(t, 2.0 + np.arange(50_000, 50_010) * 1e-6)
    assert used < path.stat().st_size / 10, f"a 10-sample slice read {used} of {path.stat().st_size} bytes"


def test_a_running_shot_is_not_recovered_but_an_abandoned_journal_is(store):
    running = store.open_shot(sequence="live")
    running.signal("x", [0.0], [1.0])
    assert store.recover() == []  # its writer holds the journal's lock
    assert store.journal_path(1).exists()
    running.journal.close()  # the writer is gone without closing: as if its process died
    assert store.recover() == [1]
    with store.shot(1) as s:
        assert s.status == "partial" and "stopped before closing" in s.reason
        assert s.read("x")[1].tolist() == [1.0] and s.attrs["built_by"] == "recover"
    assert not store.journal_path(1).exists()
    assert store.query().loc[1, "status"] == "partial"


def test_shot_numbers_follow_the_files_even_without_the_counter(store):
    for _ in range(3):
        store.open_shot().close()
    (store.root / "next-shot").unlink()
    assert store.open_shot().number == 4


def test_calibrations_are_versioned_and_an_expired_one_is_flagged(store):
    now = time.time()
    reg = store.calibrations
    v1 = reg.set("b_probe", {"gain": 2.0}, by="alice", valid_from=now - 100, valid_until=now - 10)
    assert (v1.version, v1.set_by) == (1, "alice")
    with store.open_shot() as shot:
        pass
    with store.shot(shot.number) as s:
        cal, = [c for c in s.calibrations() if c["source"] == "registry"]
        assert (cal["name"], cal["version"], cal["expired"], cal["set_by"]) == ("b_probe", "1", True, "alice")
        assert s.attrs["expired_calibrations"] == "b_probe"
    v2 = reg.set("b_probe", {"gain": 2.1}, by="carol", valid_until="2999-01-01T00:00")
    assert v2.version == 2 and reg.in_force()["b_probe"] == v2 and not v2.expired_at(time.time())
    assert reg.in_force(at=now - 50)["b_probe"].version == 1  # what held back then
    assert [v.version for v in reg.history("b_probe")] == [1, 2]
    with store.open_shot() as shot:
        pass
    frame = store.query("expired_calibrations")
    assert frame["expired_calibrations"].tolist() == ["b_probe", ""]
    with pytest.raises(ConfigError, match="valid_until .* must be after valid_from"):
        reg.set("x", {}, valid_from=now, valid_until=now - 1)
    with pytest.raises(ConfigError, match="ISO 8601"):
        reg.set("x", {}, valid_until="next tuesday")


def test_derived_data_points_at_its_source_and_records_its_code(store):
    with store.open_shot() as shot:
        shot.signal("density", np.arange(10.0), np.arange(10.0))

    def smooth(v):
        return np.convolve(v, np.ones(3) / 3, "same")
    with store.shot(1) as s:
        v = s.read("density")[1]
    path = store.derive(1, "density_smooth", {"values": smooth(v)}, code=smooth, metadata={"window": 3})
    again = store.derive(1, "density_smooth", smooth(v), code="np.convolve(v, ones(3)/3)")
    assert path.name == "density_smooth.v1.h5" and again.name == "density_smooth.v2.h5"
    with h5py.File(path, "r") as f:
        assert f.attrs["source_shot"] == 1 and f.attrs["source_file"] == "shots/shot-000001.h5"
        assert "def smooth(v)" in f.attrs["code"] and json.loads(f.attrs["metadata"]) == {"window": 3}
        assert np.allclose(f["data/values"][()], smooth(v))
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert store.sql("SELECT name, version FROM derived ORDER BY version").values.tolist() == \
        [["density_smooth", 1], ["density_smooth", 2]]
    with pytest.raises(ConfigError, match="record the code"):
        store.derive(1, "x", v, code=None)
    with pytest.raises(StoreError, match="shot 5 has no complete file"):
        store.derive(5, "x", v, code="x")


def test_export_to_mat_and_csv(store, tmp_path):
    from scipy.io import loadmat
    with store.open_shot(parameters={"rf": 0.4}) as shot:
        shot.signal("density", [0.0, 1.0, 2.0], [1.0, 2.0, 3.0], unit="m^-3")
        shot.signal("b-field", 0.0, [0.1, 0.2], dt=0.5, unit="T")
        shot.event("trip", t=1.5, interlock="door")
    mat = store.export(1, "mat", tmp_path / "one.mat")
    m = loadmat(mat, simplify_cells=True)
    assert m["signals"]["density"]["values"].tolist() == [1.0, 2.0, 3.0]
    assert m["signals"]["b_field"]["name"] == "b-field" and m["signals"]["b_field"]["t"].tolist() == [0.0, 0.5]
    assert m["meta"]["status"] == "success" and json.loads(m["meta"]["parameters"]) == {"rf": 0.4}
    folder = store.export(1, "csv", tmp_path / "csv")
    rows = (folder / "signals" / "density.csv").read_text().splitlines()
    assert rows == ["t,density [m^-3]", "0,1", "1,2", "2,3"]
    assert "door" in (folder / "events.csv").read_text()
    assert json.loads((folder / "metadata.json").read_text())["parameters"] == {"rf": 0.4}
    with pytest.raises(ConfigError, match="mat, csv"):
        store.export(1, "xls")


def test_the_default_store_lives_in_the_state_dir(_isolated_state, monkeypatch):
    monkeypatch.delenv("LABRIG_STORE", raising=False)
    assert ShotStore().root == _isolated_state / "store"
    monkeypatch.setenv("LABRIG_STORE", str(_isolated_state / "elsewhere"))
    assert ShotStore().root == _isolated_state / "elsewhere"
    assert os.path.isdir(_isolated_state / "elsewhere" / "shots")


def test_a_writer_that_died_while_building_keeps_its_exit_status(store):
    from labrig.supervisor.store.journal import CLOSE
    writer = store.open_shot(sequence="x")
    writer.signal("x", [0.0, 1.0], [1.0, 2.0])
    writer.journal.append(CLOSE, {"status": "abort", "reason": "operator stop", "t_end": 5.0})
    writer.journal.close()  # died after journaling its close, before the file was renamed into place
    (store.shots_dir / ".shot-000001.h5.tmp999999").write_bytes(b"half an HDF5 file")
    assert store.recover() == [1]
    with store.shot(1) as s:
        assert (s.status, s.reason, s.attrs["t_end"]) == ("abort", "operator stop", 5.0)
        assert s.read("x")[1].tolist() == [1.0, 2.0]
    assert not list(store.shots_dir.glob(".*"))  # the half-built file is gone


@pytest.mark.skipif(not shutil.which("h5dump"), reason="h5dump (Debian hdf5-tools, HDF5 1.10) is not installed")
def test_an_independent_hdf5_1_10_reader_opens_a_shot(store):
    """MATLAB reads HDF5 with its own (1.10/1.14) library: files must not need a newer one."""
    with store.open_shot(parameters={"rf": 0.4}) as shot:
        shot.signal("density", np.arange(5.0), np.arange(5.0) * 1e17, unit="m^-3")
        shot.event("trip", interlock="door")
    done = subprocess.run(["h5dump", "-d", "/signals/density/values", "-s", "2", "-c", "2", str(shot.path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "2e+17, 3e+17" in done.stdout
    done = subprocess.run(["h5dump", "-a", "/status", "-d", "/events/data", str(shot.path)], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0 and '"success"' in done.stdout and '{"interlock": "door"}' in done.stdout
