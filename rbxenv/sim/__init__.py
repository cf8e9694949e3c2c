from rbxenv.sim import rules
from rbxenv.sim.rules import SimConfig
from rbxenv.sim.world import Sim, StepResult

__all__ = ["Sim", "SimConfig", "StepResult", "rules"]
