"""``python -m dalle_fast.plan``: the memory per GPU of a preset's dalle stage (:mod:`.cli`), counted
on the ``meta`` device: parameters, gradients and AdamW states (:mod:`.memory`) and the activations
autograd saves, measured (:mod:`.saved`)."""
from .memory import MemoryPlan, Row, markdown, plan_memory
from .saved import ActivationProfile, measure_activations

__all__ = ["ActivationProfile", "MemoryPlan", "Row", "markdown", "measure_activations", "plan_memory"]
