"""The shot store, measured: how fast a shot is written, how fast a cross-shot question is answered.

    python benchmarks/shot_store.py [--mb 64] [--shots 10000] [--dir /tmp] [--small]

Baselines are measured in the same run, on the same disk (a temporary folder under --dir).
One line per figure:

    figure: shot_write MBPS MB/s baseline MBPS ratio R
        one shot of 4 uniformly sampled float64 signals (--mb MB in all, 1 MiB chunks of
        ADC-like data: a 14-bit quantised sine plus noise), from open_shot until close() has
        returned, MB of signal values per second: every value journaled before its signal()
        call returns (compressed there: shuffle + deflate per 256 KiB HDF5 chunk, on a thread
        per core, store/codec.py), the self-contained HDF5 file built from the journal (the
        compressed chunks copied in as they are), fsynced, renamed, indexed in the catalog.
        Default store options (fsync "interval", compression "gzip"). Baseline: the same bytes,
        same chunks, written raw (uncompressed) to one file with os.write, then fsynced, the
        better of two. Goal: ratio >= 0.8. On a machine whose disk takes ~1 GB/s, compression's
        CPU time is what decides it (the file is ~6x smaller than the baseline's).
    figure: shot_journal MBPS MB/s baseline MBPS ratio R
        the same shot's signal() calls alone (the rate a running shot absorbs data: compression,
        journal, checksums, fsync every second), against the same baseline.
    figure: catalog_query MS ms baseline MS ratio R
        store.query("density.max", "b_field.max", day=TODAY) over --shots small synthetic shots
        (two 100-sample signals each), median of 5. Baseline: open every shot file with h5py and
        take the max of its density and b_field values, as the seed's users had to. The two
        answers are checked equal. Goal: ratio <= 0.01.

--small (CI smoke): 4 MB and 100 shots. Notes go to stderr. SIGTERM ends the run through its
`finally` blocks (the temporary folder is removed).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIGNALS = 4
CHUNK = 1 << 17  # float64 samples: 1 MiB


def figure(name, value, unit, baseline, ratio) -> None:
    print(f"figure: {name} {value:.4g} {unit} baseline {baseline:.4g} ratio {ratio:.3g}", flush=True)


def note(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


def adc_chunks(total_mb: float) -> list[np.ndarray]:
    """1 MiB chunks of what a 14-bit digitiser gives, in volts."""
    rng = np.random.default_rng(0)
    count = max(SIGNALS, round(total_mb * (1 << 20) / (8 * CHUNK)))
    i = np.arange(CHUNK)
    return [np.round(4000 * np.sin(i / 500 + k) + rng.normal(0, 20, CHUNK)) / 8192 for k in range(count)]


def raw_write(folder: Path, chunks: list[np.ndarray]) -> float:
    path = folder / "raw.bin"
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for c in chunks:
            os.write(fd, c)
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t
    path.unlink()
    return elapsed


def write_shot(store, chunks: list[np.ndarray]) -> tuple[float, float, Path]:
    """(seconds until the last signal() returned, seconds until close() returned, the shot file)."""
    t = time.perf_counter()
    with store.open_shot(sequence="benchmark", parameters={"chunks": len(chunks)}) as shot:
        for k, c in enumerate(chunks):
            shot.signal(f"adc{k % SIGNALS}", (k // SIGNALS) * 1e-3, c, dt=1e-3 / CHUNK, unit="V")
        journaled = time.perf_counter() - t
    return journaled, time.perf_counter() - t, shot.path


def write_figures(folder: Path, total_mb: float) -> None:
    from labrig.supervisor.store import ShotStore
    chunks = adc_chunks(total_mb)
    size = sum(c.nbytes for c in chunks) / 1e6
    store = ShotStore(folder / "write")
    write_shot(store, chunks[:1])  # warm-up: first-use imports and version look-ups are not throughput
    raw = raw_write(folder, chunks)
    journaled, whole, path = write_shot(store, chunks)
    raw = min(raw, raw_write(folder, chunks))  # the better of two baselines: the page cache's state varies
    file_mb = path.stat().st_size / 1e6
    figure("shot_write", size / whole, "MB/s", size / raw, raw / whole)
    figure("shot_journal", size / journaled, "MB/s", size / raw, raw / journaled)
    from labrig.supervisor.store.codec import DEFLATE
    note(f"{size:.0f} MB of signals: signal() calls (compression, journal) {journaled:.2f} s, close (HDF5 build, "
         f"fsync, catalog) {whole - journaled:.2f} s, raw write {raw:.2f} s; shot file {file_mb:.1f} MB "
         f"(compression ratio {size / file_mb:.1f}, deflate by {DEFLATE})")
    plain = ShotStore(folder / "plain", compression=None)  # where the time goes: the same shot without gzip
    write_shot(plain, chunks[:1])
    _, whole, _ = write_shot(plain, chunks)
    note(f"the same shot without compression: {size / whole:.0f} MB/s (ratio {raw / whole:.2f})")


def query_figures(folder: Path, shots: int) -> None:
    import h5py
    from labrig.supervisor.store import ShotStore
    store = ShotStore(folder / "query", fsync="never")  # set-up only: the figure is about reading
    rng = np.random.default_rng(1)
    day = dt.date.today()
    t = time.perf_counter()
    for i in range(shots):
        with store.open_shot(sequence="synthetic", parameters={"i": i}) as shot:
            now = time.time()
            shot.signal("density", now, rng.normal(1e18, 1e17, 100), dt=1e-3, unit="m^-3")
            shot.signal("b_field", now, rng.normal(0.1, 0.01, 100), dt=1e-3, unit="T")
    note(f"{shots} synthetic shots written and indexed in {time.perf_counter() - t:.0f} s")
    ours = []
    for _ in range(5):
        t = time.perf_counter()
        frame = store.query("density.max", "b_field.max", day=day)
        ours.append(time.perf_counter() - t)
    t = time.perf_counter()
    opened = {}
    for number in store.numbers():
        with h5py.File(store.path_of(number), "r") as f:
            opened[number] = (f["signals/density/values"][()].max(), f["signals/b_field/values"][()].max())
    baseline = time.perf_counter() - t
    if len(frame) != shots or any(opened[n] != (row["density.max"], row["b_field.max"]) for n, row in frame.iterrows()):
        raise RuntimeError(f"the catalog and the files disagree ({len(frame)} rows for {shots} shots)")
    ms = statistics.median(ours) * 1e3
    figure("catalog_query", ms, "ms", baseline * 1e3, ms / (baseline * 1e3))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=64, help="MB of signals in the written shot")
    parser.add_argument("--shots", type=int, default=10_000, help="synthetic shots for the catalog query")
    parser.add_argument("--dir", default=None, help="where the temporary store goes (the disk measured)")
    parser.add_argument("--small", action="store_true", help="a quick run for CI: 4 MB, 100 shots")
    args = parser.parse_args(argv)
    if args.small:
        args.mb, args.shots = 4, 100
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # through the finally blocks: the folder goes
    with tempfile.TemporaryDirectory(prefix="labrig-bench-store-", dir=args.dir) as tmp:
        os.environ["LABRIG_STATE_DIR"] = tmp  # nothing touches the user's state
        write_figures(Path(tmp), args.mb)
        query_figures(Path(tmp), args.shots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
