"""The learning rate a job will train with, from the algorithm's own width/depth rule.

An on-policy algorithm (PPO, PPG, V-MPO) scales its base ``algo.lr`` with the model's width
and depth itself (``agents/ppo.py`` :func:`learning_rate`: ``lr * width^-1/2`` with
``algo.lr_width_rule``, times ``(depth / lr_base_depth)^lr_depth_exponent`` with
``algo.lr_depth_rule``), so a width or depth sweep needs no lr override per size. The
planners leave the lr to that rule and only report it: :func:`job_lr` calls the function the
algorithm's module itself trains with (no copy of the formula here). An algorithm whose
module has no ``learning_rate(cfg, width, depth)`` trains with ``algo.lr`` as it is.
"""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import DictConfig, OmegaConf


def lr_rule(algo_name: str):
    """The algorithm's ``learning_rate(cfg, width, depth)``, or None if it has none."""
    from rl_scaling.registry import algo_entry, load_plugins

    load_plugins()
    module = sys.modules.get(algo_entry(algo_name).config_cls.__module__)
    rule = getattr(module, "learning_rate", None)
    return rule if callable(rule) else None


def job_lr(cfg: DictConfig) -> tuple[float | None, str]:
    """The learning rate a run of ``cfg`` trains with, and how it was set."""
    from rl_scaling.registry import algo_entry

    algo = OmegaConf.to_container(cfg.algo, resolve=True)
    base = algo.get("lr")
    rule = lr_rule(algo["name"])
    if rule is None:
        return (None if base is None else float(base)), "algo.lr"
    fields = algo_entry(algo["name"]).config_cls.__dataclass_fields__
    obj = algo_entry(algo["name"]).config_cls(**{k: v for k, v in algo.items() if k in fields})
    model: dict[str, Any] = (OmegaConf.to_container(cfg.model, resolve=True)
                             if cfg.get("model") is not None else {})
    lr = rule(obj, float(model.get("width", 1.0)), model.get("depth"))
    how = [r for r in ("lr_width_rule", "lr_depth_rule") if algo.get(r)]
    return float(lr), f"algo.lr={base:g} with {' + '.join(how)}" if how else "algo.lr"


def lr_for(algo_cfg: Any, width: float, depth: int | None = None) -> float:
    """The lr for a (width, depth) from an algorithm config object (its dataclass, with the
    base ``lr`` and the rule switches), by the algorithm's own rule."""
    rule = lr_rule(algo_cfg.name)
    return float(rule(algo_cfg, width, depth)) if rule is not None else float(algo_cfg.lr)
