"""The journal: what a writer appended is what a reader finds, and a torn or corrupt tail is left out."""
import numpy as np
import pytest

from labrig.supervisor.store.journal import CLOSE, EVENT, MAGIC, META, SIGNAL, JournalWriter, chunk_arrays, read_journal


def write_some(path, chunks=3):
    j = JournalWriter(path, fsync="never")
    j.append(META, {"shot": 1, "user": "alice"})
    for i in range(chunks):
        t = np.arange(4, dtype="<f8") + 10 * i
        j.append(SIGNAL, {"g": "signals", "s": "density", "u": "m^-3", "d": "<f8", "n": 4, "t": None},
                 [t, t * 2])
    j.append(SIGNAL, {"g": "signals", "s": "fast", "u": "", "d": "<i2", "n": 5, "t": [1.0, 0.5]},
             [np.arange(5, dtype="<i2")])
    j.append(EVENT, {"k": "trip", "t": 3.0, "d": {"interlock": "door"}})
    return j


def test_reader_finds_what_the_writer_appended(tmp_path):
    path = tmp_path / "shot.journal"
    j = write_some(path)
    j.append(CLOSE, {"status": "success", "reason": "", "t_end": 4.0})
    j.close()
    index = read_journal(path)
    assert index.meta == {"shot": 1, "user": "alice"}
    assert index.end["status"] == "success" and index.dropped == 0
    assert index.events == [{"k": "trip", "t": 3.0, "d": {"interlock": "door"}}]
    assert [(c.name, c.n, c.offset) for c in index.chunks] == [(c.name, c.n, c.offset) for c in j.index.chunks]
    with open(path, "rb") as fh:
        t, v = chunk_arrays(fh.fileno(), index.chunks[1])
        assert list(t) == [10, 11, 12, 13] and list(v) == [20, 22, 24, 26]
        t, v = chunk_arrays(fh.fileno(), index.chunks[3])
        assert t is None and index.chunks[3].t0 == 1.0 and list(v) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("cut", [1, 7, 30])
def test_a_torn_last_record_is_left_out_and_the_rest_kept(tmp_path, cut):
    path = tmp_path / "shot.journal"
    j = write_some(path)
    j.close()
    whole = path.read_bytes()
    path.write_bytes(whole[:-cut])  # a writer killed in the middle of its last record
    index = read_journal(path)
    assert len(index.chunks) == 4 and index.events == []
    assert index.dropped == len(whole) - cut - index.size > 0


def test_a_corrupt_payload_stops_the_reader_there(tmp_path):
    path = tmp_path / "shot.journal"
    j = write_some(path)
    j.close()
    data = bytearray(path.read_bytes())
    second = j.index.chunks[1].offset
    data[second + 3] ^= 0xFF  # garbage inside the second chunk (a power cut before fsync)
    path.write_bytes(bytes(data))
    index = read_journal(path)
    assert len(index.chunks) == 1 and index.meta["shot"] == 1 and index.dropped > 0


def test_a_journal_is_never_reopened_for_writing(tmp_path):
    path = tmp_path / "shot.journal"
    write_some(path, 1).close()
    with pytest.raises(FileExistsError):
        JournalWriter(path)
    assert path.read_bytes().startswith(MAGIC)


def test_not_a_journal_gives_an_empty_index(tmp_path):
    path = tmp_path / "x.journal"
    path.write_bytes(b"something else")
    index = read_journal(path)
    assert index.meta is None and index.chunks == [] and index.dropped == len(b"something else")


def test_an_unknown_fsync_policy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="interval, always, never"):
        JournalWriter(tmp_path / "j", fsync="sometimes")
