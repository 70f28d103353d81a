"""Data plumbing: TFDS array_record builders (no TensorFlow), sources, and the grain batch pipeline.

Submodules are imported on use (`bon_jax.data.pipeline`, `bon_jax.data.sources`,
`bon_jax.data.tfds_builders`), so importing a task does not import TFDS.
"""
