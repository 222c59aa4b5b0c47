"""The control-room dashboard: `labrig dashboard RIG` serves dashboard.ipynb with Voila.

    dashboard.ipynb   the notebook Voila runs in a labrig-supervisor kernel (where `rig` exists)
    view.py           what it shows: a machine-state banner over `rig.panel()`, with stable CSS hooks
"""
