"""The `labrig` command line. Every command has --help; errors never show a traceback."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from labrig.drivers.errors import ConfigError

from .clitools import err, friendly

app = typer.Typer(help="labrig: a hardware-control Jupyter kernel cluster for physics labs.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
sim_app = typer.Typer(help="The simulated testbed: one simulator per node, coupled through one plasma model.",
                      no_args_is_help=True)
app.add_typer(sim_app, name="sim")
node_app = typer.Typer(help="Node runtimes: one process per board that owns its hardware.", no_args_is_help=True)
app.add_typer(node_app, name="node")
kernel_app = typer.Typer(help="Jupyter kernels: the supervisor and one per node.", no_args_is_help=True)
app.add_typer(kernel_app, name="kernel")
plc_app = typer.Typer(help="The PLC layer: what the real PLC program must implement.", no_args_is_help=True)
app.add_typer(plc_app, name="plc")
keys_app = typer.Typer(help="CurveZMQ keys for runtimes reached from other hosts.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
from .store.cli import store_app  # noqa: E402 - the shot store's commands live with the store
app.add_typer(store_app, name="store")

out = Console(highlight=False)

RigArg = typer.Argument(..., help="The rig file (TOML), e.g. examples/ishtar/rig.toml", show_default=False)
StateOpt = typer.Option(None, "--state-dir", envvar="LABRIG_STATE_DIR",
                        help="Where running instances keep pids and endpoints.")


def _state(path: Optional[Path]):
    from .state import state_dir
    return state_dir(path)


@app.command()
@friendly
def check(rig: Path = RigArg):
    """Validate a rig file and print its topology."""
    from .rig import Rig
    r = Rig.load(rig)
    out.print(f"[bold]{r.name}[/]: {r.spec.description}  (schema {r.spec.schema_version}, {rig})")
    nodes = Table(title="nodes", title_justify="left")
    for col in ("node", "kind", "connection", "signals", "description"):
        nodes.add_column(col)
    for name, node in r.nodes.items():
        nodes.add_row(name, node.kind, node.connection, str(len(r.signals_of(name))), node.description)
    out.print(nodes)
    sigs = Table(title="signals", title_justify="left")
    for col in ("signal", "node", "channel", "dir", "unit", "limits", "max slew", "safe"):
        sigs.add_column(col)
    for name, s in r.signals.items():
        limits = f"[{s.limits[0]:g}, {s.limits[1]:g}]" if s.limits else ""
        sigs.add_row(name, s.node, s.channel, s.direction, s.unit, limits,
                     f"{s.max_slew:g}/s" if s.max_slew else "", "" if s.safe is None else f"{s.safe:g}")
    out.print(sigs)
    if r.spec.devices:
        devs = Table(title="devices", title_justify="left")
        for col in ("device", "class", "signals"):
            devs.add_column(col)
        for name, d in r.spec.devices.items():
            devs.add_row(name, d.class_, ", ".join(f"{k}={v}" for k, v in d.signals.items()))
        out.print(devs)
    if r.interlocks:
        locks = Table(title="interlocks", title_justify="left")
        for col in ("interlock", "requires", "forces safe"):
            locks.add_column(col)
        for name, lock in r.interlocks.items():
            locks.add_row(name, lock.require.source, ", ".join(lock.outputs))
        out.print(locks)
    if r.spec.loops:
        loops = Table(title="loops", title_justify="left")
        for col in ("loop", "node", "measure -> actuate", "gains", "rate"):
            loops.add_column(col)
        for name, lp in r.spec.loops.items():
            loops.add_row(name, lp.node, f"{lp.measure} -> {lp.actuate}",
                          f"kp={lp.kp:g} ki={lp.ki:g} kd={lp.kd:g}", f"{lp.rate:g} Hz")
        out.print(loops)


@sim_app.command("up")
@friendly
def sim_up(rig: Path = RigArg,
           seed: int = typer.Option(0, help="Seed of the plasma model's noise."),
           as_json: bool = typer.Option(False, "--json", help="Print the endpoints and pids as JSON."),
           state_dir: Optional[Path] = StateOpt):
    """Start the simulated testbed in the background and print every endpoint and pid."""
    from .rig import Rig
    from .testbed import start_testbed
    record = start_testbed(Rig.load(rig), seed=seed, directory=_state(state_dir))
    if as_json:
        out.print_json(json.dumps(_sim_json(record)))
        return
    _sim_table(record, title=f"simulated testbed for {record['rig_name']} (stop it with `labrig sim down`)")


def _sim_json(record) -> dict:
    sims = {"world": {"kind": "world", "pid": record["world"]["pid"], "endpoints": record["world"]["endpoints"]}}
    for node, info in record["simulators"].items():
        sims[node] = {"kind": info["kind"], "pid": info["pid"], "endpoints": info["endpoints"], "url": info["url"]}
    return sims


def _sim_table(record, *, title: str, alive: dict | None = None):
    table = Table(title=title, title_justify="left")
    for col in ("simulator", "kind", "pid", "endpoints", "driver url"):
        table.add_column(col)
    if alive is not None:
        table.add_column("alive")
    rows = [("world", record["world"])] + list(record["simulators"].items())
    for name, info in rows:
        row = [name, info["kind"], str(info["pid"]),
               "\n".join(f"{k}: {v}" for k, v in info["endpoints"].items()), info.get("url", "")]
        if alive is not None:
            row.append("yes" if alive.get(name) else "[red]no[/]")
        table.add_row(*row)
    out.print(table)


@sim_app.command("down")
@friendly
def sim_down(state_dir: Optional[Path] = StateOpt):
    """Stop the simulated testbed; leaves no process or port behind."""
    from .testbed import stop_testbed
    stopped = stop_testbed(_state(state_dir))
    out.print(f"stopped: {', '.join(stopped)}" if stopped else "no simulated testbed was running")


@sim_app.command("status")
@friendly
def sim_status(as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
               state_dir: Optional[Path] = StateOpt):
    """Show the simulated testbed's processes and endpoints."""
    from .state import read_state
    from .testbed import STATE_NAME, testbed_status
    directory = _state(state_dir)
    status = testbed_status(directory)
    if as_json:
        out.print_json(json.dumps(status))
        return
    record = read_state(STATE_NAME, directory)
    if not record:
        out.print("no simulated testbed is running")
        return
    _sim_table(record, title=f"simulated testbed for {record['rig_name']}",
               alive={k: v["alive"] for k, v in status.items()})


