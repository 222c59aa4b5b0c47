"""Knobs and displays for the supervisor kernel (ipywidgets 8): `rig.panel()` builds them all.

    knobs.py     a knob per output: setpoint and readback, arming, held by a trip
    readouts.py  a live value (and a sparkline) per input
    telemetry.py one MQTT subscription per panel: telemetry, trips, heartbeats
    lights.py    interlock lights with re-arm, watchdog lights per node
    estop.py     the emergency stop
    panel.py     all of them for one rig
"""
