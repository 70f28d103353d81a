"""bon_jax.xla_cpu: the XLA:CPU flag bon_jax adds, and when it does not."""

import os
import subprocess
import sys

from bon_jax import xla_cpu

FLAG = xla_cpu.FLAGS[0]


def test_added_once_after_the_users_flags():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_cpu.apply(env) == [FLAG]
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {FLAG}"
    assert xla_cpu.apply(env) == [] and env["XLA_FLAGS"].count(FLAG) == 1


def test_a_users_own_setting_of_the_flag_wins():
    own = "--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_ELTWISE"
    env = {"XLA_FLAGS": own}
    assert xla_cpu.apply(env) == [] and env["XLA_FLAGS"] == own


def test_switched_off():
    env = {xla_cpu.ENV_SWITCH: "0"}
    assert xla_cpu.apply(env) == [] and "XLA_FLAGS" not in env


def test_importing_bon_jax_sets_it_before_jax_starts():
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.ENV_SWITCH)}
    code = "import bon_jax, os, jax; jax.numpy.ones(1).block_until_ready(); print(os.environ['XLA_FLAGS'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == FLAG
