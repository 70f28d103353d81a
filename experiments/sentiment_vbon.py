"""Variational BoN (Amini et al.) on the embedded sentiment task: reward vs KL(pi || pi_ref).

A reference LM trained on generated reviews continues 2-8 word prompts; the reward is VADER's positive
score in [0, 1]. The sweep covers vbon and vbon_bound over N (beta = 1/(N-1) implicitly), kl_rl over beta
on the raw reward, and bon_distill_sft; BoN sampling itself is the reference curve (reward of the best of
N reference samples vs its KL bound log N - (N-1)/N).
"""

from bon_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "sentiment_vbon"
    c.task.name = "sentiment"
    c.task.kwargs.num_train = 2000
    c.task.kwargs.num_test = 200
    c.tokenizer.vocab_size = 512
    c.model.name = "small"
    c.model.overrides.embed_dim = 128
    c.model.overrides.head_dim = 32
    c.model.overrides.mlp_dim = 512
    c.model.max_len = 64
    c.sft.steps = 600
    c.sft.batch_size = 64
    c.verifier.kind = "sentiment"
    c.rl.objective = "vbon"
    c.rl.n = 8
    c.rl.m = 8
    # Reference samples per prompt for the CDFs, drawn once per prompt and shared by the sweep's points: 256
    # keeps the bias of log G-hat under 0.1 nats up to N = 16 (min_ref_samples(16) = 187; Amini et al. ~300).
    c.rl.ref_samples = 256
    c.rl.beta = 1.0
    c.rl.steps = 60
    c.rl.batch_size = 8
    c.rl.lr = 3e-4
    c.rl.max_new_tokens = 24
    c.eval.num_prompts = 64
    c.eval.m = 16
    c.eval.ks = (1, 2, 4, 8, 16)
    c.eval.max_new_tokens = 24
    return c


def get_sweep(grid="full"):
    """The full grid (14 points), or `grid="small"`: one point of each method, for a laptop."""
    if grid == "small":
        return [
            {"rl.objective": "vbon", "rl.n": 8},
            {"rl.objective": "vbon_bound", "rl.n": 8},
            {"rl.objective": "kl_rl", "rl.beta": 0.1},
            {"rl.objective": "kl_rl", "rl.beta": 1.0},
            {"rl.objective": "bon_distill_sft", "rl.n": 4, "rl.beta": 0.0},
        ]
    # M = max(N, 8) policy samples per prompt: Best-of-N objectives need at least N of them.
    points = [{"rl.objective": o, "rl.n": n, "rl.m": max(n, 8)} for o in ("vbon", "vbon_bound")
              for n in (2, 4, 8, 16)]
    points += [{"rl.objective": "kl_rl", "rl.beta": b} for b in (0.05, 0.1, 0.3, 1.0)]
    points += [{"rl.objective": "bon_distill_sft", "rl.n": n, "rl.m": max(n, 8), "rl.beta": 0.0} for n in (4, 16)]
    return points
