# bon_jax: every target sets itself up first, so each works as the first command on a fresh clone.
#   make train [EXP=arith_bo32] [ARGS="--config.rl.n=16"]   run one experiment end to end
#   make sweep EXP=sentiment_vbon [SHARD=0/2] [GRID=small]  run (a shard of) an experiment's grid
#   make eval  EXP=... [ARGS=...]                           evaluate the latest checkpoint of a run
#   make reproduce [ARGS="--profile=tiny --only=claim1"]    the papers' claims -> docs/reproduction.md (resumable)
#   make test | make bench | make lint | make install

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXP    ?= arith_bo32
ARGS   ?=
SHARD  ?= 0/1
GRID   ?= full
PYTEST_ARGS ?=
# Local paths for the paper-scale experiments (nothing is downloaded): CKPT=... DATA=... TOKENIZER=...
PATH_ARGS := $(if $(CKPT),--config.model.checkpoint=$(CKPT)) $(if $(DATA),--config.task.data_dir=$(DATA)) \
             $(if $(TOKENIZER),--config.tokenizer.path=$(TOKENIZER))

.PHONY: install test test-fast train sweep eval reproduce bench bench-peers lint format lock clean

install: $(STAMP)

# Re-installs only when the lock or the package metadata changed.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder -m "not slow" $(PYTEST_ARGS)

train: $(STAMP)
	$(PY) -m bon_jax.cli.train --config=experiments/$(EXP).py $(PATH_ARGS) $(ARGS)

sweep: $(STAMP)
	$(PY) -m bon_jax.cli.sweep --config=experiments/$(EXP).py --shard=$(SHARD) --grid=$(GRID) $(PATH_ARGS) $(ARGS)

eval: $(STAMP)
	$(PY) -m bon_jax.cli.train --config=experiments/$(EXP).py --only=eval $(PATH_ARGS) $(ARGS)

# Runs the missing runs of experiments/reproduce/settings.py, then writes docs/reproduction.md and
# docs/figures/reproduce_claim*.png; rerun to resume (finished runs are kept). --profile=tiny: minutes.
reproduce: $(STAMP)
	$(PY) -m experiments.reproduce $(ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.run $(ARGS)

# Installs the peers' venvs under benchmarks/.peers-venv (pinned, --no-deps; skipped when up to date), then
# times bon_jax, tunix, gemma and transformers on the same sampling workload in one run.
bench-peers: $(STAMP)
	$(PY) -m benchmarks.peers.install
	$(PY) -m benchmarks.peers.run $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check bon_jax experiments tests benchmarks

format: $(STAMP)
	$(PY) -m ruff format bon_jax experiments tests benchmarks

# Regenerates requirements.lock from a fresh resolve of pyproject.toml (CPU jax).
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install --quiet torch==2.13.0  # the CPU build (found in the machine's wheel folder)
	.lockenv/bin/pip install --quiet -e ".[dev,gguf,reference]"
	(echo '# Exact versions for CI and `make install` (CPU jax). Regenerate with `make lock`.'; \
	 .lockenv/bin/pip freeze --exclude-editable | grep -v '^-e') > requirements.lock
	rm -rf .lockenv

clean:
	rm -rf $(VENV) runs .pytest_cache
