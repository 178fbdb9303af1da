"""Where algorithms and env families plug into the spine.

The spine names none of them. An algorithm module ends with one line::

    register_algo("my_algo", MyAlgoConfig, train)

and ``algo=my_algo`` composes: its dataclass is the schema Hydra validates ``algo.*`` against
(a misspelt key fails naming it), ``MyAlgoConfig.validate()`` (optional) gives one-line errors
naming the bad key, and ``train(cfg, ctx) -> status`` is what runs. An env family does the
same with :func:`register_env`, a model family with :func:`register_model`.

Modules are found by :func:`load_plugins`: the packages ``agents`` and ``envs`` (whose
``__init__`` imports every built-in module), the modules named in the environment variable
``RL_SCALING_PLUGINS`` (comma separated, e.g. a test file or a researcher's own algorithm),
and installed packages that declare the entry-point group ``rl_scaling.plugins``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
PLUGIN_ENV_VAR = "RL_SCALING_PLUGINS"
ENTRY_POINT_GROUP = "rl_scaling.plugins"


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


@dataclass(frozen=True)
class AlgoEntry:
    name: str
    config_cls: type
    train: Callable[..., str]  # train(cfg, ctx) -> final status
    # train_many(cfg, ctxs) -> None: K seeds in one process, in lock step (seeds_per_process);
    # None: the algorithm trains one seed per process
    train_many: Callable[..., Any] | None = None
    # True: train() supports data-parallel ranks (torchrun / srun; rl_scaling/distributed.py):
    # it averages gradients over ranks. False: a run started as several ranks is refused
    distributed: bool = False
    # algo.* keys a resumed run may change: how it runs, not what it learns
    resumable: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnvEntry:
    family: str
    config_cls: type
    # build(cfg, *, num_envs, seed) -> VecEnv; cfg is the family's dataclass (eval overrides
    # already applied for the eval split)
    build: Callable[..., Any]


@dataclass(frozen=True)
class ModelEntry:
    family: str
    config_cls: type
    # build(cfg, spec, role) -> nn.Module; cfg is the family's dataclass (width, depth, ...),
    # spec the run's EnvSpec (observation and action spaces), role what the network is for
    # ("policy", "actor", "critic", ...: a family may give each its own head)
    build: Callable[..., Any]


ALGOS: dict[str, AlgoEntry] = {}
ENVS: dict[str, EnvEntry] = {}
MODELS: dict[str, ModelEntry] = {}
def _store(group: str, name: str, node: Any) -> None:
    try:
        from hydra.core.config_store import ConfigStore
    except ImportError:  # training without Hydra (tests, notebooks) needs no schema store
        return
    ConfigStore.instance().store(group=group, name=name, node=node)


def _register_group_option(group: str, name: str, config_cls: type) -> None:
    # ``<name>_schema`` is what configs/<group>/<name>.yaml extends; without such a file the
    # dataclass itself is the option, so ``<group>=<name>`` composes from the one line.
    _store(group, f"{name}_schema", config_cls)
    if not (CONFIG_DIR / group / f"{name}.yaml").exists():
        _store(group, name, config_cls)


def register_algo(name: str, config_cls: type, train: Callable[..., str], *,
                  train_many: Callable[..., Any] | None = None,
                  distributed: bool = False, resumable: tuple[str, ...] = ()) -> None:
    """Register an algorithm: ``algo=<name>`` then composes and runs ``train(cfg, ctx)``.

    ``config_cls`` is a dataclass with a ``name`` field (its default ``name``), every field
    documented; an optional ``validate(self)`` method raises :class:`ConfigError` naming
    ``algo.<key>``. ``train_many(cfg, ctxs)``, if given, trains ``seeds_per_process`` seeds
    in one process, one run context (and one run record) per seed; it ends every context
    through :func:`rl_scaling.context.end_iterations` (see docs/seam.md).
    ``distributed=True``: ``train`` runs as one of several data-parallel ranks when started
    with torchrun or srun (it averages gradients with ``ctx.dist``; docs/speed.md).
    ``resumable``: ``algo.*`` keys (without the prefix) that say how the algorithm runs, not
    what it learns, so a resumed run may change them (list them in the hydra config's
    ``exclude_keys`` too, to keep them out of run directory names).
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"register_algo({name!r}): config_cls must be a dataclass")
    if "name" not in {f.name for f in dataclasses.fields(config_cls)}:
        raise TypeError(f"register_algo({name!r}): {config_cls.__name__} needs a `name` field")
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(resumable) - known)
    if unknown:
        raise TypeError(f"register_algo({name!r}): resumable keys {unknown} are not fields "
                        f"of {config_cls.__name__}")
    ALGOS[name] = AlgoEntry(name, config_cls, train, train_many, distributed, tuple(resumable))
    _register_group_option("algo", name, config_cls)


def register_env(family: str, config_cls: type, build: Callable[..., Any]) -> None:
    """Register an env family: ``env=<family>`` composes and ``build(cfg, num_envs=, seed=)``
    makes its vectorised envs (for both splits; see ``rl_scaling.context.EnvFactory``).

    ``config_cls`` is a dataclass with the fields ``family``, ``id``, ``num_envs`` and
    ``eval`` (overrides for the held-out split), usually by extending ``envs.base.EnvConfig``.
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"register_env({family!r}): config_cls must be a dataclass")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    missing = {"family", "id", "num_envs", "eval"} - fields
    if missing:
        raise TypeError(f"register_env({family!r}): {config_cls.__name__} lacks {sorted(missing)}")
    ENVS[family] = EnvEntry(family, config_cls, build)
    _register_group_option("env", family, config_cls)


def register_model(family: str, config_cls: type, build: Callable[..., Any]) -> None:
    """Register a model family: ``model=<family>`` composes and ``ctx.network(role)`` calls
    ``build(cfg, spec, role)``. ``config_cls`` has ``family`` and the scaling knobs (``width``,
    ``depth``, ...), with an optional ``validate(self)``."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"register_model({family!r}): config_cls must be a dataclass")
    MODELS[family] = ModelEntry(family, config_cls, build)
    _register_group_option("model", family, config_cls)


_loaded = False


def load_plugins() -> None:
    """Import every module that registers algorithms, env or model families (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    names = ["agents", "envs"]
    names += [m.strip() for m in os.environ.get(PLUGIN_ENV_VAR, "").split(",") if m.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            if name in ("agents", "envs"):
                raise
            raise ConfigError(f"{PLUGIN_ENV_VAR}: cannot import {name!r} ({err})") from err
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def algo_entry(name: str) -> AlgoEntry:
    if name not in ALGOS:
        raise ConfigError(f"algo.name={name!r} is unknown; known: {sorted(ALGOS)}")
    return ALGOS[name]


def model_entry(family: str) -> ModelEntry:
    if family not in MODELS:
        raise ConfigError(f"model.family={family!r} is unknown; known: {sorted(MODELS)}")
    return MODELS[family]


def env_entry(family: str) -> EnvEntry:
    if family not in ENVS:
        raise ConfigError(f"env.family={family!r} is unknown; known: {sorted(ENVS)}")
    return ENVS[family]