@sim_app.command("fault")
@friendly
def sim_fault(kind: str = typer.Argument(..., help="sensor or link"),
              name: str = typer.Argument(..., help="a world quantity (sensor) or a node (link)"),
              mode: str = typer.Argument(..., help="sensor: stuck, nan, offset, clear; link: mute, garble, slow, clear"),
              value: float = typer.Option(0.0, help="offset (sensor) or delay in s (slow link)"),
              state_dir: Optional[Path] = StateOpt):
    """Inject a fault into the running simulated testbed."""
    from labrig.simulators.world import world_control
    from .testbed import TestbedError, running_testbed
    record = running_testbed(_state(state_dir))
    if not record:
        raise TestbedError("no simulated testbed is running; start one with `labrig sim up RIG`")
    try:
        world_control(record["world"]["endpoints"]["control"],
                      {"op": "fault", "kind": kind, "name": name, "mode": mode, "value": value})
    except ValueError as exc:
        raise TestbedError(str(exc)) from None
    out.print(f"fault: {kind} {name} {mode}")


@node_app.command("serve")
@friendly
def node_serve(rig: Path = RigArg,
               node: str = typer.Argument(..., help="The node's name in the rig file."),
               sim: bool = typer.Option(False, "--sim", help="Use the node's simulator (from `labrig sim up`)."),
               bind: str = typer.Option("127.0.0.1", help="Interface to serve on; not loopback needs --curve-keys."),
               port: int = typer.Option(0, help="TCP port (0: any free port, recorded in the state directory)."),
               broker: Optional[str] = typer.Option(None, help="MQTT broker URL, or 'none' (default: the rig's, "
                                                    "else the cluster's)."),
               curve_keys: Optional[str] = typer.Option(None, help="Folder with server.key_secret (labrig keys generate)."),
               state_dir: Optional[Path] = StateOpt):
    """Run one node's runtime in the foreground until SIGTERM (systemd runs this on a real board)."""
    import logging
    from .runtime.main import serve_node
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raise typer.Exit(serve_node(str(rig), node, sim=sim, directory=_state(state_dir), bind=bind, port=port,
                                broker=broker, curve_keys=curve_keys))


