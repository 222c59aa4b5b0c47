"""The shot store under real faults: a writer process SIGKILLed mid-shot, writers racing for numbers in
several processes, and a disk that fills up (a real, small tmpfs)."""
from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from labrig.supervisor.store import ShotStore, StoreFull

# starts writer processes: with the other process-heavy modules, one at a time (scripts/test)
pytestmark = pytest.mark.processes

CHUNK = 4096  # samples per chunk in the writer process


def chunk(i: int) -> np.ndarray:
    return i * 10_000.0 + np.arange(CHUNK)


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from labrig.supervisor.store import ShotStore
    store = ShotStore(sys.argv[1])
    shot = store.open_shot(sequence="long discharge", parameters={"rf": 0.5})
    print("shot", shot.number, flush=True)
    i = 0
    while True:  # until killed
        shot.signal("density", i * 0.1, i * 10_000.0 + np.arange(%d), dt=0.1 / %d, unit="m^-3")
        shot.event("audit", op="write", i=i)
        print("chunk", i, flush=True)  # after the call returned: this chunk is journaled
        i += 1
        time.sleep(0.01)
""" % (CHUNK, CHUNK))


@contextlib.contextmanager
def process(*args: str):
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_a_writer_killed_mid_shot_leaves_a_recoverable_partial_shot(tmp_path):
    root = tmp_path / "store"
    with process("-c", WRITER, str(root)) as proc:
        assert proc.stdout.readline().split() == ["shot", "1"], proc.stderr.read()
        acknowledged = -1
        while acknowledged < 20:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            acknowledged = int(line.split()[1])
        proc.kill()  # SIGKILL: no finally, no close, mid-shot
        proc.wait(timeout=30)
    store = ShotStore(root)
    assert store.journal_path(1).exists() and not store.path_of(1).exists()
    assert store.recover() == [1]
    with store.shot(1) as shot:
        assert shot.status == "partial" and "stopped before closing" in shot.reason
        assert shot.metadata("parameters") == {"rf": 0.5} and shot.attrs["sequence"] == "long discharge"
        t, values = shot.read("density")
        got = len(values) // CHUNK
        assert got >= acknowledged + 1 and len(values) == got * CHUNK  # every acknowledged chunk, whole
        assert np.array_equal(values, np.concatenate([chunk(i) for i in range(got)]))
        assert np.allclose(t[CHUNK * 3], 0.3)
        assert [e["i"] for e in shot.events("audit")][:acknowledged + 1] == list(range(acknowledged + 1))
    assert store.query("density.n").loc[1, "density.n"] == got * CHUNK
    assert store.recover() == []


NUMBERS = textwrap.dedent("""
    import sys
    from labrig.supervisor.store import ShotStore
    store = ShotStore(sys.argv[1], fsync="never")
    for _ in range(int(sys.argv[2])):
        with store.open_shot(sequence=sys.argv[3]) as shot:
            shot.signal("x", [0.0], [1.0])
        print(shot.number, flush=True)
""")


def test_writers_in_several_processes_never_share_a_shot_number(tmp_path):
    root, writers, each = tmp_path / "store", 4, 8
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(process("-c", NUMBERS, str(root), str(each), f"w{i}")) for i in range(writers)]
        outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    numbers = sorted(int(n) for out, _ in outputs for n in out.split())
    assert numbers == list(range(1, writers * each + 1))
    store = ShotStore(root)
    by_writer = store.query()["sequence"].value_counts().to_dict()
    assert by_writer == {f"w{i}": each for i in range(writers)}


@pytest.fixture
def small_disk(tmp_path):
    """A real 6 MiB tmpfs: writes on it really fail with ENOSPC."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True,
                              text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command here: the full-disk test needs a real small tmpfs")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True, timeout=30)


def test_a_full_disk_mid_shot_keeps_everything_journaled_and_recovers(small_disk):
    store = ShotStore(small_disk / "store")
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (4 << 20))  # what the operator will delete to make room
    rng = np.random.default_rng(0)
    sent = []
    shot = store.open_shot(sequence="discharge")
    with pytest.raises(StoreFull) as full:
        for _ in range(1000):  # far more than the disk holds
            data = rng.normal(size=8192)  # 64 KiB of incompressible samples
            shot.signal("probe", len(sent) * 1.0, data, dt=1 / 8192)
            sent.append(data)
    message = str(full.value)
    assert "is full" in message and "kept" in message and "recover" in message
    assert 5 < len(sent) < 60
    with pytest.raises(StoreFull, match="stopped recording"):
        shot.signal("probe", 99.0, np.zeros(4), dt=0.1)
    with pytest.raises(StoreFull, match="no space to build"):  # the file cannot be built on a full disk...
        shot.close("success")
    assert store.journal_path(1).exists() and not store.path_of(1).exists()  # ...and the journal stays whole
    assert not list(store.shots_dir.glob(".*tmp*"))  # no half-built file left
    filler.unlink()
    assert store.recover() == [1]
    with store.shot(1) as s:
        assert s.status == "partial" and "disk full" in s.reason
        t, values = s.read("probe")
        assert np.array_equal(values, np.concatenate(sent))  # everything acquired up to the fault
        assert t[-1] == pytest.approx(len(sent) - 1 / 8192)
    assert store.query("probe.n").loc[1, "probe.n"] == len(sent) * 8192
