"""Experiment configs: the base schema every experiment extends, and validation before any compute.

An experiment is `experiments/<name>.py` with `get_config()` returning `base_config()` updated with its
own values (and optionally `get_sweep()` returning a list of override dicts). The base schema is the single
list of keys that exist: a key an experiment or a command-line override adds that is not in it is a typo,
and `validate` refuses it with the closest known key. Values are checked for range and consistency, and
paths that a stage needs are checked to exist, all before a single array is allocated.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from ml_collections import ConfigDict

from bon_jax import objectives
from bon_jax.errors import ConfigError
from bon_jax.models.config import get_config as get_model_config
from bon_jax.objectives import variational
from bon_jax.tasks.base import Task
from bon_jax.tasks.registry import get_task_class, task_names
from bon_jax.verifiers.learned import POOLINGS, READS_SURPRISAL
from bon_jax.verifiers.steps import AGGREGATES
from bon_jax.verifiers.train import RANKINGS

# Stages of the pipeline, in order; each caches its output under <workdir>/<stage>-<hash of its config>.
STAGES = ("tokenizer", "base_policy", "verifier", "finetune", "eval", "report")


# Sections whose keys are free-form (a task's arguments, an objective's options, ModelConfig fields): not
# in the schema, checked by whatever reads them.
FREE_FORM_SECTIONS = ("kwargs", "options", "overrides", "model_overrides")

# What `rl.dynamic_sampling`'s extra rounds look for (bon_jax/pipeline/dynamic_sampling.py).
DYNAMIC_SAMPLING_TARGETS = ("mixed_rewards", "verifier_misses")


def base_config() -> ConfigDict:
    """Every key an experiment may set, with the defaults of the embedded arith experiment."""
    c = ConfigDict()
    c.name = "experiment"
    c.seed = 0
    c.workdir = ""  # default: runs/<name>
    c.stages = STAGES
    c.log_every = 10
    c.requires = ()  # ((key, how to obtain it), ...): paths this experiment cannot run without

    c.task = ConfigDict()
    c.task.name = "arith"
    c.task.kwargs = ConfigDict()  # passed to the task constructor
    c.task.data_dir = ""  # local data (MATH, MBPP, IMDB); required by the real tasks

    c.tokenizer = ConfigDict()
    c.tokenizer.path = ""  # an existing sentencepiece .model; empty: train one on the task corpus
    c.tokenizer.vocab_size = 512
    c.tokenizer.model_type = "bpe"
    c.tokenizer.max_corpus_texts = 20000

    c.model = ConfigDict()
    c.model.name = "small"  # a named config of bon_jax.models
    c.model.checkpoint = ""  # pretrained weights; empty: train the base policy from scratch
    c.model.checkpoint_format = "auto"  # auto | orbax | gemma_flax | safetensors | gguf
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (master weights stay float32)
    c.model.max_len = 256  # prompt + completion tokens
    c.model.overrides = ConfigDict()  # ModelConfig fields to change, e.g. num_layers=2

    c.mesh = ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1

    c.sft = ConfigDict()  # supervised training of the base policy on reference solutions
    c.sft.steps = 1500
    c.sft.batch_size = 64
    c.sft.lr = 3e-3
    c.sft.warmup = 100
    c.sft.weight_decay = 0.01

    c.verifier = ConfigDict()
    c.verifier.kind = "learned"  # learned | oracle | sentiment
    # The verifier's backbone. The same name as `model.name` (and no overrides, no backbone SFT): the base
    # policy's own model and weights, as Chow et al. do. Another name: that model (with `model_overrides`),
    # trained from scratch by the verifier's loss, or first by SFT (`backbone_sft_steps`).
    c.verifier.model = "tiny"
    c.verifier.model_overrides = ConfigDict()  # ModelConfig fields of the verifier's own backbone
    # > 0: the backbone is a language model of its own, `verifier.model` with `verifier.model_overrides`
    # trained by SFT on the task's reference solutions for this many steps (the `sft` section's batch, lr and
    # schedule), e.g. one larger than the policy; 0: no such pre-training.
    c.verifier.backbone_sft_steps = 0
    c.verifier.num_prompts = 512
    c.verifier.samples_per_prompt = 8
    c.verifier.steps = 600  # 0: no training, the backbone's own likelihood (zero_init_head, a likelihood pooling)
    c.verifier.batch_size = 64
    c.verifier.lr = 1e-3
    c.verifier.temperature = 1.0
    c.verifier.class_weight = "balanced"  # balanced | none: weight of correct vs incorrect samples in the BCE
    # Also train on each training prompt's reference solution as a correct example (tasks with references):
    # positives for free where the policy rarely samples a correct one. Held-out AUC stays on samples only.
    c.verifier.reference_positives = False
    # lambda of the within-prompt Bradley-Terry ranking term added to the BCE (bon_jax.verifiers.train);
    # 0 = Chow et al.'s plain BCE.
    c.verifier.ranking_weight = 0.0
    # Its kind: 'pairwise' (Bradley-Terry over a prompt's (correct, incorrect) pairs) or 'listwise' (-log of
    # the softmax mass of a prompt's correct completions: the top-scored incorrect ones weigh most).
    c.verifier.ranking = "pairwise"
    # Per training prompt, this many corruptions of its reference (e.g. one slipped step carried through to
    # the answer) as incorrect examples, with the reference as a correct one: hard negatives that differ from
    # a correct solution only in its arithmetic. Tasks with a `corrupt(reference, rng)` method (arith).
    c.verifier.corrupted_references = 0
    # Which corruptions make them, drawn equally often (the task's `CORRUPTION_KINDS`; arith: answer | step |
    # propagate | carry, bon_jax.tasks.arith.corrupt_solution).
    c.verifier.corruption_kinds = ("answer", "propagate")
    # This many further training prompts (after the num_prompts sampled ones) add only their reference as a
    # correct example and its `corrupted_references` corruptions as incorrect ones: no sampling cost.
    c.verifier.reference_only_prompts = 0
    # How the head's per-token values become one logit (bon_jax.verifiers.learned): 'last' (Chow et al.,
    # the last token's value), 'noisy_or' (per-token error hazards, correct when no token is an error) or
    # 'noisy_or_surprisal' (the same, each hazard starting from the token's surprisal under the backbone) or
    # 'likelihood' (the completion's log-likelihood under the backbone, corrected per token by the head).
    c.verifier.pooling = "last"
    # Start the value head at zero (a fresh head's random per-token values otherwise add noise to the
    # likelihood poolings' starting point).
    c.verifier.zero_init_head = False
    # 'process' pooling only (bon_jax.verifiers.steps): how the step probabilities make the score, 'product'
    # (every step right) or 'min' (the weakest step), and the weight of the outcome term at the last token.
    c.verifier.process_aggregate = "product"
    c.verifier.process_outcome_weight = 1.0

    c.rl = ConfigDict()  # Best-of-N-aware fine-tuning
    c.rl.objective = "bon_rl_v"
    c.rl.n = 32  # N' of Best-of-N the policy is tuned for
    c.rl.m = 32  # samples drawn per prompt per step (M >= N)
    c.rl.steps = 200
    c.rl.batch_size = 16  # prompts per step
    c.rl.grad_accum = 1
    c.rl.lr = 1e-4
    c.rl.warmup = 10
    c.rl.weight_decay = 0.0
    c.rl.max_grad_norm = 1.0
    c.rl.beta = 0.0  # KL coefficient to the reference (kl_rl, vbon ignore it where fixed)
    c.rl.temperature = 1.0
    c.rl.top_k = 0
    c.rl.top_p = 1.0
    c.rl.max_new_tokens = 96
    # Dynamic sampling: up to this many extra rounds per step of drawing the next B prompts when fewer than
    # B of those drawn have M rewards that are not all equal (an all-right or all-wrong group carries no
    # signal; docs/objectives.md, "Dynamic sampling"). The batch keeps B prompts, informative ones first.
    # 0: off (each step trains on the next B prompts as drawn).
    c.rl.dynamic_sampling = 0
    # Which prompts those rounds look for: "mixed_rewards" (rewards not all equal), or, for objectives that
    # pick their winner by the verifier's score, "verifier_misses" first (the verifier's top-scored sample
    # is worse than the prompt's best), then the other informative prompts (pipeline/dynamic_sampling.py).
    c.rl.dynamic_sampling_target = "mixed_rewards"
    # With "verifier_misses": the most of the batch the misses take (the rest: other informative prompts).
    # Not all of it: at N = M, bon_rl_v weighs a miss by -b(x), and a value baseline fitted on misses alone
    # falls to 0 (pipeline/dynamic_sampling.py).
    c.rl.dynamic_sampling_miss_share = 0.5
    # K samples of pi_ref per training prompt for the reward CDFs of vbon / vbon_bound / bond, drawn once per
    # prompt and cached; at least `objectives.variational.min_ref_samples(rl.n)` (checked); 0: not needed.
    c.rl.ref_samples = 0
    # A learned value baseline b(x) for the objectives that take one (bon_rl_v, bon_rl_s; Chow et al. App. B):
    # the policy backbone with a scalar head, regressed on each prompt's BoN reward at its own lr.
    c.rl.value_baseline = False
    c.rl.value_lr = 1e-5
    c.rl.anchor_ema = 0.0  # Chow's EMA anchor rate (0.01 in the paper); 0: no anchor
    c.rl.anchor_kl_start = 1.0
    c.rl.anchor_kl_end = 0.075
    c.rl.anchor_kl_delay = 10
    c.rl.max_bad_steps = 5  # consecutive non-finite steps before the run stops
    c.rl.options = ConfigDict()  # keyword options of the objective

    c.eval = ConfigDict()
    c.eval.num_prompts = 128
    c.eval.m = 32
    c.eval.ks = (1, 2, 4, 8, 16, 32)
    c.eval.temperature = 1.0
    c.eval.max_new_tokens = 96
    c.eval.bootstrap = 1000
    c.eval.split = "test"
    # The task evaluated on (its `split`); name "" = the training task `task` itself. Chow et al. train on
    # MBPP and report HumanEval pass@k: task.name = "mbpp", eval.task.name = "humaneval".
    c.eval.task = ConfigDict()
    c.eval.task.name = ""
    c.eval.task.kwargs = ConfigDict()
    c.eval.task.data_dir = ""

    c.checkpoint = ConfigDict()
    c.checkpoint.every = 50
    c.checkpoint.keep = 3
    return c


def load_experiment(name_or_path: str) -> Any:
    """Imports `experiments/<name>.py` (or a path) as a module; error names the file if it is missing."""
    path = name_or_path
    if not path.endswith(".py"):
        here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
        path = os.path.join(here, f"{name_or_path}.py")
    if not os.path.isfile(path):
        known = (
            sorted(
                f[:-3]
                for f in os.listdir(os.path.dirname(path) or ".")
                if f.endswith(".py") and not f.startswith("_")
            )
            if os.path.isdir(os.path.dirname(path) or ".")
            else []
        )
        raise ConfigError("experiment", f"no experiment file {path}; known experiments: {known}")
    spec = importlib.util.spec_from_file_location(f"bon_jax_experiment_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError("experiment", f"{path} defines no get_config()")
    return module


def check_known_keys(config: ConfigDict, schema: ConfigDict | None = None, prefix: str = "") -> None:
    """Refuses keys that the base schema does not have (free-form `kwargs`/`options` excepted)."""
    schema = base_config() if schema is None else schema
    for key in config.keys():
        full = f"{prefix}{key}"
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema.keys()), n=1, cutoff=0.5) or [
                k for k in schema.keys() if key.startswith(k) or k.startswith(key)
            ]
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(full, f"unknown key.{hint} Known keys here: {sorted(schema.keys())}")
        if key in FREE_FORM_SECTIONS:
            continue
        if isinstance(schema[key], ConfigDict):
            if not isinstance(config[key], ConfigDict):
                raise ConfigError(full, f"must be a section (ConfigDict), got {type(config[key]).__name__}")
            check_known_keys(config[key], schema[key], prefix=f"{full}.")


Rule = Callable[[ConfigDict], None]


def _require(cond: bool, key: str, message: str):
    if not cond:
        raise ConfigError(key, message)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_numbers(c: ConfigDict) -> None:
    """Seeds, learning rates, temperatures, clipping, warmup and bootstrap: finite and in range.

    NaN fails every comparison, so each rule is written as what must hold (`x > 0`), never as what must not.
    """
    _require(
        isinstance(c.seed, int) and not isinstance(c.seed, bool) and c.seed >= 0,
        "seed",
        f"must be an integer >= 0 (it seeds jax.random and the data order), got {c.seed!r}",
    )
    for key in ("sft.lr", "verifier.lr", "rl.lr"):
        value = _lookup(c, key)
        _require(
            _is_number(value) and value > 0,
            key,
            f"learning rate must be > 0 and finite, got {value!r} (to skip the stage, set its steps to 0)",
        )
    for key in ("rl.temperature", "eval.temperature", "verifier.temperature"):
        value = _lookup(c, key)
        _require(
            _is_number(value) and value > 0,
            key,
            f"sampling temperature must be > 0 and finite (a small value for near-greedy), got {value!r}",
        )
    _require(
        _is_number(c.rl.max_grad_norm) and c.rl.max_grad_norm >= 0,
        "rl.max_grad_norm",
        f"must be >= 0 and finite (0 turns clipping off), got {c.rl.max_grad_norm!r}",
    )
    for key in ("sft.warmup", "rl.warmup"):
        value = _lookup(c, key)
        _require(
            isinstance(value, int) and value >= 0,
            key,
            f"warmup steps must be an integer >= 0 (0: no warmup), got {value!r}",
        )
    for key in ("sft.weight_decay", "rl.weight_decay"):
        value = _lookup(c, key)
        _require(_is_number(value) and value >= 0, key, f"must be >= 0 and finite, got {value!r}")
    _require(
        isinstance(c.eval.bootstrap, int) and c.eval.bootstrap >= 2,
        "eval.bootstrap",
        f"number of bootstrap resamples for the confidence intervals must be >= 2 (1000 is usual), got "
        f"{c.eval.bootstrap!r}",
    )


def check_values(c: ConfigDict) -> None:
    """Range and consistency checks that need no imports of heavy modules."""
    _require(bool(c.name), "name", "must be a non-empty string")
    check_numbers(c)
    for key in ("sft.steps", "verifier.steps", "rl.steps"):
        section, field = key.split(".")
        _require(c[section][field] >= 0, key, "must be >= 0")
    for key in (
        "sft.batch_size",
        "verifier.batch_size",
        "rl.batch_size",
        "rl.grad_accum",
        "eval.num_prompts",
        "eval.m",
        "rl.n",
        "rl.m",
    ):
        section, field = key.split(".")
        _require(c[section][field] >= 1, key, "must be >= 1")
    _require(
        c.rl.m >= c.rl.n,
        "rl.m",
        f"samples per prompt m={c.rl.m} must be >= n={c.rl.n} (Best-of-N needs N draws)",
    )
    _require(
        c.rl.batch_size % c.rl.grad_accum == 0,
        "rl.grad_accum",
        f"must divide rl.batch_size={c.rl.batch_size}",
    )
    _require(c.rl.temperature > 0, "rl.temperature", "must be > 0 (use a small value for near-greedy)")
    _require(0 < c.rl.top_p <= 1, "rl.top_p", "must be in (0, 1]")
    _require(c.rl.top_k >= 0, "rl.top_k", "must be >= 0 (0 disables top-k)")
    _require(c.rl.beta >= 0, "rl.beta", "KL coefficient must be >= 0")
    _require(0 <= c.rl.anchor_ema < 1, "rl.anchor_ema", "EMA rate must be in [0, 1)")
    ds = c.rl.dynamic_sampling
    _require(
        isinstance(ds, int) and not isinstance(ds, bool) and ds >= 0,
        "rl.dynamic_sampling",
        f"extra draw rounds per step must be an integer >= 0 (0: off), got {ds!r}",
    )
    _require(
        ds == 0 or c.rl.m >= 2,
        "rl.dynamic_sampling",
        f"needs rl.m >= 2 samples per prompt (got {c.rl.m}): one sample's rewards are always all equal, so "
        "no prompt would count as informative",
    )
    _require(
        c.rl.dynamic_sampling_target in DYNAMIC_SAMPLING_TARGETS,
        "rl.dynamic_sampling_target",
        f"must be {' or '.join(map(repr, DYNAMIC_SAMPLING_TARGETS))}, got {c.rl.dynamic_sampling_target!r}",
    )
    share = c.rl.dynamic_sampling_miss_share
    _require(
        isinstance(share, (int, float)) and not isinstance(share, bool) and 0 < share <= 1,
        "rl.dynamic_sampling_miss_share",
        f"must be a fraction of the batch in (0, 1], got {share!r}",
    )
    check_objective_needs(c)
    _require(c.rl.max_new_tokens >= 1, "rl.max_new_tokens", "must be >= 1")
    _require(
        c.rl.max_new_tokens < c.model.max_len,
        "rl.max_new_tokens",
        f"must be < model.max_len={c.model.max_len} to leave room for the prompt",
    )
    _require(c.model.dtype in ("float32", "bfloat16"), "model.dtype", "must be 'float32' or 'bfloat16'")
    _require(
        c.model.checkpoint_format in ("auto", "orbax", "gemma_flax", "safetensors", "gguf"),
        "model.checkpoint_format",
        "must be one of auto | orbax | gemma_flax | safetensors | gguf",
    )
    _require(
        c.verifier.kind in ("learned", "oracle", "sentiment"),
        "verifier.kind",
        "must be one of learned | oracle | sentiment",
    )
    _require(c.verifier.class_weight in ("balanced", "none"), "verifier.class_weight", "must be balanced | none")
    _require(
        c.verifier.corrupted_references >= 0,
        "verifier.corrupted_references",
        f"must be >= 0, got {c.verifier.corrupted_references}",
    )
    if c.verifier.corrupted_references and c.verifier.kind == "learned":
        _require(
            hasattr(get_task_class(c.task.name), "corrupt"),
            "verifier.corrupted_references",
            f"task {c.task.name!r} cannot corrupt its references (no `corrupt` method); set it to 0",
        )
        known = getattr(get_task_class(c.task.name), "CORRUPTION_KINDS", ())
        kinds = tuple(c.verifier.corruption_kinds)
        _require(
            bool(kinds) and set(kinds) <= set(known),
            "verifier.corruption_kinds",
            f"must be a non-empty tuple of {' | '.join(known) or '(none: the task cannot corrupt)'}, got {kinds!r}",
        )
    _require(
        c.verifier.reference_only_prompts >= 0,
        "verifier.reference_only_prompts",
        f"must be >= 0, got {c.verifier.reference_only_prompts}",
    )
    _require(
        not c.verifier.reference_only_prompts or c.verifier.corrupted_references > 0,
        "verifier.reference_only_prompts",
        "adds references and their corruptions: set verifier.corrupted_references > 0 too (with none, the "
        "extra prompts would add correct examples only)",
    )
    _require(
        c.verifier.pooling in POOLINGS,
        "verifier.pooling",
        f"must be {' | '.join(POOLINGS)}, got {c.verifier.pooling!r}",
    )
    _require(
        c.verifier.process_aggregate in AGGREGATES,
        "verifier.process_aggregate",
        f"must be {' | '.join(AGGREGATES)}, got {c.verifier.process_aggregate!r}",
    )
    _require(
        c.verifier.process_outcome_weight >= 0,
        "verifier.process_outcome_weight",
        f"must be >= 0, got {c.verifier.process_outcome_weight}",
    )
    if c.verifier.pooling == "process" and c.verifier.kind == "learned":
        _require(
            get_task_class(c.task.name).line_labels is not Task.line_labels,
            "verifier.pooling",
            f"'process' trains on a step oracle, and task {c.task.name!r} has none (no `line_labels`)",
        )
    _require(
        c.verifier.ranking_weight >= 0,
        "verifier.ranking_weight",
        f"must be >= 0 (0 = plain BCE), got {c.verifier.ranking_weight}",
    )
    _require(
        c.verifier.ranking in RANKINGS,
        "verifier.ranking",
        f"must be {' | '.join(RANKINGS)}, got {c.verifier.ranking!r}",
    )
    check_verifier_backbone(c)
    _require(
        c.verifier.steps > 0 or c.verifier.kind != "learned" or (
            c.verifier.zero_init_head and c.verifier.pooling in READS_SURPRISAL),
        "verifier.steps",
        "0 (no training) scores by the backbone's own likelihood: set verifier.zero_init_head=True and "
        f"verifier.pooling to one of {' | '.join(READS_SURPRISAL)} (else the scores are an untrained head's)",
    )
    _require(c.tokenizer.vocab_size >= 64, "tokenizer.vocab_size", "must be >= 64")
    _require(
        all(1 <= k <= c.eval.m for k in c.eval.ks),
        "eval.ks",
        f"every k must be in [1, eval.m={c.eval.m}]; got {tuple(c.eval.ks)}",
    )
    unknown_stages = set(c.stages) - set(STAGES)
    _require(not unknown_stages, "stages", f"unknown stages {sorted(unknown_stages)}; known: {STAGES}")
    _require(c.checkpoint.every >= 1 and c.checkpoint.keep >= 1, "checkpoint", "every and keep must be >= 1")


def check_verifier_backbone(c: ConfigDict) -> None:
    """The learned verifier's backbone (`verifier.model`, `.model_overrides`, `.backbone_sft_steps`)."""
    v = c.verifier
    steps = v.backbone_sft_steps
    _require(
        isinstance(steps, int) and steps >= 0, "verifier.backbone_sft_steps", f"must be an integer >= 0, got {steps!r}"
    )
    if v.kind != "learned":
        return
    try:
        get_model_config(v.model, **v.model_overrides.to_dict())
    except ConfigError as e:  # keyed model.name or model.<field>: name the verifier's key instead
        key = "verifier.model" if e.key == "model.name" else f"verifier.model_overrides.{e.key.partition('.')[2]}"
        raise ConfigError(key, e.message) from None
    _require(
        steps > 0 or v.model != c.model.name or not v.model_overrides.to_dict(),
        "verifier.model_overrides",
        f"a verifier named like the policy ({v.model!r}) starts from the base policy's own weights and "
        "architecture; its overrides would not apply. Set verifier.backbone_sft_steps > 0 to give it a "
        "backbone of its own",
    )
    _require(
        not steps or not c.model.checkpoint,
        "verifier.backbone_sft_steps",
        "pre-trains a backbone from scratch on the task's references, as the base policy is trained; with a "
        "pretrained model.checkpoint set it to 0",
    )


