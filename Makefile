# `make train` and `make test` set up .venv themselves (CPU torch pinned first, so no later
# requirement pulls a CUDA build), then run. ARGS / PYTEST_ARGS pass extra arguments through.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

.PHONY: setup train test lint bench clean warm warm-mjwarp warm-genesis

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev,mjwarp,genesis,vlm,vla,logs,demos,rsl_rl]"
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(BIN)/embodied train $(ARGS)

# Compile MuJoCo Warp's kernels for every registered task's model into its kernel cache
# (~1.5 CPU-minutes on an empty cache, most of it shared by all models; seconds once cached),
# so that no test pays for a compile.
warm-mjwarp: $(STAMP)
	$(BIN)/python -m sim.warm mjwarp $$($(BIN)/python -c "from embodied.registry import task_config as c, \
	task_names as t; print(*sorted({str(c(n).model) for n in t()}))")

# The same for Genesis: its kernels are shared by all models (~3 CPU-minutes on an empty cache,
# ~35 s once cached), into $EMBODIED_GENESIS_CACHE or ~/.cache/embodied/genesis.
warm-genesis: $(STAMP)
	$(BIN)/python -m sim.warm genesis $$($(BIN)/python -c "from embodied.registry import task_config as c, \
	task_names as t; print(*sorted({str(c(n).model) for n in t()}))")

# Both engines' compiles at once: each is mostly one thread, and CI has two cores.
warm: $(STAMP)
	$(MAKE) -j2 warm-mjwarp warm-genesis

test: $(STAMP) warm
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

# Every benchmark runs (each prints its figures and thresholds); the target fails at the end,
# naming each script that missed a threshold. policy_latency.py times the newest go2_velocity run
# under runs/, else trains a tiny policy first (it says which); BENCH_RUN=<run dir> picks one.
BENCH_RUN ?=
bench: $(STAMP) warm
	@failed=""; \
	for b in "env_throughput.py" "train_throughput.py" \
	         "policy_latency.py $(if $(BENCH_RUN),--run $(BENCH_RUN))" "render_throughput.py" \
	         "engines.py --seconds 4 --train"; do \
		echo "== $(BIN)/python benchmarks/$$b"; \
		$(BIN)/python benchmarks/$$b || failed="$$failed $${b%% *}"; \
	done; \
	if [ -n "$$failed" ]; then echo "bench: missed a threshold:$$failed"; exit 1; fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
