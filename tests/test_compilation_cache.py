"""The command-line runs share XLA programs through JAX's persistent compilation cache."""

import os
import subprocess
import sys

SNIPPET = """
import jax, sys
from bon_jax.cli import enable_compilation_cache
if sys.argv[1] != "-":
    jax.config.update("jax_compilation_cache_dir", sys.argv[1])
print(enable_compilation_cache(), jax.config.jax_compilation_cache_dir)
"""


def _run(tmp_path, preset, env_value):
    env = dict(os.environ, BON_JAX_COMPILATION_CACHE=env_value, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SNIPPET, preset], env=env, cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    return out.stdout.split()


def test_cli_runs_use_the_folder_the_environment_names(tmp_path):
    folder = str(tmp_path / "cache")
    assert _run(tmp_path, "-", folder) == [folder, folder]


def test_a_cache_folder_already_set_is_kept(tmp_path):
    mine, other = str(tmp_path / "mine"), str(tmp_path / "other")
    assert _run(tmp_path, mine, other) == [mine, mine]


def test_an_empty_setting_turns_the_cache_off(tmp_path):
    assert _run(tmp_path, "-", "") == ["None", "None"]