def check_objective_needs(c: ConfigDict) -> None:
    """What the objective's registration (`objectives.spec`) declares it needs, against the rl section."""
    try:
        spec = objectives.spec(c.rl.objective)
    except KeyError as e:
        raise ConfigError("rl.objective", e.args[0]) from None
    name = spec.name
    _require(
        c.rl.m >= spec.min_samples,
        "rl.m",
        f"{name} needs rl.m >= {spec.min_samples} samples per prompt (its baseline is the group's own "
        f"mean), got {c.rl.m}",
    )
    check = getattr(objectives.get(name), "check_options", None)  # objectives that check their options
    if check is not None:
        try:
            check(**c.rl.options.to_dict())
        except (TypeError, ValueError) as e:
            raise ConfigError("rl.options", str(e)) from None
    if not spec.kl_terms:  # its samples come from pi_ref: a KL term on them would not be a KL of pi
        for key in ("beta", "anchor_ema"):
            _require(c.rl[key] == 0, f"rl.{key}", f"must be 0 for {name} (its samples are the reference's)")
    if spec.reference_samples:
        k, k_min = c.rl.ref_samples, variational.min_ref_samples(c.rl.n)
        bias = f"{variational.log_g_bias(k, c.rl.n):.2f} nats" if k >= 1 else "no CDF at all"
        _require(
            k >= k_min,
            "rl.ref_samples",
            f"{name} estimates the reward CDFs under pi_ref from K = rl.ref_samples reference samples per "
            f"prompt; K = {k} biases log G-hat by {bias} at N = {c.rl.n} (mean over pi_ref; lowest ranks far "
            f"more). Set rl.ref_samples >= {k_min} (bias <= {variational.MAX_LOG_G_BIAS} nats; Amini et al. "
            "use ~300). They are drawn once per prompt and cached, shared by the sweep points.",
        )
    _require(
        not c.rl.value_baseline or spec.value_baseline,
        "rl.value_baseline",
        f"{name} takes no value baseline (objectives that do: "
        f"{', '.join(n for n in objectives.names() if objectives.spec(n).value_baseline)}); set it to False",
    )
    _require(c.rl.value_lr > 0, "rl.value_lr", f"must be > 0, got {c.rl.value_lr}")
    if c.rl.dynamic_sampling_target == "verifier_misses":
        _require(
            spec.selection(c.rl.options.to_dict()) == "score",
            "rl.dynamic_sampling_target",
            f"'verifier_misses' needs an objective that picks its Best-of-N winner by the verifier's score; "
            f"{name} with these options does not (use 'mixed_rewards')",
        )
        _require(
            c.rl.dynamic_sampling >= 1,
            "rl.dynamic_sampling_target",
            "'verifier_misses' chooses among the prompts of extra draw rounds: set rl.dynamic_sampling >= 1",
        )


