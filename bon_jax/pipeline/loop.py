"""The training loop of every stage, `bon_jax.train.loop` (the verifier's training uses it too, and sits
below the pipeline), re-exported under its former name."""

from bon_jax.train.loop import LoopConfig, Preempted, run_loop

__all__ = ["LoopConfig", "Preempted", "run_loop"]
