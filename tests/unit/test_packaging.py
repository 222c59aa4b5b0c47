"""The package is one `labrig`, assembled from the fixed top-level folders."""
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ["drivers", "kernels", "sequences", "simulators", "supervisor"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_folder_is_a_labrig_subpackage(folder):
    module = importlib.import_module(f"labrig.{folder}")
    assert Path(module.__file__).resolve().parent == ROOT / folder


@pytest.mark.parametrize("name", FOLDERS + ["tests", "examples", "benchmarks"])
def test_no_generic_top_level_module(name, tmp_path):
    # Run from an empty folder, so the repository itself is not on sys.path.
    code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({name!r}) is None else 1)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, timeout=60)
    assert result.returncode == 0, f"a top-level module {name!r} is importable: {result.stderr.decode()}"


def test_every_subpackage_is_discovered():
    """setup.py maps every folder with an __init__.py into labrig, so none is dropped from a wheel."""
    spec = importlib.util.spec_from_file_location("labrig_setup", ROOT / "setup.py")
    setup_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup_module)
    mapping = setup_module.discover()
    for folder in FOLDERS:
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT)
            assert mapping["labrig." + ".".join(rel.parts)] == rel.as_posix()


def test_cli_help_on_every_command():
    """Walk the whole command tree: every command and group answers --help with its usage."""
    import typer
    from typer.testing import CliRunner
    from labrig.supervisor.cli import app
    runner = CliRunner()

    def walk(command, path):
        yield path
        for name, sub in getattr(command, "commands", {}).items():  # a group's sub-commands
            yield from walk(sub, path + [name])
    paths = list(walk(typer.main.get_command(app), []))
    for expected in (["up"], ["status"], ["down"], ["check"], ["logs"], ["sim", "up"], ["node", "serve"],
                     ["node", "install"], ["kernel", "install"], ["keys", "generate"]):
        assert expected in paths
    for path in paths:
        result = runner.invoke(app, path + ["--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output, path