PATH_KEYS = {
    "tokenizer.path": "a sentencepiece .model file (or a .gguf, whose vocabulary is used)",
    "model.checkpoint": "a model checkpoint (orbax directory, Gemma release, .safetensors or .gguf)",
    "task.data_dir": "the task's local data",
    "eval.task.data_dir": "the evaluation task's local data",
}


def _lookup(c: ConfigDict, key: str):
    for part in key.split("."):
        c = c[part]
    return c


def check_paths(c: ConfigDict) -> None:
    """Paths the config names must exist, and the ones the experiment `requires` must be given.

    Every problem is collected first, so a user who must provide a checkpoint and a data set learns both
    from one run; each line says what the path should hold and how to obtain it.
    """
    required = dict(c.requires)
    problems = []
    for key in sorted(set(PATH_KEYS) | set(required)):
        path = _lookup(c, key)
        how = f" {required[key]}" if key in required else ""
        what = PATH_KEYS.get(key, "a local file or directory")
        if not path and key in required:
            problems.append(f"config.{key} is not set; it must hold {what}.{how}")
        elif path and not os.path.exists(os.path.expanduser(path)):
            problems.append(f"config.{key} = {path!r} does not exist; it must hold {what}.{how}")
    if problems:
        keys = ", ".join(p.split(" ")[0].removeprefix("config.") for p in problems)
        raise ConfigError(keys, "missing paths (nothing was computed):\n  " + "\n  ".join(problems))


