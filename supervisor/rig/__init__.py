"""The rig model: the rig file's schema, its loader and the Rig object."""
from .conditions import Condition, compile_condition
from .loader import RigError, parse_rig
from .model import Interlock, Rig
from .schema import SCHEMA_VERSION, RigSpec

__all__ = ["Condition", "compile_condition", "RigError", "parse_rig", "Interlock", "Rig",
           "SCHEMA_VERSION", "RigSpec"]
