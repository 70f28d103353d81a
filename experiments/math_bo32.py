"""Chow et al.'s MATH setting: Gemma 2 2B, BoN-RL-V with N' = 32, their Table 2 hyper-parameters.

Needs local files (nothing is downloaded): a Gemma 2 2B checkpoint and its tokenizer, and the MATH data.
    make train EXP=math_bo32 CKPT=/path/to/gemma2-2b DATA=/path/to/MATH TOKENIZER=/path/to/tokenizer.model
On a TPU VM, install the TPU build of JAX first (`pip install -e ".[tpu]"`).
"""

from bon_jax.config import base_config

GEMMA = (
    "Download the Gemma 2 2B Flax checkpoint (Kaggle: google/gemma-2, variant 'gemma2-2b', Flax; or Hugging Face "
    "google/gemma-2-2b, safetensors) on a machine with internet access, accept the Gemma terms, copy it here and "
    "pass CKPT=<dir>."
)
TOKENIZER = "The Gemma tokenizer.model shipped with the same checkpoint; pass TOKENIZER=<file>."
MATH = (
    "The MATH dataset (Hendrycks et al.): the official MATH/ folder with train/ and test/, or train.jsonl and "
    "test.jsonl; pass DATA=<dir>. For MATH500 put math500.jsonl (Lightman et al.) in the same directory."
)


def get_config():
    c = base_config()
    c.name = "math_bo32"
    c.requires = (("model.checkpoint", GEMMA), ("tokenizer.path", TOKENIZER), ("task.data_dir", MATH))
    c.task.name = "math"
    c.task.kwargs.subset = "math500"
    c.model.name = "gemma2_2b"
    c.model.dtype = "bfloat16"
    c.model.max_len = 1536
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.verifier.kind = "learned"
    c.verifier.model = "gemma2_2b"
    c.verifier.lr = 1e-5  # not given by Chow et al.; a usual full fine-tuning rate for a 2B model
    c.rl.objective = "bon_rl_v"
    c.rl.n = 32
    c.rl.m = 32
    c.rl.steps = 2500
    c.rl.batch_size = 32
    c.rl.lr = 3e-6
    c.rl.warmup = 100
    c.rl.temperature = 1.0
    c.rl.max_new_tokens = 1024
    c.rl.anchor_ema = 0.01
    c.rl.anchor_kl_start = 1.0
    c.rl.anchor_kl_end = 0.075
    c.rl.anchor_kl_delay = 10
    # Chow et al. App. B: a value model (the policy backbone with a scalar head) as BoN-RL-V's baseline, lr 1e-5.
    c.rl.value_baseline = True
    c.rl.value_lr = 1e-5
    c.sft.steps = 0
    c.eval.num_prompts = 500
    c.eval.m = 32
    c.eval.max_new_tokens = 1024
    return c