def task_arguments(section: ConfigDict) -> dict:
    """The constructor arguments of the task a `task` / `eval.task` section names: kwargs + data_dir."""
    kwargs = dict(section.kwargs.to_dict())
    if section.data_dir:
        kwargs.setdefault("data_dir", section.data_dir)
    return kwargs


def check_tasks(c: ConfigDict) -> None:
    """The training and evaluation tasks exist, take the arguments given, and have the splits used.

    Imports the task modules (no data is read): a missing optional dependency is reported here too.
    """
    sections = [("task", c.task)] + ([("eval.task", c.eval.task)] if c.eval.task.name else [])
    classes = {}
    for prefix, section in sections:
        _require(
            section.name in task_names(),
            f"{prefix}.name",
            f"unknown task {section.name!r}; registered: {', '.join(task_names())}",
        )
        try:
            cls = get_task_class(section.name)
        except ImportError as e:
            raise ConfigError(f"{prefix}.name", f"task {section.name!r} cannot be imported: {e}") from e
        params = inspect.signature(cls).parameters
        args = task_arguments(section)
        if "data_dir" in args and "data_dir" not in params:
            raise ConfigError(
                f"{prefix}.data_dir",
                f"task {section.name!r} reads no local data; leave {prefix}.data_dir empty",
            )
        needs_data = "data_dir" in params and params["data_dir"].default is inspect.Parameter.empty
        if needs_data and "data_dir" not in args:
            raise ConfigError(
                f"{prefix}.data_dir", f"is not set; task {section.name!r} reads its local data from it"
            )
        try:
            inspect.signature(cls).bind(**args)
        except TypeError as e:
            takes = sorted(p for p in params if p != "data_dir")
            raise ConfigError(f"{prefix}.kwargs", f"task {section.name!r}: {e}; it takes {takes}") from e
        classes[prefix] = cls
    training, evaluated = classes["task"], classes.get("eval.task", classes["task"])
    eval_name = c.eval.task.name or c.task.name
    if "eval" in c.stages:
        _require(
            c.eval.split in evaluated.splits,
            "eval.split",
            f"task {eval_name!r} has splits {evaluated.splits}, not {c.eval.split!r}",
        )
    if "finetune" in c.stages and c.rl.steps > 0:
        _require(
            "train" in training.splits,
            "task.name",
            f"task {c.task.name!r} has no train split to fine-tune on (splits {training.splits}); train on "
            "another task and evaluate on this one with eval.task.name",
        )


def validate(config: ConfigDict, extra_rules: tuple[Rule, ...] = ()) -> ConfigDict:
    """Runs every check; returns the config unchanged, or raises `ConfigError` naming the key and fix."""
    check_known_keys(config)
    check_values(config)
    check_paths(config)
    check_tasks(config)
    for rule in extra_rules:
        rule(config)
    return config


def overrides_to_dict(config: ConfigDict) -> Mapping[str, Any]:
    """The config as a plain nested dict (JSON-friendly), e.g. for summaries and cache keys."""
    return config.to_dict()