@node_app.command("install")
@friendly
def node_install(rig: Path = RigArg,
                 node: str = typer.Argument(..., help="The node's name in the rig file."),
                 output: Path = typer.Option(Path("/etc/systemd/system"), help="Folder for the unit file."),
                 user: str = typer.Option("labrig", help="The user the runtime runs as."),
                 bind: str = typer.Option("127.0.0.1", help="Interface to serve on."),
                 port: int = typer.Option(5555, help="TCP port."),
                 curve_keys: Optional[str] = typer.Option(None, help="Folder with server.key_secret.")):
    """Write a systemd unit that runs this node's runtime on a real board (enable it with systemctl)."""
    from .rig import Rig
    from .systemd import unit_text
    r = Rig.load(rig)
    r.node(node)
    path = output / f"labrig-node-{node}.service"
    path.write_text(unit_text(rig.resolve(), node, user=user, bind=bind, port=port, curve_keys=curve_keys))
    out.print(f"wrote {path}; then: systemctl daemon-reload && systemctl enable --now {path.name}")


@app.command()
@friendly
def safe(state_dir: Optional[Path] = StateOpt,
         timeout: float = typer.Option(2.0, help="How long to wait for each node, s.")):
    """Emergency stop: drive every running node's outputs to their safe values at once."""
    from .safety import emergency_stop, failures
    results = emergency_stop(_state(state_dir), timeout=timeout)
    if not results:
        err.print("labrig: no node runtime is running here; nothing to drive safe", style="red", markup=False)
        raise typer.Exit(1)
    table = Table(title="safe state", title_justify="left")
    for col in ("node", "outputs safe", "not reached"):
        table.add_column(col)
    bad = failures(results)
    for node, result in results.items():
        if "error" in result and isinstance(result["error"], str):
            table.add_row(node, "-", result["error"])
            continue
        ok = [f"{k}={v['value']:g}" for k, v in result.items() if v["ok"]]
        table.add_row(node, ", ".join(ok), ", ".join(f"{k}: {v['error']}" for k, v in result.items() if not v["ok"]))
    out.print(table)
    if bad:
        err.print(f"labrig: NOT everything is safe: {bad}", style="red", markup=False)
        raise typer.Exit(1)


@app.command()
@friendly
def guard(rig: Path = RigArg,
          broker: Optional[str] = typer.Option(None, help="MQTT broker URL, or 'none' (default: the rig's, "
                                               "else the cluster's)."),
          state_dir: Optional[Path] = StateOpt):
    """Run the rig's guard in the foreground until SIGTERM: leases on every node, cross-node interlocks."""
    import logging
    from .guard import serve_guard
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raise typer.Exit(serve_guard(str(rig), directory=_state(state_dir), broker=broker))


@app.command()
@friendly
def rearm(interlock: str = typer.Argument(..., help="The tripped interlock's name."),
          state_dir: Optional[Path] = StateOpt):
    """Re-arm a tripped interlock (refused while its condition still fails), wherever it is latched."""
    from .safety import rearm as rearm_interlock
    result = rearm_interlock(interlock, _state(state_dir))
    out.print(f"{interlock}: " + ("re-armed" if result.get("rearmed") else result.get("detail", "not tripped")))


@app.command()
@friendly
def override(interlock: str = typer.Argument(..., help="The interlock to bypass."),
             seconds: float = typer.Argument(..., help="For how long, s (at most 600; 0 ends an override now)."),
             reason: str = typer.Option("", "--reason", help="Why (required to start one; journaled and published)."),
             state_dir: Optional[Path] = StateOpt):
    """Bypass an interlock for a limited time (commissioning); it ends by itself, journaled and published."""
    from .safety import override as override_interlock
    result = override_interlock(interlock, seconds, reason, _state(state_dir))
    if result.get("overridden"):
        out.print(f"{interlock}: overridden for {result['left']:.0f} s ({result['reason']})")
    else:
        out.print(f"{interlock}: not overridden")


@app.command()
@friendly
def trips(as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
          state_dir: Optional[Path] = StateOpt):
    """Every latched trip of the running cluster: the guard's and each node's."""
    import json as _json
    from .safety import all_trips
    found = all_trips(_state(state_dir))
    if as_json:
        print(_json.dumps(found, indent=2))
        return
    table = Table(title="latched trips", title_justify="left")
    for col in ("where", "interlock", "layer", "time", "reason"):
        table.add_column(col)
    for where, entries in found.items():
        if isinstance(entries, str):
            table.add_row(where, "-", "-", "-", entries)
            continue
        for t in entries:
            table.add_row(where, t["interlock"], t.get("layer", "node"),
                          time.strftime("%H:%M:%S", time.localtime(t["time"])), t["reason"])
    out.print(table)


