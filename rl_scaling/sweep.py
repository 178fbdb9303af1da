"""Entry point: ``python -m rl_scaling.sweep [+experiment=NAME] [-m] [key=value ...]``.

Composes the config (validated against :mod:`rl_scaling.config`), then runs one job
in Hydra's job directory; with ``-m`` Hydra's launcher runs the experiment's grid.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rl_scaling.config import register_configs

register_configs()
log = logging.getLogger("rl_scaling")


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> str:
    from rl_scaling.checkpoint import CheckpointError
    from rl_scaling.run import ConfigError, run

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        return run(cfg, run_dir)
    except (ConfigError, CheckpointError, FileNotFoundError) as err:
        # One clear line instead of a traceback; the exit code still says it failed.
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
