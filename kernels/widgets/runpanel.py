"""The run panel: choose a sequence, fill in its parameters, dry-run it, run it as a shot, pause, abort.

    rp = RunPanel(rig)                                    # the library's discharge, step_scan, conditioning
    rp = RunPanel(rig, sequences=[discharge, my_seq])     # or your own @sequence functions
    rp.form.fields["power"].control.value = 800           # what the browser does
    rp.dry_run(); rp.run(); rp.pause(); rp.abort(); rp.wait(); rp.result
    rp.widget; rp.close()

The form is generated from the chosen sequence's signature (paramform.py); bad input shows the
parameter's or the compiler's own message, never a traceback. "dry run" compiles and shows the
plan's summary and its timeline plot; nothing moves. "run" compiles, then runs the Runner on a
thread of its own, so the kernel stays free for the panel's buttons (pause/resume and abort
call Runner.pause/resume/abort) and for other cells; the progress, the live plot and then the
shot's overview are shown by a RunView (runview.py). One run at a time per panel: a second
"run" is refused, saying which run is under way. Closing the panel aborts its run.
"""
from __future__ import annotations

import html
import threading
from typing import Iterable

import ipywidgets as w

from labrig.drivers.errors import ConfigError

from .lights import GREEN, RED
from .liveplot import png
from .paramform import ParamForm, error_text
from .runview import RunView

CLOSE_WAIT = 30.0  # s close() waits for an aborted run to finish its safe exit and close its shot


def library_sequences() -> list:
    from labrig.sequences.library import conditioning, discharge, step_scan
    return [discharge, step_scan, conditioning]


