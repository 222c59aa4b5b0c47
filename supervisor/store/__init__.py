"""The shot store: every run is a numbered, self-contained, immutable HDF5 file; a journal
catches it while it runs; a catalog (derived from the files) answers cross-shot questions.

    from labrig.supervisor.store import ShotStore
    store = ShotStore()                      # $LABRIG_STORE, else STATE_DIR/store
    with store.open_shot(sequence="discharge", parameters={"rf": 0.4}, rig="examples/ishtar/rig.toml") as shot:
        shot.signal("density", t, n_e, unit="m^-3")
    store.query("density.max", "b_field.max", day="2025-05-01")   # a pandas DataFrame
"""
from .calibrations import CalibrationRegistry, CalibrationVersion
from .errors import StoreError, StoreFull
from .shotfile import Shot
from .store import ShotStore, default_root
from .writer import ShotWriter

__all__ = ["CalibrationRegistry", "CalibrationVersion", "Shot", "ShotStore", "ShotWriter", "StoreError", "StoreFull",
           "default_root"]
