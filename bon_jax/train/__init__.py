"""Training: jitted sharded steps, checkpoints, preemption handling."""
