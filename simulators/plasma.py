"""The helicon plasma that every simulated device is coupled to.

One lumped (0-D) model of a small argon helicon source, simple on purpose but
physically sensible, so that sequences behave on the simulated rig roughly as on
the real one. All numbers below are the model's, at the reference point
0.4 Pa (gas_valve 0.4) and 0.08 T (coil_current_cmd 400 A) unless stated.

RF       P_fwd = 1500 W * rf_drive**2 when rf_permit, else 0. The matching network
         is tuned for the helicon load, so the reflected fraction depends on the
         mode: off 0.90, capacitive 0.45, inductive 0.15, helicon 0.05.
         P_abs = P_fwd - P_ref.
Coil     L/R lag, tau 0.2 s, to coil_current_cmd; b_field = 0.0002 T/A * coil_current.
Gas      gas_flow = 50 sccm * gas_valve (fast mass-flow controller); pressure
         relaxes (tau 0.3 s) to 1e-3 Pa + 0.02 Pa/sccm (20 sccm -> 0.40 Pa).
Modes    0 off, 1 capacitive (E), 2 inductive (H), 3 helicon wave (W). One
         transition per 1 ms sub-step. Jump-up thresholds (drop-down = up / 1.25):
           off -> E : P_fwd >= 15 W * (0.25 Pa/p + p/2.5 Pa), needs p >= 0.02 Pa
                      (antenna voltage breaks the gas down: forward power counts).
           any -> off when p < 0.015 Pa (gas shut: nothing left to ionise).
           E -> H   : P_abs >= 100 W * sqrt(p/0.4 Pa)
           H -> W   : P_abs >= 250 W * sqrt(p/0.4 Pa) * (1 + 0.03 T/(B - 0.015 T)),
                      B > 0.015 T (unreachable below ~0.023 T at full power).
         Because the reflected fraction falls as the mode climbs, the forward-power
         hysteresis is wider than 1.25. Measured at the reference point (forward
         power, rf_drive): off -> E 12 W (0.09), back 9 W (0.08); E -> H 183 W
         (0.35), back 94 W (0.25); H -> W 431 W (0.54), back 308 W (0.45). So the
         order of ramps matters: B first, power up through the W jump and back
         down to rf_drive 0.5 stays helicon (1.2e18 m^-3); power first at B = 0,
         back to 0.5, then B, lands in inductive (5.3e17 m^-3) at the same settings.
         A comfortable helicon shot: gas_valve 0.4, coil_current_cmd 400 A,
         rf_drive 0.7 -> 2.4e18 m^-3, 1.4 rad (helicon from rf_drive >= 0.54).
Density  relaxes (tau 20 ms) to a mode-dependent equilibrium, rising
         monotonically with P_abs, g = sqrt(p/0.4 Pa):
           E: 1e16 m^-3 * P/(P + 60 W) * g         (~1e15..1e16)
           H: 1.2e18 m^-3 * P/(P + 400 W) * g       (~2e17..9e17)
           W: 3.5e15 m^-3/W * P * (B/0.08 T) * g    (~1e18..5e18 at 0.08 T)
         No gas (p < 0.02 Pa) means no breakdown at any power: density 0.
Te       E 5.0, H 3.5, W 3.0 eV, times (0.4 Pa/p)**0.2, clipped to 2..7 eV;
         relaxes with the density.
Probe    Langmuir tip 1e-5 m^2, argon ions (6.63e-26 kg). Ion saturation
         I_is = 0.61 e n A sqrt(e Te/m_i) (2.6 mA at 1e18 m^-3, 3 eV); electron
         saturation I_es = e n A v_e/4; plasma potential V_p = 5 Te. Below V_p:
         I = -I_is + I_es exp((V - V_p)/Te); above V_p the ions are repelled and
         the electron current saturates. Positive = electron current into the probe.
Interferometer  phase = r_e * lambda * n * L = 2.82e-15 m * 2e-3 m * n * 0.1 m
         (0.56 rad at 1e18 m^-3).
Noise    Gaussian, on the sensor outputs only (rf_forward, rf_reflected,
         coil_current, b_field, pressure, gas_flow, langmuir_current,
         interferometer_phase): 0.5 % relative plus a small floor. density, te and
         mode are the model's truth and stay clean. One draw per step() call, so
         state() is repeatable between steps; same seed and call sequence, same trace.
"""
from __future__ import annotations

