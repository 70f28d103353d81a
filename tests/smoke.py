"""The `smoke` experiment's config for the runner tests, with `section.field=value` overrides."""

from bon_jax.config import load_experiment


def smoke_config(tmp_path, name="run", **overrides):
    c = load_experiment("smoke").get_config()
    c.workdir = str(tmp_path / name)
    for key, value in overrides.items():
        section, field = key.split(".")
        c[section][field] = value
    return c
