"""Packaging only: map the fixed top-level folders into the one package `labrig`.

Sub-packages are discovered, so a new `drivers/<bus>/` can never be dropped from a wheel.
"""
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
FOLDERS = ["drivers", "kernels", "sequences", "simulators", "supervisor"]


def discover():
    packages = {"labrig": "labrig"}
    for folder in FOLDERS:
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT)
            packages["labrig." + ".".join(rel.parts)] = rel.as_posix()
    return packages


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import discover()
    package_dir = discover()
    setup(
        packages=list(package_dir),
        package_dir=package_dir,
        package_data={name: ["*.md", "*.toml", "*.ipynb", "*.json"] for name in package_dir},
        include_package_data=True,
    )