import math
import random

E_CHARGE = 1.602176634e-19  # C
M_ELECTRON = 9.1093837e-31  # kg
M_ARGON = 6.63e-26  # kg
PROBE_AREA = 1e-5  # m^2
R_ELECTRON = 2.82e-15  # m, classical electron radius
WAVELENGTH = 2e-3  # m, interferometer
PATH = 0.1  # m, plasma chord

P_MAX = 1500.0  # W at rf_drive 1
T_PER_A = 2e-4  # T/A
TAU_COIL = 0.2  # s
SCCM_PER_VALVE = 50.0  # sccm at gas_valve 1
P_BASE = 1e-3  # Pa
PA_PER_SCCM = 0.02  # Pa/sccm
TAU_GAS = 0.3  # s
TAU_PLASMA = 0.02  # s
MAX_SUBSTEP = 1e-3  # s

OFF, CAPACITIVE, INDUCTIVE, HELICON = 0, 1, 2, 3
REFLECTED = {OFF: 0.90, CAPACITIVE: 0.45, INDUCTIVE: 0.15, HELICON: 0.05}
TE_MODE = {CAPACITIVE: 5.0, INDUCTIVE: 3.5, HELICON: 3.0}
HYSTERESIS = 1.25  # jump-up / drop-down power of every transition
P_BREAKDOWN_MIN = 0.02  # Pa, below this the gas does not break down
P_SUSTAIN_MIN = 0.015  # Pa, below this any discharge dies
B_HELICON_MIN = 0.015  # T, the helicon threshold diverges here

# relative noise and floor per sensor output
NOISE = {
    "rf_forward": (0.005, 0.5),
    "rf_reflected": (0.005, 0.5),
    "coil_current": (0.005, 0.05),
    "b_field": (0.005, 1e-5),
    "pressure": (0.005, 1e-5),
    "gas_flow": (0.005, 0.02),
    "langmuir_current": (0.005, 1e-5),
    "interferometer_phase": (0.005, 0.005),
}
NON_NEGATIVE = ("rf_forward", "rf_reflected", "pressure", "gas_flow")


def breakdown_power(p: float) -> float:
    """Forward power (W) that breaks the gas down at pressure p (Paschen-like, min near 1 Pa)."""
    return 15.0 * (0.25 / p + p / 2.5)


def eh_power(p: float) -> float:
    """Absorbed power (W) for the capacitive -> inductive jump."""
    return 100.0 * math.sqrt(p / 0.4)


def hw_power(p: float, b: float) -> float:
    """Absorbed power (W) for the inductive -> helicon jump (inf when B is too low)."""
    if b <= B_HELICON_MIN:
        return math.inf
    return 250.0 * math.sqrt(p / 0.4) * (1.0 + 0.03 / (b - B_HELICON_MIN))


def equilibrium_density(mode: int, p_abs: float, p: float, b: float) -> float:
    """Steady density (m^-3) of a mode: monotonic in the absorbed power."""
    if mode == OFF or p_abs <= 0:
        return 0.0
    g = math.sqrt(max(p, 0.0) / 0.4)
    if mode == CAPACITIVE:
        return 1e16 * p_abs / (p_abs + 60.0) * g
    if mode == INDUCTIVE:
        return 1.2e18 * p_abs / (p_abs + 400.0) * g
    return 3.5e15 * p_abs * (b / 0.08) * g


