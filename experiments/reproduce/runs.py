"""The run list: which runs each claim needs, deduplicated across claims.

A run is (family, method label, seed): the family's experiment config with the family's and the method's
overrides (experiments/reproduce/settings.py) and `seed`. Claims name methods; runs shared by claims (the
base policy and standard RL appear in claims 1, 2 and 5) are listed once. Every run of a family evaluates
the base policy too (the same cached `eval_base` stage for every run of a seed), so "base" is not a run.

Layout under the workdir, per profile:

    <workdir>/<profile>/<family>/stages/                       the stage cache the family's runs share
    <workdir>/<profile>/<family>/runs/<label>-<hash>/seed<s>/  summary.json, per_prompt.json of one run
    <workdir>/<profile>/runs.json                              wall time of every run tried

<hash> is a hash of the run's overrides, so changing a setting makes a new run instead of reusing one made
with the old value.
"""

from __future__ import annotations

import dataclasses
import json
import os

from bon_jax.pipeline.stage_cache import config_key
from experiments.reproduce.claims import CLAIMS
from experiments.reproduce.settings import Profile


def run_finished(workdir: str) -> bool:
    """A run is finished when its evaluation is written: summary.json and per_prompt.json."""
    return all(os.path.exists(os.path.join(workdir, f)) for f in ("summary.json", "per_prompt.json"))


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def settings_drift(workdir: str, config) -> dict:
    """{dotted key: (the finished run's value, `config`'s value)} where they differ.

    A run's directory is named by its overrides only, so a changed default in the experiment file would
    otherwise pass a run made under the old default off as the new one. Keys the finished run's config lacks
    (added to the schema since, at a default that keeps the old behaviour) and `workdir` are not compared;
    values are compared after a JSON round trip (tuples are stored as lists)."""
    with open(os.path.join(workdir, "summary.json")) as f:
        was = _flatten(json.load(f).get("config", {}))
    now = _flatten(json.loads(json.dumps(config.to_dict(), default=str)))
    return {k: (was[k], v) for k, v in now.items() if k != "workdir" and k in was and was[k] != v}


def refuse_drifted(finished: list[tuple[str, object]], fix: str) -> None:
    """Raise ConfigError naming every finished run whose stored config differs from the one it would get
    now ([(workdir, config)]), before any compute."""
    from bon_jax.errors import ConfigError

    drifted = [
        (workdir, key, was, now)
        for workdir, config in finished
        for key, (was, now) in sorted(settings_drift(workdir, config).items())
    ]
    if drifted:
        lines = [f"  {w}: {key} was {was!r}, would now be {now!r}" for w, key, was, now in drifted[:20]]
        more = [f"  ... and {len(drifted) - 20} more"] if len(drifted) > 20 else []
        raise ConfigError(
            drifted[0][1],
            "finished runs were made with other settings than they would get now:\n"
            + "\n".join(lines + more + [fix]),
        )


@dataclasses.dataclass(frozen=True)
class Run:
    profile: str
    family: str
    experiment: str  # experiments/<experiment>.py
    label: str  # the method label of settings.py
    overrides: tuple  # ((dotted key, value), ...): family's then method's
    seed: int
    tuning: bool = False  # a try on validation prompts (settings.Family.tuning), not a final run

    @property
    def settings_key(self) -> str:
        return config_key(dict(self.overrides))

    @property
    def run_id(self) -> str:
        return f"{self.family}/{self.label}-{self.settings_key}/seed{self.seed}"

    def workdir(self, root: str) -> str:
        return os.path.join(
            root, self.profile, self.family, "runs", f"{self.label}-{self.settings_key}", f"seed{self.seed}"
        )

    def cache_root(self, root: str) -> str:
        return os.path.join(root, self.profile, self.family, "stages")

    def finished(self, root: str) -> bool:
        return run_finished(self.workdir(root))

    def objective(self) -> str:
        return dict(self.overrides).get("rl.objective", "")


def method_run(profile: Profile, family: str, label: str, seed: int) -> Run:
    fam = profile.families[family]
    if label not in fam.methods:
        raise KeyError(
            f"profile {profile.name!r} has no {family} method {label!r}; known: {sorted(fam.methods)}"
        )
    overrides = {**fam.overrides, **fam.methods[label]}
    return Run(profile.name, family, fam.experiment, label, tuple(sorted(overrides.items())), seed)


def tuning_runs(profile: Profile, family: str, label: str) -> list[Run]:
    """The method's validation tries (settings.Family.tuning), at the profile's first seed."""
    fam = profile.families[family]
    out = []
    for i, extra in enumerate(fam.tuning.get(label, [])):
        overrides = {**fam.overrides, **fam.methods[label], **extra, "eval.split": "validation"}
        out.append(
            Run(
                profile.name,
                family,
                fam.experiment,
                f"{label}~try{i}",
                tuple(sorted(overrides.items())),
                profile.seeds[0],
                tuning=True,
            )
        )
    return out


def claim_methods(profile: Profile, claim_id: str) -> list[tuple[str, str]]:
    """(family, method label) pairs the claim needs under this profile."""
    claim = CLAIMS[claim_id]
    return [(claim.family, label) for label in claim.methods(profile)]


def runs_for(profile: Profile, claim_ids: list[str] | None = None) -> list[Run]:
    """Every run the claims need (all claims when None), each once: the validation tries first, then the
    final runs seed by seed, claim by claim."""
    ids = list(CLAIMS) if claim_ids is None else claim_ids
    unknown = [c for c in ids if c not in CLAIMS]
    if unknown:
        raise KeyError(f"unknown claims {unknown}; known: {', '.join(CLAIMS)}")
    seen, out = set(), []
    for cid in ids:
        for family, label in claim_methods(profile, cid):
            for run in tuning_runs(profile, family, label):
                if run.run_id not in seen:
                    seen.add(run.run_id)
                    out.append(run)
    for seed in profile.seeds:  # seed-major: a stopped reproduction has whole seeds, not one method's seeds
        for cid in ids:
            for family, label in claim_methods(profile, cid):
                run = method_run(profile, family, label, seed)
                if run.run_id not in seen:
                    seen.add(run.run_id)
                    out.append(run)
    return out
