"""Reference twins of the JAX simulator (plain Python, float64): request-level batching
(:mod:`.simulator`) and continuous batching (:mod:`.continuous`)."""
from bes_jax.reference.continuous import ContinuousReferenceSimulator, ContinuousResult  # noqa: F401
from bes_jax.reference.simulator import ReferenceSimulator, ReferenceResult  # noqa: F401