@app.command()
@friendly
def logs(name: str = typer.Argument(..., help="A node (its runtime's log), or sim-NODE, sim-world, broker."),
         lines: int = typer.Option(40, "-n", help="How many lines from the end."),
         state_dir: Optional[Path] = StateOpt):
    """Show the log of a node runtime (or another background process) started by labrig."""
    from .processes import log_tail
    directory = _state(state_dir) / "logs"
    candidates = [directory / f"node-{name}.log", directory / f"{name}.log"]
    if name == "broker":  # the cluster's broker logs beside its config (cluster.py)
        from .state import read_state
        record = read_state("broker", directory.parent) or {}
        candidates += [Path(record["log"])] if record.get("log") else []
    for path in candidates:
        if path.exists():
            out.print(log_tail(path, lines), markup=False, highlight=False)
            return
    known = sorted(p.stem for p in directory.glob("*.log")) if directory.exists() else []
    raise ConfigError(f"no log for {name!r} in {directory}; known: {', '.join(known) or 'none'}")


@kernel_app.command("install")
@friendly
def kernel_install(rig: Path = RigArg,
                   prefix: Optional[str] = typer.Option(None, help="Install under this prefix (e.g. sys.prefix of a venv) "
                                                        "instead of the user's Jupyter folder."),
                   sim: bool = typer.Option(False, "--sim", help="Node kernels start simulated runtimes if none runs."),
                   state_dir: Optional[Path] = StateOpt):
    """Install kernelspecs labrig-supervisor and labrig-NODE (generated from this Python)."""
    from labrig.kernels.install import install_kernelspecs
    names = install_kernelspecs(rig, prefix=prefix, state=_state(state_dir), sim=sim)
    out.print(f"installed kernelspecs: {', '.join(names)}")


@plc_app.command("tags")
@friendly
def plc_tags(rig: Path = RigArg, as_json: bool = typer.Option(False, "--json", help="Print as JSON.")):
    """Print the PLC tags and the interlock conditions the real PLC program must implement."""
    from .rig.plc import plc_program
    from .rig import Rig
    program = plc_program(Rig.load(rig))
    if as_json:
        out.print_json(json.dumps(program))
        return
    if not program["plcs"]:
        out.print(f"rig {program['rig']} has no simatic node")
    for node, plc in program["plcs"].items():
        table = Table(title=f"PLC {node} ({plc['connection']}): tags", title_justify="left")
        for col in ("signal", "address", "type", "dir", "unit", "limits", "safe"):
            table.add_column(col)
        for t in plc["tags"]:
            limits = f"[{t['limits'][0]:g}, {t['limits'][1]:g}]" if t["limits"] else ""
            table.add_row(t["signal"], t["address"], t["type"], t["direction"], t["unit"], limits,
                          "" if t["safe"] is None else f"{t['safe']:g}")
        wd = plc["watchdog"]
        table.add_row("(watchdog word)", wd["address"], wd["type"], "in", "", "", "")
        table.add_row("(trip word)", plc["trips"]["address"], plc["trips"]["type"], "out", "", "", "")
        out.print(table)
        out.print(f"watchdog: {wd['rule']}", markup=False)
        out.print(f"trip word: {plc['trips']['rule']}", markup=False)
        out.print(f"interlocks: {plc['interlock_rule']}", markup=False)
    table = Table(title="interlocks the PLC program implements on its own tags", title_justify="left")
    several = len(program["plcs"]) > 1  # then each row names its PLC
    names = [f"{lock['plc']}: {lock['interlock']}" if several else lock["interlock"] for lock in program["interlocks"]]
    table.add_column("interlock", no_wrap=True)  # never cut a name one greps for
    for col in ("requires", "forces safe", "bit"):
        table.add_column(col)
    for name, lock in zip(names, program["interlocks"]):
        bit = "-" if lock["bit"] is None else str(lock["bit"])
        table.add_row(name, lock["requires"], ", ".join(lock["forces_safe"]),
                      bit if lock["latch"] else f"{bit} (no latch)")
    out.print(table)
    if program["elsewhere"]:
        table = Table(title="interlocks on signals the PLC does not have (node and supervisor layers; wire these "
                            "signals to the PLC to add its layer)", title_justify="left")
        for col in ("interlock", "requires", "forces safe", "signals not on a PLC"):
            table.add_column(col)
        for lock in program["elsewhere"]:
            table.add_row(lock["interlock"], lock["requires"], ", ".join(lock["forces_safe"]),
                          ", ".join(f"{s} ({n})" for s, n in lock["not_on_a_plc"].items()))
        out.print(table)


