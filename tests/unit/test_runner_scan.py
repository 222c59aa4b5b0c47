"""rig.scan's points: a grid is every combination, fixed parameters go to every point, a failed shot stops it."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from labrig.supervisor.runner import session


@pytest.fixture
def shots(monkeypatch):
    calls = []

    def fake_run(rig, directory, sequence, *, store=None, progress=True, **params):
        calls.append(params)
        return SimpleNamespace(status="fail" if params.get("power") == 999 else "success", params=params)
    monkeypatch.setattr(session, "run_sequence", fake_run)
    return calls


def test_a_grid_runs_one_shot_per_combination(shots):
    results = session.scan(None, None, "seq", grid={"power": [600, 800], "b_field": [0.06, 0.08]}, flat_top=1.0)
    assert [r.status for r in results] == ["success"] * 4
    assert shots == [{"flat_top": 1.0, "power": 600, "b_field": 0.06}, {"flat_top": 1.0, "power": 600, "b_field": 0.08},
                     {"flat_top": 1.0, "power": 800, "b_field": 0.06}, {"flat_top": 1.0, "power": 800, "b_field": 0.08}]


def test_a_failed_shot_stops_the_scan_unless_asked_not_to(shots):
    assert len(session.scan(None, None, "seq", points=[{"power": 999}, {"power": 600}])) == 1
    assert len(session.scan(None, None, "seq", points=[{"power": 999}, {"power": 600}], stop_on_fail=False)) == 2


def test_grid_or_points_not_both():
    with pytest.raises(ValueError, match="either grid"):
        session.scan(None, None, "seq", grid={"power": [1]}, points=[{}])
