"""Knobs and displays for the supervisor kernel (ipywidgets 8): `rig.panel()` builds them all.

    knobs.py     a knob per output: setpoint and readback, arming, held by a trip
    readouts.py  a live value (and a sparkline) per input
    telemetry.py one MQTT subscription per panel: telemetry, trips, heartbeats
    lights.py    interlock lights with re-arm, watchdog lights per node
    estop.py     the emergency stop
    paramform.py a form generated from a sequence's signature, checked by its parameters
    liveplot.py  a run's acquired signals, drawn as they arrive (a PNG at a bounded rate)
    runview.py   one run: progress, live plot, then the shot's overview (also what rig.run shows)
    runpanel.py  choose a sequence, fill in its form, dry run, run, pause, abort
    runmonitor.py the running sequence and the last shot, from the runner's MQTT state
    panel.py     all of them for one rig
"""
