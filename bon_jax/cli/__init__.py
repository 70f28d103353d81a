"""Command-line entry points (`make train`, `make sweep`, `make eval`)."""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Sequence


def _config_file(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.partition("=")[2]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _overrides(argv: Sequence[str]) -> list[str]:
    """The dotted keys of `--config.a.b=value` / `--config.a.b value` overrides."""
    return [arg.partition("=")[0][len("--config."):] for arg in argv if arg.startswith("--config.")]


def _config_keys(config, prefix: str = "") -> list[str]:
    from ml_collections import ConfigDict

    keys = []
    for key in config.keys():
        keys.append(f"{prefix}{key}")
        if isinstance(config[key], ConfigDict):
            keys.extend(_config_keys(config[key], f"{prefix}{key}."))
    return keys


def check_command_line(argv: Sequence[str]) -> None:
    """Refuses a missing experiment file or an override of a key its config lacks, before flag parsing.

    ml_collections would answer either with a long traceback from inside its flag parser; this answers with
    one line naming the key, and the known experiments or the closest known key. Raises `ConfigError`.
    """
    from bon_jax.config import FREE_FORM_SECTIONS, load_experiment
    from bon_jax.errors import ConfigError

    path = _config_file(argv)
    if path is None:
        return  # the command reports the missing --config itself
    config = load_experiment(path).get_config()
    keys = _config_keys(config)
    known = set(keys)
    for key in _overrides(argv):
        if key in known:
            continue
        parent = key.rpartition(".")[0]
        if parent and parent not in known:
            missing = next(p for p in _prefixes(key) if p not in known)
        else:
            missing = key
        if parent.rpartition(".")[2] in FREE_FORM_SECTIONS and parent in known:
            # A free-form section: any key is valid in the experiment file, but ml_collections cannot add one.
            hint = f" A command line sets only keys that {path} already sets in {parent}: set it there."
        else:
            close = difflib.get_close_matches(missing, keys, n=1, cutoff=0.6)
            hint = f" Did you mean --config.{close[0]}?" if close else ""
        source = f" (from --config.{key})" if missing != key else ""
        raise ConfigError(missing, f"unknown key{source} in {path}.{hint}")


def _prefixes(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl `flags_parser` for the commands: a bad experiment or override is one line on stderr, exit 2."""
    from absl import flags

    from bon_jax.errors import BonJaxError

    try:
        check_command_line(argv)
        return flags.FLAGS(list(argv))
    except BonJaxError as e:
        print(f"[bon_jax] error: {e}", file=sys.stderr)
        sys.exit(2)
    except flags.Error as e:
        print(f"[bon_jax] error: {e}\n  (--helpfull lists the flags)", file=sys.stderr)
        sys.exit(2)


# XLA programs compiled by one run are loaded by the next (the points of a sweep, the runs of `make
# reproduce`, a resumed run): the verifier alone compiles one program per (prompt, completion) width bucket.
COMPILATION_CACHE_ENV = "BON_JAX_COMPILATION_CACHE"
DEFAULT_COMPILATION_CACHE = os.path.join("runs", ".jax_cache")


def enable_compilation_cache() -> str | None:
    """Points JAX's persistent compilation cache at $BON_JAX_COMPILATION_CACHE (default runs/.jax_cache;
    empty: off), unless a cache directory is already set (the tests set their own). Returns the folder."""
    import jax

    path = os.environ.get(COMPILATION_CACHE_ENV, DEFAULT_COMPILATION_CACHE)
    if not path or jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return path


def run_reporting_errors(fn: Callable[[], object]) -> None:
    """Runs `fn` with the compilation cache on; a preemption exits 0 (restart to resume), a bon_jax error
    exits 2 with its message."""
    from bon_jax.errors import BonJaxError
    from bon_jax.pipeline.loop import Preempted

    enable_compilation_cache()
    try:
        fn()
    except Preempted as e:
        print(f"[bon_jax] preempted: {e}", file=sys.stderr)
    except BonJaxError as e:
        print(f"[bon_jax] error: {e}", file=sys.stderr)
        sys.exit(2)
