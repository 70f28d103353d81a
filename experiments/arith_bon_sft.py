"""BoN-aware imitation learning (Chow et al. Lemma 1, Algorithm 1) against plain SFT, on arith.

Both continue from the same base policy on the reference solutions; BoN-SFT also samples N' = 8 completions
per prompt to estimate the twisted-BoN correction (learned verifier scores).
"""

from experiments import arith_bo32


def get_config():
    c = arith_bo32.get_config()
    c.name = "arith_bon_sft"
    c.rl.value_baseline = False  # arith_bo32's learned value baseline is BoN-RL-V's; this objective takes none
    c.rl.objective = "bon_sft"
    c.rl.n = 8
    c.rl.m = 8
    return c


def get_sweep():
    return [{"rl.objective": "bon_sft"}, {"rl.objective": "sft"}]
