"""The whole pipeline in seconds, for tests: a tiny model on a few easy arith problems.

The fine-tuning must move the policy, or the runner tests (resume == uninterrupted, cached reruns) compare
the base policy with itself. With binary rewards a step has a gradient only when some sample is right, so the
base policy must sometimes earn a reward: level-1 `mod` problems (answers in [0, m), m <= 12, about 22
tokens at this vocabulary) and enough supervised steps that the tiny model writes the solution format and a
boxed residue (a guess is right about one time in m). tests/test_experiment.py asserts that the smoke
fine-tuning has non-zero rewards and gradients and ends with params that differ from the base.
"""

from bon_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "smoke"
    c.task.name = "arith"
    c.task.kwargs.num_train = 200
    c.task.kwargs.num_validation = 20
    c.task.kwargs.num_test = 16
    c.task.kwargs.levels = (1,)
    c.task.kwargs.kinds = ("mod",)
    c.tokenizer.vocab_size = 350  # near the largest sentencepiece fits on this corpus: shorter sequences
    c.model.name = "tiny"
    c.model.max_len = 64
    c.sft.steps = 150
    c.sft.batch_size = 16
    c.sft.lr = 1e-2
    c.sft.warmup = 10
    c.verifier.kind = "learned"
    c.verifier.model = "tiny"
    c.verifier.num_prompts = 16
    c.verifier.samples_per_prompt = 4
    c.verifier.steps = 10
    c.verifier.batch_size = 16
    c.verifier.ranking_weight = 1.0  # exercised end to end, as in the default
    c.verifier.corrupted_references = 1
    c.rl.objective = "bon_rl_v"
    c.rl.n = 4
    c.rl.m = 8  # N = 4 of M = 8: five of the eight samples can win a 4-subset and get a weight
    c.rl.steps = 4
    c.rl.batch_size = 4
    c.rl.lr = 1e-3
    c.rl.max_new_tokens = 28
    c.eval.num_prompts = 8
    c.eval.m = 4
    c.eval.ks = (1, 2, 4)
    c.eval.max_new_tokens = 28
    c.eval.bootstrap = 100
    c.checkpoint.every = 10
    c.log_every = 2
    return c


def get_sweep():
    return [{"rl.n": 2}, {"rl.n": 4}]