class RunPanel:
    def __init__(self, machine, *, sequences: Iterable | None = None, store=None, period: float | None = None):
        self.machine = machine
        sequences = list(library_sequences() if sequences is None else sequences)
        if not sequences:
            raise ConfigError("RunPanel: give at least one sequence (sequences=[discharge, ...])")
        self.sequences = {}
        for seq in sequences:
            if not hasattr(seq, "params") or not hasattr(seq, "check"):
                raise ConfigError(f"RunPanel: {seq!r} is not a sequence; decorate it with @sequence "
                                  "(labrig.sequences)")
            self.sequences[seq.name] = seq
        self._store = store
        self.plan = None  # the last plan compiled (dry run or run)
        self.runner = None  # the Runner of the run under way
        self.result = None  # the last run's RunResult
        self.paused = False  # asked to pause (the nodes hold at the runner's next look, within ~50 ms)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

        self.chooser = w.Dropdown(options=list(self.sequences), description="sequence",
                                  style={"description_width": "110px"}, layout=w.Layout(width="300px"))
        self.form = ParamForm(self.sequences[self.chooser.value])
        self.form_box = w.VBox([self.form.widget])
        self.chooser.observe(self._on_choose, names="value")
        self.dry_button = w.Button(description="dry run", icon="eye",
                                   tooltip="compile against the rig: the plan's steps and timeline; nothing moves")
        self.run_button = w.Button(description="run", icon="play", button_style="success",
                                   tooltip="run the sequence as one shot")
        self.pause_button = w.Button(description="pause", icon="pause", disabled=True,
                                     tooltip="hold every node where it is (sampling goes on); press again to resume")
        self.abort_button = w.Button(description="abort", icon="stop", button_style="danger", disabled=True,
                                     tooltip="stop the run: every node runs its safe exit; the shot closes 'abort'")
        self.dry_button.on_click(lambda _: self.dry_run())
        self.run_button.on_click(lambda _: self.run())
        self.pause_button.on_click(lambda _: self.pause())
        self.abort_button.on_click(lambda _: self.abort())
        self.message = w.HTML("")
        self.summary = w.HTML("")
        self.plot = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self.dry_box = w.VBox([self.summary, self.plot], layout=w.Layout(display="none"))
        self.view = RunView({n: s.unit for n, s in machine.spec.signals.items()}, period=period)
        self.view_box = w.VBox([self.view.widget], layout=w.Layout(display="none"))
        self.widget = w.VBox([
            self.chooser, self.form_box,
            w.HBox([self.dry_button, self.run_button, self.pause_button, self.abort_button]),
            self.message, self.dry_box, self.view_box])

    @property
    def sequence(self):
        return self.sequences[self.chooser.value]

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def store(self):
        if self._store is None:  # the kernel's default store ($LABRIG_STORE, else the state directory's)
            from labrig.supervisor.store import ShotStore
            self._store = ShotStore()
        return self._store

    def say(self, text: str, *, bad: bool = False) -> None:
        self.message.value = f"<span style='color:{RED if bad else '#333'}'>{text}</span>" if text else ""

    def _on_choose(self, change) -> None:
        old = self.form
        self.form = ParamForm(self.sequences[change["new"]])
        self.form_box.children = (self.form.widget,)
        old.close()
        self.dry_box.layout.display = "none"
        self.say("")

    # -- the buttons ----------------------------------------------------------------
    def compile(self):
        """The plan of the form's values, or None (the reason shown: the parameter's or the compiler's)."""
        try:
            values = self.form.values()
            plan = self.sequence(**values).compile(self.machine.spec)
        except Exception as exc:  # noqa: BLE001 - a refusal is a message here, never a traceback
            self.say(f"refused: {html.escape(error_text(exc))}", bad=True)
            return None
        self.plan = plan
        return plan

    def dry_run(self):
        """Compile, show the plan's summary and its timeline plot. Nothing touches the hardware."""
        plan = self.compile()
        if plan is None:
            self.dry_box.layout.display = "none"
            return None
        self.summary.value = f"<pre style='font-size:11px;line-height:1.25'>{html.escape(plan.summary())}</pre>"
        try:
            self.plot.value = png(plan.plot())
        except Exception as exc:  # noqa: BLE001 - the summary stands without its picture
            self.plot.value = b""
            self.say(f"the timeline plot failed: {html.escape(error_text(exc))}", bad=True)
        else:
            self.say(f"dry run of {html.escape(plan.call)}: {len(plan.steps)} steps on "
                     f"{html.escape(', '.join(plan.nodes))}, ~{plan.duration:.1f} s; nothing moved")
        self.dry_box.layout.display = None
        return plan

    def run(self) -> bool:
        """Compile and start the run on its own thread; False (and why, in the panel) if it did not start."""
        from labrig.supervisor.runner import Runner
        with self._lock:
            if self.running:
                shot = f" (shot {self.view.shot})" if self.view.shot is not None else ""
                self.say(f"refused: a run is under way{shot}: {html.escape(self.view.plan.call)}; "
                         "wait for its end or abort it first", bad=True)
                return False
            plan = self.compile()
            if plan is None:
                return False
            try:
                self.runner = Runner(self.machine.spec, plan, directory=self.machine.directory, store=self.store,
                                     progress=self.view.begin(plan))
            except Exception as exc:  # noqa: BLE001
                self.view.failed(exc)
                self.say(f"refused: {html.escape(error_text(exc))}", bad=True)
                return False
            self.view_box.layout.display = None
            self._set_buttons(running=True)
            self.say(f"running {html.escape(plan.call)}")
            self._thread = threading.Thread(target=self._run, args=(self.runner,), name="run-panel", daemon=True)
            self._thread.start()
            return True

    def _run(self, runner) -> None:
        try:
            result = runner.run()
        except BaseException as exc:  # refused before the shot (leases, arming, clocks) or a runner that raised
            self.view.failed(exc)
            self.say(f"the run did not start or failed: {html.escape(error_text(exc))}", bad=True)
        else:
            self.result = result
            self.view.end(result)
            colour = GREEN if result.status == "success" else RED
            self.say(f"<span style='color:{colour}'>shot {result.number}: {html.escape(result.status)}"
                     + (f" ({html.escape(result.reason)})" if result.reason else "") + "</span>")
        finally:
            self.runner = None
            self._set_buttons(running=False)

    def pause(self) -> None:
        """Pause the run under way, or resume it if it is paused."""
        runner = self.runner
        if runner is None:
            self.say("nothing to pause: no run is under way", bad=True)
            return
        if self.paused:
            runner.resume()
            self.paused = False
            self.pause_button.description, self.pause_button.icon = "pause", "pause"
            self.say("resumed")
        else:
            runner.pause()
            self.paused = True
            self.pause_button.description, self.pause_button.icon = "resume", "play"
            self.say("paused: every node holds where it is; press resume to go on, abort to stop")

    def abort(self, reason: str = "aborted from the run panel") -> None:
        runner = self.runner
        if runner is None:
            self.say("nothing to abort: no run is under way", bad=True)
            return
        runner.abort(reason)
        self.say("aborting: every node runs its safe exit")

    def wait(self, timeout: float | None = None):
        """Wait for the run under way to end (at most `timeout` s); its RunResult (None if none ended)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.result

    def _set_buttons(self, *, running: bool) -> None:
        self.run_button.disabled = running
        self.pause_button.disabled = self.abort_button.disabled = not running
        if not running:
            self.paused = False
            self.pause_button.description, self.pause_button.icon = "pause", "pause"

    def close(self) -> None:
        """Abort the run under way (a run with no panel left would have no abort button), wait for its end,
        close the widgets."""
        if self.running:
            self.abort("the run panel was closed")
            self.wait(CLOSE_WAIT)
        self.form.close()
        self.view.close()
        for widget in (self.chooser, self.dry_button, self.run_button, self.pause_button, self.abort_button,
                       self.message, self.summary, self.plot, self.dry_box, self.view_box, self.form_box,
                       self.widget):
            widget.close()

    def __repr__(self):
        state = f"running {self.view.plan.call}" if self.running else \
            f"last shot {self.result.number}: {self.result.status}" if self.result else "idle"
        return f"<RunPanel of rig {self.machine.name}: {', '.join(self.sequences)}; {state}>"
