"""Training-time simulation of parameter responses (the method page's
"Simulation"): settings, curvature products, the step-by-step propagation
(the reference) and its closed-form spectral evaluation. Free of the
worker's job logic, the service and any I/O."""

from .iterates import IterateRecorder, iterate_steps
from .propagate import Responses, Simulator, StepCheckpoint
from .settings import MethodConfig

__all__ = ["IterateRecorder", "MethodConfig", "Responses", "Simulator", "StepCheckpoint", "iterate_steps"]