def equilibrium_te(mode: int, p: float) -> float:
    if mode == OFF:
        return 0.0
    return min(7.0, max(2.0, TE_MODE[mode] * (0.4 / max(p, 1e-6)) ** 0.2))


def probe_current(bias: float, n: float, te: float) -> float:
    """Langmuir probe current (A, + = electrons in) at bias (V)."""
    if n <= 0:
        return 0.0
    te = max(te, 0.5)  # afterglow: keep the exponentials finite
    i_is = 0.61 * E_CHARGE * n * PROBE_AREA * math.sqrt(E_CHARGE * te / M_ARGON)
    i_es = 0.25 * E_CHARGE * n * PROBE_AREA * math.sqrt(8 * E_CHARGE * te / (math.pi * M_ELECTRON))
    v_p = 5.0 * te
    if bias < v_p:
        return -i_is + i_es * math.exp((bias - v_p) / te)
    return -i_is * math.exp(-(bias - v_p) / te) + i_es


class HeliconPlasma:
    """A 0-D helicon discharge: set inputs, step model time, read state()."""

    # name -> (default, lo, hi, unit)
    INPUTS: dict[str, tuple[float, float, float, str]] = {
        "rf_drive": (0.0, 0.0, 1.0, "V"),
        "rf_permit": (0.0, 0.0, 1.0, ""),
        "gas_valve": (0.0, 0.0, 1.0, ""),
        "coil_current_cmd": (0.0, 0.0, 600.0, "A"),
        "probe_bias": (0.0, -100.0, 50.0, "V"),
        "door_closed": (1.0, 0.0, 1.0, ""),
        "cooling_flow": (6.0, 0.0, 20.0, "L/min"),
        "trigger": (0.0, 0.0, 1.0, ""),
        "beacon": (0.0, 0.0, 1.0, ""),
        "heartbeat_pin": (0.0, 0.0, 1.0, ""),
    }
    OUTPUTS: dict[str, str] = {
        "rf_forward": "W",
        "rf_reflected": "W",
        "coil_current": "A",
        "b_field": "T",
        "pressure": "Pa",
        "gas_flow": "sccm",
        "density": "m^-3",
        "te": "eV",
        "mode": "",
        "langmuir_current": "A",
        "interferometer_phase": "rad",
    }

    def __init__(self, seed: int | None = 0, *, noise: bool = True):
        self.inputs: dict[str, float] = {name: spec[0] for name, spec in self.INPUTS.items()}
        self.noise = noise
        self._rng = random.Random(seed)
        self.time = 0.0
        self.coil_current = 0.0
        self.pressure = P_BASE
        self.density = 0.0
        self.te = 0.0
        self.mode = OFF
        self._z = {name: 0.0 for name in NOISE}  # this step's noise draws

    # -- inputs -----------------------------------------------------------
    def set_input(self, name: str, value: float) -> None:
        try:
            _, lo, hi, unit = self.INPUTS[name]
        except KeyError:
            raise ValueError(f"unknown plasma input {name!r}; known inputs: "
                             f"{', '.join(self.INPUTS)}") from None
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}] {unit}, "
                             f"got {value!r}") from None
        if not lo <= v <= hi:  # also rejects NaN
            raise ValueError(f"{name} = {v!r} is out of range; allowed [{lo:g}, {hi:g}] {unit}".rstrip())
        self.inputs[name] = v

    # -- derived quantities -------------------------------------------------
    def forward_power(self) -> float:
        if self.inputs["rf_permit"] < 0.5:
            return 0.0
        return P_MAX * self.inputs["rf_drive"] ** 2

    def gas_flow(self) -> float:
        return SCCM_PER_VALVE * self.inputs["gas_valve"]

    def b_field(self) -> float:
        return T_PER_A * self.coil_current

    def _next_mode(self, mode: int, p_fwd: float, p: float, b: float) -> int:
        """At most one transition, up or down, with hysteresis."""
        p_abs = p_fwd * (1.0 - REFLECTED[mode])
        if mode == OFF:
            if p >= P_BREAKDOWN_MIN and p_fwd >= breakdown_power(p):
                return CAPACITIVE
            return OFF
        if p < P_SUSTAIN_MIN:
            return OFF  # the gas is gone: nothing left to ionise, in any mode
        if mode == CAPACITIVE:
            if p_fwd < breakdown_power(p) / HYSTERESIS:
                return OFF
            return INDUCTIVE if p_abs >= eh_power(p) else CAPACITIVE
        if mode == INDUCTIVE:
            if p_abs < eh_power(p) / HYSTERESIS:
                return CAPACITIVE
            return HELICON if p_abs >= hw_power(p, b) else INDUCTIVE
        if p_abs < hw_power(p, b) / HYSTERESIS:
            return INDUCTIVE
        return HELICON

    # -- time ---------------------------------------------------------------
    def step(self, dt: float) -> None:
        """Advance dt seconds of model time in sub-steps of at most 1 ms."""
        dt = float(dt)
        if not dt >= 0 or math.isinf(dt):
            raise ValueError(f"dt must be a finite number of seconds >= 0, got {dt!r}")
        if dt > 0:
            n = max(1, math.ceil(dt / MAX_SUBSTEP - 1e-9))
            h = dt / n
            # exact exponential relaxation per sub-step: stable for any h
            a_coil = 1.0 - math.exp(-h / TAU_COIL)
            a_gas = 1.0 - math.exp(-h / TAU_GAS)
            a_plasma = 1.0 - math.exp(-h / TAU_PLASMA)
            coil_cmd = self.inputs["coil_current_cmd"]
            p_target = P_BASE + PA_PER_SCCM * self.gas_flow()
            p_fwd = self.forward_power()
            coil, p, dens, te, mode = self.coil_current, self.pressure, self.density, self.te, self.mode
            for _ in range(n):
                coil += (coil_cmd - coil) * a_coil
                p += (p_target - p) * a_gas
                b = T_PER_A * coil
                mode = self._next_mode(mode, p_fwd, p, b)
                p_abs = p_fwd * (1.0 - REFLECTED[mode])
                dens += (equilibrium_density(mode, p_abs, p, b) - dens) * a_plasma
                te += (equilibrium_te(mode, p) - te) * a_plasma
            self.coil_current, self.pressure, self.density, self.te, self.mode = coil, p, dens, te, mode
            self.time += dt
        if self.noise:
            gauss = self._rng.gauss
            self._z = {name: gauss(0.0, 1.0) for name in NOISE}

    # -- readout --------------------------------------------------------------
    def state(self) -> dict[str, float]:
        """Every input and output, plus model time, as plain floats."""
        p_fwd = self.forward_power()
        n = self.density
        out = {
            "rf_forward": p_fwd,
            "rf_reflected": p_fwd * REFLECTED[self.mode],
            "coil_current": self.coil_current,
            "b_field": self.b_field(),
            "pressure": self.pressure,
            "gas_flow": self.gas_flow(),
            "density": n,
            "te": self.te,
            "mode": float(self.mode),
            "langmuir_current": probe_current(self.inputs["probe_bias"], n, self.te),
            "interferometer_phase": R_ELECTRON * WAVELENGTH * n * PATH,
        }
        if self.noise:
            for name, (rel, floor) in NOISE.items():
                v = out[name] + self._z[name] * (rel * abs(out[name]) + floor)
                out[name] = max(v, 0.0) if name in NON_NEGATIVE else v
        state = {name: float(v) for name, v in self.inputs.items()}
        state.update({name: float(v) for name, v in out.items()})
        state["time"] = float(self.time)
        return state

    def __repr__(self) -> str:
        return (f"<HeliconPlasma t={self.time:.3f}s mode={self.mode} n={self.density:.3g} m^-3 "
                f"p={self.pressure:.3g} Pa B={self.b_field():.3g} T>")