@keys_app.command("generate")
@friendly
def keys_generate(directory: Path = typer.Argument(..., help="Folder for server and client key pairs.")):
    """Make CurveZMQ key pairs (server.key, server.key_secret, client.key, client.key_secret)."""
    import zmq.auth
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in ("server", "client"):
        public, secret = zmq.auth.create_certificates(str(directory), name)
        os.chmod(secret, 0o600)
    out.print(f"keys in {directory}: give clients server.key (public); keep *.key_secret private")


@app.command()
@friendly
def up(rig: Path = RigArg,
       sim: bool = typer.Option(False, "--sim", help="Start the simulators and point every node at its simulator."),
       broker: Optional[str] = typer.Option(None, help="Use this MQTT broker (mqtt://HOST:PORT), or 'none'; "
                                            "default: the rig's, else start Mosquitto (amqtt if not installed)."),
       kernels: bool = typer.Option(True, "--kernels/--no-kernels", help="Start the node and supervisor kernels."),
       timeout: float = typer.Option(60.0, help="Seconds to wait for every part to answer."),
       state_dir: Optional[Path] = StateOpt):
    """Start the cluster in the background (broker, simulators, node runtimes, kernels), print what runs."""
    import time
    from .cluster import start_cluster
    t0 = time.monotonic()
    record = start_cluster(rig, sim=sim, directory=_state(state_dir), broker=broker, kernels=kernels,
                           timeout=timeout)
    elapsed = time.monotonic() - t0
    directory = Path(record["state_dir"])

    def short(path):  # paths inside the state directory, relative to it
        try:
            return str(Path(path).relative_to(directory))
        except ValueError:
            return str(path)

    table = Table(title=f"cluster {record['rig_name']}{' (simulated)' if sim else ''} in {directory}",
                  title_justify="left")
    for col in ("part", "pid", "endpoint", "labrig logs"):
        table.add_column(col)
    b = record.get("broker")
    if b:
        table.add_row(f"broker ({b['kind']}{'' if b.get('started') else ', not ours'})", str(b.get("pid") or ""),
                      b["url"], "broker" if b.get("log") else "")
    if sim:
        from .state import read_state
        bed = read_state("sim", directory) or {}
        for name, info in [("world", bed.get("world", {}))] + list(bed.get("simulators", {}).items()):
            table.add_row(f"simulator {name}", str(info.get("pid", "")),
                          info.get("url") or ", ".join(info.get("endpoints", {}).values()), f"sim-{name}")
    for node, info in record["nodes"].items():
        table.add_row(f"runtime {node}", str(info["pid"]), info.get("endpoint", ""), node)
    if record.get("guard"):
        table.add_row("guard", str(record["guard"]["pid"]), record["guard"].get("endpoint", ""), "guard")
    for name, info in [*record["nodes"].items(), ("supervisor", record.get("supervisor") or {})]:
        if info.get("kernel_pid"):
            table.add_row(f"kernel {name}", str(info["kernel_pid"]), short(info["connection_file"]), f"kernel-{name}")
    out.print(table)
    out.print(f"up in {elapsed:.1f} s; `labrig status` shows it, `labrig down` stops it")


