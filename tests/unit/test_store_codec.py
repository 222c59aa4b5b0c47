"""Chunks compressed as a shot runs (store/codec.py): what HDF5's own filters, and h5dump 1.10, read back,
whatever the sizes of the signal() calls; a journal of compressed chunks and raw tails recovered after a crash."""
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from labrig.supervisor.store import ShotStore, codec


@pytest.fixture
def store(tmp_path):
    return ShotStore(tmp_path / "store", fsync="never")


def test_encode_is_hdf5s_shuffle_then_deflate(tmp_path):
    values = np.round(np.sin(np.arange(2024) / 50) * 4000) / 8192
    first, edge = codec.encode(values[:1024], 1024), codec.encode(values[1024:], 1024)  # the edge chunk is padded
    assert np.array_equal(codec.decode(edge, "<f8", 1000), values[1024:])
    with h5py.File(tmp_path / "x.h5", "w") as f:
        d = f.create_dataset("v", shape=(2024,), dtype="<f8", chunks=(1024,), compression="gzip", shuffle=True)
        d.id.write_direct_chunk((0,), first)
        d.id.write_direct_chunk((1024,), edge)
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert np.array_equal(f["v"][()], values)  # HDF5's own filters undo it


@pytest.mark.parametrize("sizes", [[100_000], [4096] * 30, [1, 32767, 1, 70_000, 5], [40_000, 0, 40_000]])
def test_any_cut_of_calls_gives_back_every_value_and_its_statistics(store, sizes):
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=n) for n in sizes]
    parts[-1][:1] = np.nan  # ignored by the statistics
    times = [np.arange(n) * 1e-3 + 10.0 * i for i, n in enumerate(sizes)]
    counts = [(np.nan_to_num(v) * 1000).astype(np.int16) for v in parts]
    with store.open_shot() as shot:
        for t, v, c in zip(times, parts, counts):
            shot.signal("timed", t, v, unit="V")
            shot.signal("counts", float(len(t)), c, dt=1e-6)
    values, stamps = np.concatenate(parts), np.concatenate(times)
    with store.shot(shot.number) as s:
        t, v = s.read("timed")
        assert np.array_equal(v, values, equal_nan=True) and np.array_equal(t, stamps)
        assert np.array_equal(s.read("counts")[1], np.concatenate(counts))
        info = s.info("timed")
        finite = values[~np.isnan(values)]
        assert info["n"] == len(values) and info["min"] == finite.min() and info["max"] == finite.max()
        assert info["mean"] == pytest.approx(finite.mean()) and info["t_first"] == stamps[0]
        assert info["t_last"] == stamps[-1]
        d = s.file["signals/timed/values"]
        assert d.compression == "gzip" and d.shuffle and (len(values) < 32768 or d.chunks == (32768,))


def test_a_killed_writer_leaves_chunks_and_tails_that_recover(store):
    writer = store.open_shot(sequence="long")
    pieces = [np.arange(i * 5000, (i + 1) * 5000, dtype=float) for i in range(15)]  # 75000: 2 chunks and a tail
    for i, piece in enumerate(pieces):
        writer.signal("ramp", i * 0.5, piece, dt=1e-4)
    assert len([c for c in writer.journal.index.chunks if c.packed]) == 2  # compressed while it ran
    writer._pool.close()
    writer.journal.close()  # gone without closing
    assert store.recover() == [1]
    with store.shot(1) as s:
        t, v = s.read("ramp")
        assert s.status == "partial" and np.array_equal(v, np.concatenate(pieces))
        assert np.allclose(t[[0, 5000, 74999]], [0.0, 0.5, 7.0 + 4999e-4])


def test_a_store_without_compression_still_reads_a_compressed_journal(tmp_path):
    writer = ShotStore(tmp_path / "s", fsync="never").open_shot()
    writer.signal("x", 0.0, np.arange(70_000.0), dt=1.0)
    writer.close("success")
    plain = ShotStore(tmp_path / "p", fsync="never", compression=None)
    with plain.open_shot() as shot:
        shot.signal("x", 0.0, np.arange(70_000.0), dt=1.0)
    with plain.shot(1) as s:
        assert s.file["signals/x/values"].compression is None and s.read("x")[1][-1] == 69_999.0


@pytest.mark.skipif(not shutil.which("h5dump"), reason="h5dump (Debian hdf5-tools, HDF5 1.10) is not installed")
def test_h5dump_1_10_reads_the_chunks(store):
    with store.open_shot() as shot:
        for i in range(3):
            shot.signal("adc", i * 1.0, np.arange(i * 30_000, (i + 1) * 30_000, dtype=np.int32), dt=1e-5)
    done = subprocess.run(["h5dump", "-d", "/signals/adc/values", "-s", "89997", "-c", "3", str(shot.path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "89997, 89998, 89999" in done.stdout
