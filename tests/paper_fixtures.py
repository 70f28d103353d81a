"""Tiny inputs for the paper experiments' toy runs, each in the format the real one comes in.

- a sentencepiece `tokenizer.model` (trained here on the task's texts, Gemma's special ids);
- a Gemma Flax release checkpoint (`write_gemma_release`): the FLAT orbax tree the releases store
  ('transformer/layer_0/attn/q_einsum': {'w': ...}), bfloat16 on disk, 128 padding rows in the embedding
  as in the Gemma 1 / 2 releases -- of a Gemma-architecture config with toy dimensions;
- MATH in the official layout (`train/<subject>/<n>.json`, `test/...`) plus `math500.jsonl`;
- MBPP as the official `mbpp.jsonl` (the six fields, task_ids in MBPP's split ranges).

A random tiny model almost never writes a correct MATH answer or an MBPP program, and with every reward 0
a policy-gradient objective has no signal: the fine-tuning would leave the params where they are whatever
the wiring. `steered_params` therefore builds weights whose every sublayer is switched off (post-norm
scale -1: Gemma's norm multiplies by 1 + scale) so that the next token depends on the current one only,
logits(v | u) = sqrt(D) <E_v, E_u / |E_u|> (tied embedding E), and E is chosen so that after the prompt's
last token one "answer" piece (a user-defined piece of the tokenizer: a right answer on some prompts, a
wrong one on others) comes with probability about 1/2, followed by end-of-sequence. Rewards then vary
within a prompt, as in a real run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bon_jax.models import abstract_params
from bon_jax.tokenizer import Tokenizer


def train_tokenizer(path, texts, *, symbols=(), vocab_size=512) -> Tokenizer:
    """A sentencepiece model of at most `vocab_size` pieces trained on `texts`, written to `path`."""
    tok = Tokenizer.train(list(texts) * 4, vocab_size, user_defined_symbols=symbols, hard_vocab_limit=False)
    tok.save(path)
    return Tokenizer.load(path)


def steered_params(cfg, *, prompt_end_id=None, answer_id=None, eos_id=1, seed=0) -> dict:
    """Params (numpy float32) of `cfg`: random, every sublayer's output scaled to zero, and with
    `answer_id`, the embedding set so that P(answer | prompt_end) ~ 1/2 and P(eos | answer) ~ 1."""
    rng = np.random.default_rng(seed)

    def leaf(path, a):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if name.endswith(("post_attention_norm/scale", "post_ffw_norm/scale")):
            return np.full(a.shape, -1.0, np.float32)
        if name.endswith("norm/scale"):
            return np.zeros(a.shape, np.float32)
        return (0.3 * rng.standard_normal(a.shape)).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(leaf, abstract_params(cfg))
    if answer_id is None:
        return params
    V, D = params["embedder"]["input_embedding"].shape
    E = np.zeros((V, D), np.float32)
    E[:, 2:] = 0.5 * rng.standard_normal((V, D - 2)) / np.sqrt(D - 2)  # rows of norm ~1/2 off dims 0, 1
    # Context u = prompt_end (row e0): logit sqrt(D) a for the answer, sqrt(D) for prompt_end itself, 0
    # for the other V - 2 (before Gemma 2's soft-cap): a = log(V + e^sqrt(D)) / sqrt(D) gives the answer
    # about one half.
    a = np.log(V + np.exp(np.sqrt(D))) / np.sqrt(D)
    E[prompt_end_id] = 0.0
    E[prompt_end_id, 0] = 1.0
    E[answer_id] = 0.0
    # Context u = answer: logit sqrt(D) 4 * 1.5 / |E_answer| for eos, sqrt(D) |E_answer| for the answer.
    E[answer_id, :2] = (a, 1.5)
    E[eos_id] = 0.0
    E[eos_id, 1] = 4.0
    params["embedder"]["input_embedding"] = E
    return params


def write_gemma_release(path, cfg, params, *, vocab_pad=128) -> None:
    """`params` (our tree) as a Gemma Flax release: the FLAT tree, bfloat16, padded embedding rows."""
    import orbax.checkpoint as ocp

    tree = {}

    def add(prefix, node):
        for k, v in node.items():
            if isinstance(v, dict):
                add(f"{prefix}{k}/", v)
                continue
            module = prefix.rstrip("/")
            module = module.replace("attn/query_norm", "attn/_query_norm").replace(
                "attn/key_norm", "attn/_key_norm"
            )
            v = np.asarray(v, np.float32)
            if module == "embedder" and vocab_pad:
                v = np.concatenate([v, np.zeros((vocab_pad, v.shape[1]), np.float32)])
            tree.setdefault(f"transformer/{module}", {})[k] = jnp.asarray(v, jnp.bfloat16)

    add("", params)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.fspath(path), tree)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def write_math(root: Path, problems) -> Path:
    """MATH's official layout under `root`: problems are (split, subject, n, problem, answer, level);
    the test problems are also MATH-500 (`math500.jsonl`, Lightman et al.'s rows with `unique_id`)."""
    subset = []
    for split, subject, n, problem, answer, level in problems:
        solution = f"Compute: ${problem} = \\boxed{{{answer}}}$."
        row = {
            "problem": f"What is ${problem}$?",
            "level": f"Level {level}",
            "type": subject.title(),
            "solution": solution,
        }
        _write_json(root / split / subject / f"{n}.json", row)
        if split == "test":
            subset.append(
                {
                    "problem": row["problem"],
                    "solution": solution,
                    "answer": answer,
                    "subject": row["type"],
                    "level": level,
                    "unique_id": f"test/{subject}/{n}.json",
                }
            )
    (root / "math500.jsonl").write_text("".join(json.dumps(r) + "\n" for r in subset))
    return root


def write_mbpp(path: Path, rows) -> Path:
    """`mbpp.jsonl`: rows are (task_id, text, code, test_list), in the official file's fields."""
    lines = [
        json.dumps(
            {
                "text": text,
                "code": code.replace("\n", "\r\n"),
                "task_id": tid,
                "test_setup_code": "",
                "test_list": tests,
                "challenge_test_list": [],
            }
        )
        for tid, text, code, tests in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
