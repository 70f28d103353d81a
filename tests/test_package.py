import jax

import bon_jax


def test_version_and_fake_devices():
    assert bon_jax.__version__
    assert jax.device_count() == 8
    assert jax.devices()[0].platform == "cpu"
