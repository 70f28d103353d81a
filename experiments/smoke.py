"""The whole pipeline in seconds, for tests: a tiny model on a few easy arith problems."""

from bon_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "smoke"
    c.task.name = "arith"
    c.task.kwargs.num_train = 200
    c.task.kwargs.num_validation = 20
    c.task.kwargs.num_test = 16
    c.task.kwargs.levels = (1,)
    c.task.kwargs.kinds = ("expr",)
    c.tokenizer.vocab_size = 300
    c.model.name = "tiny"
    c.model.max_len = 64
    c.sft.steps = 20
    c.sft.batch_size = 16
    c.sft.warmup = 2
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
    c.rl.m = 4
    c.rl.steps = 4
    c.rl.batch_size = 2
    c.rl.max_new_tokens = 24
    c.eval.num_prompts = 8
    c.eval.m = 4
    c.eval.ks = (1, 2, 4)
    c.eval.max_new_tokens = 24
    c.eval.bootstrap = 100
    c.checkpoint.every = 10
    c.log_every = 2
    return c


def get_sweep():
    return [{"rl.n": 2}, {"rl.n": 4}]
