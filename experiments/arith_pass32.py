"""pass@N-aware RL on arith (Chow et al. Lemma 3 / Corollary 4, and the unbiased pkpo).

The default point is BoN-RLBP (positives only, exact weights); the sweep runs BoN-RL-S, BoN-RLB (corrected
sign), BoN-RLBP and pkpo, all selecting by the ground truth (s = R), evaluated by pass@k.
"""

from experiments import arith_bo32


def get_config():
    c = arith_bo32.get_config()
    c.name = "arith_pass32"
    c.rl.value_baseline = False  # arith_bo32's learned value baseline is BoN-RL-V's; this objective takes none
    c.verifier.kind = "oracle"
    c.rl.objective = "bon_rlbp"
    return c


def get_sweep():
    return [{"rl.objective": o} for o in ("bon_rl_s", "bon_rlb", "bon_rlbp", "pkpo")]
