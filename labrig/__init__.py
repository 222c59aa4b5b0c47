"""labrig: a hardware-control Jupyter kernel cluster for physics labs.

The package is assembled from the repository's top-level folders
(drivers/, simulators/, supervisor/, sequences/, kernels/) by setup.py.
"""
__version__ = "0.1.0"
