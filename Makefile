# rl-scaling: the two set-up commands are `make demo` and `make test` (see README).
PYTHON ?= python
RUNS ?= runs
REPORT ?= reports/latest
PYTEST_ARGS ?=

.PHONY: install demo test test-all analysis lint bench bench-gpu bench-impala bench-impala-gpu bench-bc bench-bc-gpu bench-ppg bench-sac \
	bench-pointmass slurm-start slurm-stop clean

# CPU torch first: a bare `torch` requirement would pull several GB of CUDA packages.
# Where a torch is already installed (e.g. a CUDA build on a GPU box) it is kept.
install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "torch==2.13.0"
	$(PYTHON) -m pip install -q -e ".[all]"

# The embedded default study: MNIST bandit width sweep (3-8 min on 2 CPU cores), then figures.
demo: install
	$(PYTHON) -m rl_scaling.sweep -m +experiment=mnist_width
	$(PYTHON) -m analysis --runs $(RUNS)/mnist_width --out reports/mnist_width

# Fast tests, real short end-to-end sweeps, and sweeps through a real single-node Slurm that
# tests/test_slurm.py brings up (scripts/slurm-local.sh; skipped where that cannot run, i.e.
# not root). Slow and GPU tests are opt-in (test-all).
test: install
	$(PYTHON) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: install
	$(PYTHON) -m pytest $(PYTEST_ARGS)

analysis:
	$(PYTHON) -m analysis --runs $(RUNS) --out $(REPORT)

lint:
	$(PYTHON) -m ruff check .

bench:
	$(PYTHON) bench/ppo_procgen.py

# The same on a GPU machine, one command: widths 1/4, 1, 4, speed switches off and on
bench-gpu:
	$(PYTHON) bench/ppo_procgen.py --gpu

# IMPALA's actor-learner split against its synchronous mode, same run (bench/README.md)
bench-impala:
	$(PYTHON) bench/impala.py

# BC: the data loader against the model, same run (bench/README.md)
bench-bc:
	$(PYTHON) bench/bc.py

# the same with the model on a GPU (widths 1/4, 1, 4)
bench-bc-gpu:
	$(PYTHON) bench/bc.py --device cuda --widths 0.25,1,4 --threads 1,2,4

# the same with the learner on a GPU and more actors (a 16-core GPU machine)
bench-impala-gpu:
	$(PYTHON) bench/impala.py --device cuda --actors 4,8,16 --steps 60000,102400

# PPO-EWMA and PPG-EWMA next to PPO on the same Procgen config, same run (bench/README.md)
bench-ppg:
	$(PYTHON) bench/ppg_procgen.py

# SAC against Stable-Baselines3 and a CleanRL-style loop, same run (bench/README.md)
bench-sac:
	$(PYTHON) -m pip install -q -e ".[bench]"
	$(PYTHON) bench/sac.py

# Point-mass world: vectorised stepping against a per-world Python loop, same run (bench/README.md)
bench-pointmass:
	$(PYTHON) bench/pointmass.py

# A throw-away single-node Slurm (with accounting) for trying hydra/launcher=slurm here:
# `eval "$$(make -s slurm-start)"` sets SLURM_CONF for this shell (docs/slurm.md).
slurm-start:
	@bash scripts/slurm-local.sh start
slurm-stop:
	@bash scripts/slurm-local.sh stop

clean:
	rm -rf .pytest_cache reports/latest