@app.command()
@friendly
def status(as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
           timeout: float = typer.Option(1.0, help="Seconds to wait for each answer (all are asked at once)."),
           state_dir: Optional[Path] = StateOpt):
    """Show each node's runtime and kernel (online/offline), heartbeat age and trips. Exits 0 when nodes are down."""
    from .cluster import cluster_status
    st = cluster_status(_state(state_dir), timeout=timeout)
    if as_json:
        sys.stdout.write(json.dumps(st, indent=2) + "\n")  # plain: rich would wrap long paths
        return
    if st["rig"] is None:
        out.print("no cluster is running; start one with `labrig up RIG [--sim]`")
        return

    def state(word):
        return f"[green]{word}[/]" if word == "online" else f"[red]{word}[/]"

    table = Table(title=f"cluster {st['rig']}{' (simulated)' if st.get('sim') else ''}", title_justify="left")
    for col in ("node", "runtime", "kernel", "heartbeat", "trips", "pid", "endpoint"):
        table.add_column(col)
    for node, n in st["nodes"].items():
        age = "-" if n["heartbeat_age"] is None else f"{n['heartbeat_age']:.1f} s ago"
        trips = ", ".join(str(t) for t in n["trips"]) if n["trips"] else "none"
        kernel = state(n["kernel"]) if n["kernel_pid"] else "not started"
        table.add_row(node, state(n["runtime"]), kernel, age, trips, str(n["pid"]), n["endpoint"] or "")
    g = st.get("guard")
    if g:
        table.add_row("(guard)", state("online" if g["online"] else "offline"), "", "",
                      ", ".join(g["trips"]) or "none", str(g["pid"] or "-"), g["endpoint"] or "")
    if st["supervisor"]:
        table.add_row("(supervisor)", "", state(st["supervisor"]["kernel"]), "", "",
                      str(st["supervisor"]["kernel_pid"]), "")
    out.print(table)
    b = st["broker"]
    if b:
        out.print(f"broker: {b['kind']} {b['url']} pid {b['pid'] or '-'} "
                  f"{'[green]alive[/]' if b['alive'] else '[red]not answering[/]'}")
    else:
        out.print("broker: none (no MQTT)")
    if st["simulators"]:
        dead = [name for name, s in st["simulators"].items() if not s["alive"]]
        out.print(f"simulators: {len(st['simulators'])}" + (f", [red]down: {', '.join(dead)}[/]" if dead else ", all alive"))


@app.command()
@friendly
def dashboard(rig: Path = RigArg,
              port: int = typer.Option(8866, help="TCP port (0: any free one)."),
              ip: str = typer.Option("127.0.0.1", help="Interface to listen on; any but loopback needs --token."),
              token: Optional[str] = typer.Option(None, envvar="LABRIG_DASHBOARD_TOKEN",
                                                  help="Token the page asks for; 'auto' generates one."),
              timeout: float = typer.Option(60.0, help="Seconds to wait for Voila to listen."),
              state_dir: Optional[Path] = StateOpt):
    """Serve the control-room view (Voila) of the running cluster: machine state, knobs, live values, interlocks,
    the emergency stop. Runs until Ctrl-C; stops every kernel it started."""
    from .dashboard import serve_dashboard
    serve_dashboard(rig, directory=_state(state_dir), ip=ip, port=port, token=token, timeout=timeout,
                    echo=lambda line: print(line, flush=True))  # plain: rich would wrap a long URL


@app.command()
@friendly
def batch(notebook: Path = typer.Argument(..., help="A notebook with a cell tagged 'parameters'."),
          param: list[str] = typer.Option([], "--param", "-p", help="NAME=VALUE for every run (repeat it)."),
          grid: list[str] = typer.Option([], "--grid", "-g", help="NAME=V1,V2,...: one run per value "
                                                                    "(several --grid: every combination)."),
          reports: Optional[Path] = typer.Option(None, help="Where the report notebooks go "
                                                            "(default: the shot store's reports/ folder)."),
          kernel: str = typer.Option("labrig-supervisor", help="The kernel that runs the notebook.")):
    """Run a parametrised notebook headless (papermill), once per point: one report notebook per shot."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    from .batch import grid_points, parse_assignment, run_batch
    from .store import default_root
    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        raise ConfigError(f"no kernel {kernel!r} installed: run `labrig kernel install RIG` first") from None
    fixed = dict(parse_assignment(p) for p in param)
    axes = {}
    for text in grid:
        name, values = parse_assignment(text)
        if isinstance(values, str):
            values = [parse_assignment(f"{name}={v}")[1] for v in values.split(",")]
        axes[name] = values if isinstance(values, list) else [values]
    points = grid_points(axes, fixed)
    folder = reports or default_root() / "reports"
    out.print(f"{notebook}: {len(points)} run(s), reports in {folder}")
    failed = 0
    for report in run_batch(notebook, points, reports=folder, kernel=kernel):
        shots = ", ".join(f"{s['shot']} {s['status']}" for s in report.shots) or "no shot"
        point = " ".join(f"{k}={v}" for k, v in report.parameters.items())
        out.print(f"  {point}: {shots}" + (f"  [red]{report.error}[/]" if report.error else "") + f"  -> {report.report}")
        failed += not report.ok
    if failed:
        raise typer.Exit(1)


@app.command()
@friendly
def down(state_dir: Optional[Path] = StateOpt):
    """Stop everything `labrig up` started (kernels, runtimes, simulators, broker); leaves nothing behind."""
    from .cluster import stop_cluster
    stopped = stop_cluster(_state(state_dir))
    out.print(f"stopped: {', '.join(stopped)}" if stopped else "no cluster was running")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
