"""Device classes: physics from calibrated signals (`rig.langmuir.density()`).

A device is declared in the rig file with a class, the signals it uses by role,
and parameters. It reads and writes through two callables, so the same class
works on drivers (the demo), on a node runtime, or in the supervisor.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from labrig.drivers.errors import ConfigError

E = 1.602176634e-19  # C
AMU = 1.66053906660e-27  # kg
R_E = 2.8179403262e-15  # m, classical electron radius


def density_from_ion_saturation(i_sat_A: float, *, te_eV: float, area_m2: float, ion_mass_amu: float) -> float:
    """Bohm flux: I_is = 0.61 e n A sqrt(e Te / m_i)  ->  n [m^-3]."""
    c_s = math.sqrt(E * te_eV / (ion_mass_amu * AMU))
    return abs(i_sat_A) / (0.61 * E * area_m2 * c_s)


def density_from_phase(phase_rad: float, *, wavelength_m: float, path_m: float) -> float:
    """Line-averaged density from an interferometer phase: phi = r_e lambda n L."""
    return phase_rad / (R_E * wavelength_m * path_m)


class Device:
    roles: tuple[str, ...] = ()
    defaults: dict[str, Any] = {}

    def __init__(self, name: str, signals: Mapping[str, str], params: Mapping[str, Any],
                 read: Callable[[str], float], write: Callable[[str, float], Any] | None = None):
        missing = [r for r in self.roles if r not in signals]
        if missing:
            raise ConfigError(f"device {name!r} ({type(self).__name__}) needs signals for: {', '.join(missing)}")
        self.name = name
        self.signals = dict(signals)
        self.params = {**self.defaults, **params}
        self._read = read
        self._write = write

    def read(self, role: str) -> float:
        return self._read(self.signals[role])

    def write(self, role: str, value: float):
        if self._write is None:
            raise ConfigError(f"device {self.name!r} is read-only here")
        return self._write(self.signals[role], value)

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}: {', '.join(f'{k}={v}' for k, v in self.signals.items())}>"


class LangmuirProbe(Device):
    """A single Langmuir probe biased into ion saturation. Current in mA, positive = electrons in."""
    roles = ("current",)
    defaults = {"area_m2": 1e-5, "ion_mass_amu": 39.95, "te_eV": 4.0, "saturation_bias_V": -80.0}

    def density(self) -> float:
        """Density [m^-3] from the ion saturation current (bias the probe to saturation first)."""
        i_sat = self.read("current") * 1e-3
        if i_sat >= 0:
            return 0.0  # no net ion current: no plasma, or the probe is not in ion saturation
        return density_from_ion_saturation(i_sat, te_eV=self.params["te_eV"], area_m2=self.params["area_m2"],
                                           ion_mass_amu=self.params["ion_mass_amu"])

    def bias_to_saturation(self):
        return self.write("bias", self.params["saturation_bias_V"])


class Interferometer(Device):
    roles = ("phase",)
    defaults = {"wavelength_m": 2e-3, "path_m": 0.1}

    def density(self) -> float:
        """Line-averaged density [m^-3]."""
        return density_from_phase(self.read("phase"), wavelength_m=self.params["wavelength_m"],
                                  path_m=self.params["path_m"])


class Coil(Device):
    roles = ("current",)
    defaults = {"tesla_per_amp": 2e-4}

    def field(self) -> float:
        """Magnetic field on axis [T]."""
        return self.read("current") * self.params["tesla_per_amp"]

    def set_field(self, tesla: float):
        return self.write("setpoint", tesla / self.params["tesla_per_amp"])


class RFGenerator(Device):
    """The RF amplifier's drive, and (optional roles) the PLC permit it depends on and the host's
    request for it: `enable()` asks; the PLC grants `permitted()` only while its interlocks hold."""
    roles = ("power",)

    def enable(self, on: bool = True):
        if "enable" not in self.signals:
            raise ConfigError(f"device {self.name!r} has no 'enable' signal; declare the PLC's RF request "
                              "(e.g. enable = \"rf_enable\") in its signals")
        return self.write("enable", 1.0 if on else 0.0)

    def permitted(self) -> bool:
        """True while the PLC permits RF (without a 'permit' signal, nothing says otherwise)."""
        return "permit" not in self.signals or self.read("permit") >= 0.5

    def absorbed(self) -> float:
        """Forward minus reflected power [W]."""
        return self.read("forward") - self.read("reflected")

    def reflection(self) -> float:
        forward = self.read("forward")
        return self.read("reflected") / forward if forward > 0 else 0.0


class GasValve(Device):
    roles = ("flow",)


class VacuumGauge(Device):
    roles = ("pressure",)


DEVICE_CLASSES: dict[str, type[Device]] = {cls.__name__: cls for cls in
                                           (LangmuirProbe, Interferometer, Coil, RFGenerator, GasValve, VacuumGauge)}


def make_device(name: str, class_name: str, signals, params, read, write=None) -> Device:
    try:
        cls = DEVICE_CLASSES[class_name]
    except KeyError:
        raise ConfigError(f"device {name!r}: unknown class {class_name!r}; "
                          f"allowed: {', '.join(DEVICE_CLASSES)}") from None
    return cls(name, signals, params, read, write)
