"""The run context: everything an algorithm needs from the run around it.

``train(cfg, ctx) -> status`` gets a :class:`RunContext` and writes only its own maths::

    envs = ctx.envs("train")                                   # built once, closed for you
    model = ctx.network("policy")                              # model.* knobs, run's RNG
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ctx.restore(model=model, optimizer=optimizer)              # resume (or start) the run
    while not ctx.done:                                        # budget in a counter
        ...                                                    # collect, update
        ctx.flops.add_forward_backward("policy", batch)        # FLOPs per role
        ctx.counters.env_steps += batch
        ctx.end_iteration(metrics, evaluate=lambda: evaluate(policy, ctx.envs("eval"), ...))
    return "finished"

``end_iteration`` owns the bookkeeping every algorithm shares: log, evaluation and
checkpoint cadence (in env steps, samples, updates or seconds), divergence (a non-finite
loss ends the run as ``diverged`` with its curve kept) and preemption (a signal checkpoints
at once and the run ends as ``running`` so the launcher can requeue it).

Random numbers come from per-run generators (``torch_rng``, ``device_rng``, ``eval_rng``,
``np_rng``), saved in every checkpoint and restored on resume, so a run's numbers do not
depend on what else ran in the process. Networks are initialised from ``torch_rng`` too:
``nn.init`` only draws from torch's global CPU generator, so :meth:`RunContext.network`
loads ``torch_rng``'s state into it for the build (inside ``torch.random.fork_rng``, which
puts the global state back) and takes the advanced state back. Runs sharing a process must
therefore build their networks one at a time (not from concurrent threads).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rl_scaling.checkpoint import CheckpointError, load_module_state, save_checkpoint
from rl_scaling.config import INTERVAL_UNITS
from rl_scaling.distributed import SINGLE, STREAM_SEED_STRIDE, Distributed
from rl_scaling.flops import FlopAccountant, forward_flops
from rl_scaling.observations import batch_size, zeros_like_space
from rl_scaling.registry import ConfigError
from rl_scaling.speed import Speed

log = logging.getLogger(__name__)


@dataclass
class Counters:
    """The counters every metric line carries (plus the loop's own iteration count)."""

    env_steps: int = 0  # environment interactions E
    updates: int = 0  # gradient steps
    samples: int = 0  # learner samples processed (summed over epochs)
    iterations: int = 0  # calls of end_iteration: strictly increasing, orders the curve
    wall_time: float = 0.0  # seconds of training, summed over resumes


class StopTraining(Exception):  # noqa: N818 (control flow, not an error)
    """Raised to stop a run early; ``status`` says how the run ends."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class EnvSpec:
    """What a learner sees of its task: one env's observation and action spaces."""

    observation_space: Any
    action_space: Any


class EnvFactory:
    """Builds one split's vectorised envs; picklable, so actor processes build their own.

    ``factory(num_envs=None, seed=None)``: defaults are the split's ``num_envs`` and seed.
    """

    def __init__(self, family: str, config: dict[str, Any], seed: int) -> None:
        self.family, self.config, self.seed = family, dict(config), int(seed)

    @property
    def num_envs(self) -> int:
        return int(self.config["num_envs"])

    def __call__(self, num_envs: int | None = None, seed: int | None = None):
        from rl_scaling.registry import env_entry, load_plugins

        load_plugins()  # a fresh actor process has imported nothing yet
        entry = env_entry(self.family)
        cfg = entry.config_cls(**{**self.config, "num_envs": num_envs or self.num_envs})
        try:
            return entry.build(cfg, num_envs=cfg.num_envs,
                               seed=self.seed if seed is None else int(seed))
        except ValueError as err:  # builders name their argument; say which group it was
            raise ConfigError(f"env ({self.family}): {err}") from err

    def worker(self, index: int) -> EnvFactory:
        """The same split for actor process ``index``: its own seed, so K actors do not
        replay one env stream."""
        return EnvFactory(self.family, self.config,
                          (self.seed + STREAM_SEED_STRIDE * (int(index) + 1)) % 2**31)

    def __repr__(self) -> str:
        return f"EnvFactory({self.family!r}, {self.config!r}, seed={self.seed})"


class Interval:
    """``"<number> <unit>"`` (unit: env_steps | samples | updates | seconds) or None.

    ``due(value)`` is True once per multiple of the interval that ``value`` reached.
    """

    def __init__(self, spec: str | None, key: str) -> None:
        self.every, self.unit, self.key = 0.0, "", key
        if spec is None or str(spec).strip().lower() in ("", "null", "none"):
            return
        parts = str(spec).split()
        try:
            every = float(parts[0])
        except (ValueError, IndexError):
            every = float("nan")
        if len(parts) != 2 or not math.isfinite(every) or every <= 0 \
                or parts[1] not in INTERVAL_UNITS:
            raise ConfigError(f"{key}={spec!r} must be '<number> <unit>' with a number > 0 and "
                              f"unit one of {list(INTERVAL_UNITS)}, or null")
        self.every, self.unit = every, parts[1]
        self.next = every

    @property
    def active(self) -> bool:
        return self.every > 0

    def sync(self, value: float) -> None:
        """Set the next due point after ``value`` (on start and resume)."""
        if self.active:
            self.next = (math.floor(value / self.every) + 1) * self.every

    def due(self, value: float) -> bool:
        if not self.active or value < self.next:
            return False
        self.sync(value)
        return True


def _is_loss_key(key: str) -> bool:
    return key == "loss" or key.endswith("_loss")


def _example_batch(example: Any) -> tuple[tuple[Any, ...], int]:
    args = example if isinstance(example, tuple) else (example,)
    return args, batch_size(args[0])


def count_params(module: nn.Module) -> dict[str, int]:
    """``{"total", "effective"}`` parameters; effective = inside ``module.scaled_modules()``
    (each shared parameter once), or every parameter for a module that names no parts."""
    total = sum(p.numel() for p in module.parameters())
    if not hasattr(module, "scaled_modules"):
        return {"total": total, "effective": total}
    scaled = {id(p): p for m in module.scaled_modules() for p in m.parameters()}
    return {"total": total, "effective": sum(p.numel() for p in scaled.values())}


class RunContext:
    """What ``train(cfg, ctx)`` gets; built by :func:`rl_scaling.run.run`.

    Attributes an algorithm reads: ``device``, ``seed``, ``counters``, ``flops`` (the
    :class:`~rl_scaling.flops.FlopAccountant`), ``torch_rng`` (CPU: weights, permutations,
    env seeds), ``device_rng`` (sampling on the training device; ``torch_rng`` on CPU),
    ``eval_rng`` (sampling during evaluation, so evaluating never changes the training
    stream), ``np_rng``, ``model`` (the ``model.*`` knobs as a dict), ``eval_episodes``,
    ``resumed``.
    """

    def __init__(
        self,
        *,
        device: torch.device,
        seed: int,
        budget_counter: str,
        budget_value: float,
        env_factories: dict[str, EnvFactory] | None = None,
        model: dict[str, Any] | None = None,
        build_model: Callable[..., nn.Module] | None = None,
        effective_roles: list[str] | None = None,
        log_every: str | None = None,
        eval_every: str | None = None,
        eval_episodes: int = 64,
        checkpoint_every: str | None = None,
        checkpoint_path: Path | None = None,
        resume_state: dict[str, Any] | None = None,
        begin: Callable[[RunContext], Any] | None = None,
        preempted: Callable[[], bool] = lambda: False,
        snapshot_flops: Sequence[float] | None = None,
        speed: Speed | None = None,
        dist: Distributed | None = None,
    ) -> None:
        self.device, self.seed = device, int(seed)
        # how fast (precision, compiled learner, CUDA graphs, overlapped envs): speed.*
        self.speed = speed or Speed(device=device)
        # this process's rank among the ranks of a data-parallel run (rl_scaling/distributed)
        self.dist = dist or SINGLE
        self._synced: dict[str, float] = {}  # global counters after the last rank sync
        self.budget_counter, self.budget_value = budget_counter, float(budget_value)
        self.model = dict(model or {})
        self.eval_episodes = int(eval_episodes)
        self.counters = Counters()
        self.flops = FlopAccountant()
        self.networks: dict[str, dict[str, Any]] = {}
        self.spec_override: EnvSpec | None = None
        self._factories = dict(env_factories or {})
        self._build_model = build_model
        self._effective_roles = None if effective_roles is None else set(effective_roles)
        self._log = Interval(log_every, "log_every")
        self._eval = Interval(eval_every, "eval_every")
        self._ckpt = Interval(checkpoint_every, "checkpoint_every")
        self._checkpoint_path = checkpoint_path
        self._resume_state = resume_state
        self._begin_fn = begin
        self._logger: Any = None
        self._objects: dict[str, Any] = {}
        self._envs: dict[str, Any] = {}
        self._spec: EnvSpec | None = None
        self.preempted = preempted
        # FLOP budgets to snapshot at (checkpoints/flops=<C>.pt, a line with snapshot_flops)
        self._snapshots = sorted({float(b) for b in (snapshot_flops or ())})
        # while ``evaluate`` runs: why ("due", "last", "snapshot"; see end_iteration)
        self.eval_occasion: set[str] = set()
        # set by end_iterations when this run stopped while others in its process go on
        self.stopped: StopTraining | None = None
        self._t0 = time.monotonic()
        self._wall_offset = 0.0
        self.torch_rng = torch.Generator().manual_seed(self.seed)
        self.device_rng = (self.torch_rng if device.type == "cpu"
                           else torch.Generator(device=device).manual_seed(self.seed))
        self.eval_rng = torch.Generator(device=device).manual_seed(self.seed + 1)
        self.np_rng = np.random.default_rng(self.seed)

    # ---- environments -------------------------------------------------------------------
    def env_factory(self, split: str = "train") -> EnvFactory:
        """The picklable builder of one split's envs (``train`` or ``eval``)."""
        if split not in self._factories:
            raise ConfigError(f"this run has no {split!r} envs (splits: {sorted(self._factories)})")
        return self._factories[split]

    def envs(self, split: str = "train", num_envs: int | None = None):
        """The split's vectorised envs, built on first use and closed when the run ends.
        ``num_envs``: how many, where the algorithm sets it (e.g. its learner batch); default the
        split's ``env.num_envs``. With ``speed.overlap_envs`` the training split is two
        :class:`~envs.groups.EnvGroups` halves seeded apart, one stepping while the policy
        acts on the other."""
        if split in self._envs:
            built = self._envs[split].num_envs
            if num_envs is not None and int(num_envs) != built:
                raise ValueError(f"the {split!r} envs were built with {built} envs, "
                                 f"not {num_envs}")
        else:
            factory = self.env_factory(split)
            n = int(num_envs or factory.num_envs)
            if split == "train" and self.speed.overlap_envs and n >= 2:
                from envs.groups import EnvGroups

                self._envs[split] = EnvGroups([
                    factory(num_envs=n // 2),
                    factory(num_envs=n - n // 2,
                            seed=(factory.seed + STREAM_SEED_STRIDE) % 2**31)])
            else:
                self._envs[split] = factory(num_envs=n)
        return self._envs[split]

    @property
    def spec(self) -> EnvSpec:
        """Observation and action spaces: from ``set_spec`` (a dataset), the training envs
        if built, else one throw-away training env."""
        if self.spec_override is not None:
            return self.spec_override
        if self._spec is None:
            if "train" in self._envs:
                envs = self._envs["train"]
                self._spec = EnvSpec(envs.single_observation_space, envs.single_action_space)
            else:
                envs = self.env_factory("train")(num_envs=1)
                try:
                    self._spec = EnvSpec(envs.single_observation_space,
                                         envs.single_action_space)
                finally:
                    envs.close()
        return self._spec

    def set_spec(self, observation_space: Any, action_space: Any) -> None:
        """Declare the spaces of a run without envs (e.g. from a dataset)."""
        self.spec_override = EnvSpec(observation_space, action_space)

    def close(self) -> None:
        for envs in self._envs.values():
            envs.close()
        self._envs.clear()

    # ---- networks -----------------------------------------------------------------------
    def network(self, role: str, build: str | Callable[..., nn.Module] | None = None, *,
                effective: bool = True, example: Any = None, copy_of: str | None = None,
                **knobs: Any) -> nn.Module:
        """Build the network of ``role``, initialised from the run's ``torch_rng``, on the
        training device, registered with the FLOP accountant.

        ``build``: None for the configured model family (``model.family`` with the
        ``model.*`` knobs, overridden by ``knobs``; observation shape and the number of
        discrete actions come from ``spec``), another family's name, or any callable that
        returns a module (called with ``knobs``). ``effective``: the role is part of the
        study's N (the run's ``effective_roles`` can narrow this). ``example``: an input
        batch for counting FLOPs (a tuple for several arguments); default one zero
        observation of ``spec``. Inside the module, ``scaled_modules()`` names the scaled
        parts (every module counts where it is absent). ``copy_of``: this network is a
        forward-only copy of that role (a Polyak target): its forwards are compute like any
        other, but its parameters are the same model's and do not add to N.
        """
        if role in self.networks:
            raise ValueError(f"network role {role!r} is built twice")
        if self._logger is not None:
            raise RuntimeError(f"network {role!r} is built after ctx.restore(): build every "
                               "network first, so its state and FLOPs are in the checkpoint")
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.torch_rng.get_state())
            if build is None or isinstance(build, str):
                if self._build_model is None:
                    raise ConfigError("this run has no model config; pass a builder")
                module = self._build_model(build, self.spec, knobs, role)
            else:
                module = build(**knobs)
            self.torch_rng.set_state(torch.get_rng_state())
        module = module.to(self.device)
        if example is None:
            example = zeros_like_space(self.spec.observation_space, (1,), self.device)
        args, n = _example_batch(example)
        scaled = hasattr(module, "scaled_modules")
        flops_total = forward_flops(module, args, effective=False, n_samples=n)
        flops_eff = forward_flops(module, args, effective=scaled, n_samples=n)
        if copy_of is not None and copy_of not in self.networks:
            raise ValueError(f"network {role!r}: copy_of={copy_of!r} is not built yet")
        if self._effective_roles is not None:
            effective = role in self._effective_roles
        self.flops.register(role, forward_total=flops_total, forward_effective=flops_eff,
                            effective=effective)
        self.networks[role] = {"params": count_params(module),
                               "flops_per_forward": {"total": flops_total,
                                                     "effective": flops_eff},
                               "effective": bool(effective)}
        if copy_of is not None:
            self.networks[role]["copy_of"] = copy_of
        return module

    def networks_info(self) -> dict[str, Any]:
        """``networks``, ``effective_roles`` and the summed ``params`` / ``flops_per_forward``
        for ``run.json``."""
        eff = [r for r, n in self.networks.items() if n["effective"]]
        nets = self.networks.values()
        return {
            "networks": self.networks, "effective_roles": eff,
            "params": {"total": sum(n["params"]["total"] for n in nets),
                       "effective": sum(self.networks[r]["params"]["effective"] for r in eff
                                        if "copy_of" not in self.networks[r])},
            "flops_per_forward": {
                "total": sum(n["flops_per_forward"]["total"] for n in nets),
                "effective": sum(self.networks[r]["flops_per_forward"]["effective"]
                                 for r in eff)},
        }

    # ---- resume -------------------------------------------------------------------------
    @property
    def resumed(self) -> bool:
        return self._resume_state is not None

    def restore(self, **objects: Any) -> bool:
        """Name the objects that make up the algorithm's state (modules, optimizers, anything
        with ``state_dict``/``load_state_dict``); load them from the checkpoint if the run is
        resuming. Call it once, after building the networks: this is where the run starts
        (the record is opened only now, so a checkpoint that does not fit this run is
        refused with one line and nothing on disk changes). Returns True on a resume."""
        state = self._resume_state
        self._objects = dict(objects)
        self._check_budget_and_roles()
        if state is not None:
            path = self._checkpoint_path
            saved = state["objects"]
            missing = sorted(set(objects) - set(saved))
            if missing:
                raise CheckpointError(f"incompatible checkpoint {path}: no state for {missing}")
            try:
                self.flops.check_state_dict(state["accountant"])
            except ValueError as err:
                raise CheckpointError(f"incompatible checkpoint {path}: {err}") from err
            rank_state = self._rank_state(state)
            for name, obj in objects.items():
                if isinstance(obj, nn.Module):
                    load_module_state(obj, saved[name], path)
            for name, obj in objects.items():
                if not isinstance(obj, nn.Module) and obj is not None:
                    own = (rank_state or {}).get("objects", {})
                    try:
                        obj.load_state_dict(own[name] if name in own else saved[name])
                    except (ValueError, KeyError, RuntimeError) as err:
                        raise CheckpointError(
                            f"incompatible checkpoint {path}: {name}: {err}") from err
            self.counters = Counters(**state["counters"])
            self.flops.load_state_dict(state["accountant"])
            self._wall_offset = self.counters.wall_time
            if rank_state is not None:
                self._restore_rng(rank_state["rng"])
            elif self.dist.is_main:
                self._restore_rng(state["rng"])
            else:
                self._seed_rank_streams(self.counters.iterations)
        elif self.dist.enabled:
            self._seed_rank_streams(0)
        for module in objects.values():
            if isinstance(module, nn.Module):  # identical already; make sure of it
                self.dist.broadcast_parameters(module)
        self._mark_synced()
        self._begin()
        return state is not None

    # ---- data-parallel ranks --------------------------------------------------------------
    def _rank_state(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """This rank's own part of a data-parallel checkpoint (its random streams and
        per-rank objects); None where the checkpoint was written by another number of ranks
        (then rank 0 takes the shared state and the others start new streams)."""
        ranks = state.get("ranks")
        if ranks is None or len(ranks) != self.dist.world_size:
            if ranks is not None or self.dist.enabled:
                log.warning("checkpoint written by %s rank(s), resumed by %d: ranks > 0 start "
                            "new random streams", len(ranks) if ranks else 1,
                            self.dist.world_size)
            return None
        return ranks[self.dist.rank]

    def _seed_rank_streams(self, iteration: int) -> None:
        """A rank > 0's own generators (sampling, minibatch order, env seeds): rank 0 keeps
        the run's seed, so one rank is exactly the single-process run."""
        if self.dist.rank == 0:
            return
        seed = self.seed + STREAM_SEED_STRIDE * self.dist.rank + 7919 * iteration
        self.torch_rng.manual_seed(seed)
        if self.device_rng is not self.torch_rng:
            self.device_rng.manual_seed(seed)
        self.eval_rng.manual_seed(seed + 1)
        self.np_rng = np.random.default_rng(seed)

    def _mark_synced(self) -> None:
        c = self.counters
        self._synced = {"env_steps": c.env_steps, "samples": c.samples,
                        "flops": self.flops.total,
                        **{f"role:{k}": r.spent for k, r in self.flops.roles.items()}}

    def _sync_counters(self) -> None:
        """Sum what every rank added since the last sync to ``env_steps``, ``samples`` and the
        FLOPs (total and per role), so every rank holds the run's global counters."""
        keys = list(self._synced)
        c, roles = self.counters, self.flops.roles
        now = {"env_steps": c.env_steps, "samples": c.samples, "flops": self.flops.total,
               **{f"role:{k}": r.spent for k, r in roles.items()}}
        added = self.dist.sum(now[k] - self._synced[k] for k in keys)
        new = {k: self._synced[k] + d for k, d in zip(keys, added, strict=True)}
        c.env_steps, c.samples = int(round(new["env_steps"])), int(round(new["samples"]))
        self.flops.total = new["flops"]
        for k, r in roles.items():
            r.spent = new[f"role:{k}"]
        self._synced = new

    def _check_budget_and_roles(self) -> None:
        """Refuse, before the record is opened, a run that could never reach its budget or
        whose effective roles name no network it built."""
        if self._effective_roles is not None:
            unknown = sorted(self._effective_roles - set(self.networks))
            if unknown:
                raise ConfigError(f"effective_roles names {unknown}, which this algorithm does "
                                  f"not build; its roles: {sorted(self.networks)}")
        if self.budget_counter == "env_steps" and not self._factories:
            raise ConfigError("budget.counter=env_steps but this run has no envs; count the "
                              "budget in samples, updates or flops")
        if self.budget_counter == "flops" and not any(
                r.effective and r.forward_effective > 0 for r in self.flops.roles.values()):
            raise ConfigError("budget.counter=flops but no effective network role has FLOPs "
                              "(check effective_roles)")

    def _begin(self) -> None:
        if self._logger is not None:
            return
        for interval in (self._log, self._eval, self._ckpt):
            interval.sync(self._counter(interval.unit))
        self._logger = self._begin_fn(self) if self._begin_fn is not None else NullLogger()
        # budgets still ahead of the (possibly resumed) run; one passed before is not redone
        missed = [b for b in self._snapshots if b <= self.flops.total
                  and self._checkpoint_path is not None and not self.snapshot_path(b).exists()]
        if missed:
            log.warning("snapshot_flops %s: already passed at %.4g FLOPs without a snapshot "
                        "(added when extending the run?); not taken", missed, self.flops.total)
        self._snapshots = [b for b in self._snapshots if b > self.flops.total]

    # ---- budget and counters ------------------------------------------------------------
    def _counter(self, name: str) -> float:
        if name == "flops":
            return self.flops.total
        if name == "seconds":
            return self.wall_time()
        if not name:
            return 0.0
        return float(getattr(self.counters, name))

    @property
    def done(self) -> bool:
        """True once the budget counter has reached the budget."""
        return self._counter(self.budget_counter) >= self.budget_value

    def budget_fraction(self) -> float:
        """How much of the budget is spent, in [0, 1] (e.g. for learning-rate annealing)."""
        return min(1.0, self._counter(self.budget_counter) / self.budget_value)

    def wall_time(self) -> float:
        return self._wall_offset + time.monotonic() - self._t0

    # ---- the end of every iteration -------------------------------------------------------
    def end_iteration(self, metrics: dict[str, Any] | Callable[[], dict[str, Any]],
                      evaluate: Callable[[], dict[str, Any]] | None = None) -> None:
        """Call once at the end of every loop iteration, after updating the counters.

        ``metrics``: this iteration's numbers, or a function returning them that is called
        only when a line is written (so a loop of one env step per iteration syncs with the
        device only at log points). A ``loss`` or ``*_loss`` that is not finite ends the run
        as ``diverged`` (detected at the first log point after it; the curve is kept).
        ``evaluate``: returns the held-out metrics; called when ``eval_every`` is due and at
        the end. Raises :class:`StopTraining` on divergence or a preemption signal.
        """
        self._require_restore()
        self.counters.iterations += 1
        preempted = self.preempted()
        if self.dist.enabled:  # global counters; a signal to any rank stops them all
            self._sync_counters()
            preempted = bool(self.dist.max([preempted])[0])
        # rank 0 decides (its clock drives time-based cadences) and every rank follows
        decision = self._decide(metrics, evaluate, preempted) if self.dist.is_main else None
        save, snapshots, stop = self.dist.broadcast_object(decision)
        self._snapshots = [b for b in self._snapshots if b not in snapshots]
        if save:
            self.save()
        for budget in snapshots:  # the state at the first iteration at or past each budget
            if self._checkpoint_path is not None and self.dist.is_main:
                shutil.copyfile(self._checkpoint_path, self.snapshot_path(budget))
        if stop is not None:
            raise StopTraining(*stop)

    def _decide(self, metrics: dict[str, Any] | Callable[[], dict[str, Any]],
                evaluate: Callable[[], dict[str, Any]] | None, preempted: bool
                ) -> tuple[bool, list[float], tuple[str, str] | None]:
        """Log and evaluate what is due; return ``(checkpoint now, snapshot budgets reached,
        (status, reason) to stop with or None)``."""
        c = self.counters
        last = self.done
        # every interval advances on its own grid, whatever else made this iteration log
        eval_due = self._eval.due(self._counter(self._eval.unit))
        log_due = self._log.due(self._counter(self._log.unit))
        ckpt_due = self._ckpt.due(self._counter(self._ckpt.unit))
        # a preempted job checkpoints first: an evaluation could outlast the grace period
        snapshots = [b for b in self._snapshots if self.flops.total >= b]
        evaluated = (evaluate is not None and not (preempted and not last)
                     and (eval_due or (last and self._eval.active)
                          or (snapshots and self._eval.active)))
        logging = last or evaluated or not self._log.active or log_due or bool(snapshots)
        if logging or preempted:
            row = dict(metrics() if callable(metrics) else metrics)
            if evaluated:
                # why this evaluation runs, for an algorithm whose costly parts (BC's return
                # rollouts) run only at some occasions
                self.eval_occasion = {k for k, on in (("due", eval_due), ("last", last),
                                                      ("snapshot", bool(snapshots))) if on}
                row.update(evaluate())
            if snapshots:
                row["snapshot_flops"] = snapshots[-1]
            # None: not measured this time (e.g. a validation loss between evaluations)
            bad = [k for k, v in row.items() if _is_loss_key(k)
                   and v is not None and not math.isfinite(float(v))]
            if bad:
                self.log(row, final=True)
                return False, [], ("diverged", f"non-finite {bad[0]} at update {c.updates}")
            if logging:
                self.log(row, final=last)
        save = bool(last or preempted or ckpt_due or snapshots)
        stop = (("running", "preempted: checkpoint saved, resume from this run dir")
                if preempted and not last else None)
        return save, snapshots, stop

    def _require_restore(self) -> None:
        if self._logger is None:
            raise RuntimeError("call ctx.restore(**state) once, after building the networks "
                               "and before the first end_iteration: on a resume it loads "
                               "the state and the counters the curve continues from")

    def log(self, metrics: dict[str, Any], final: bool = False) -> dict[str, Any]:
        """Write one metrics line now, with the counters and FLOPs per role."""
        self._require_restore()
        c = self.counters
        c.wall_time = self.wall_time()
        row = {"env_steps": c.env_steps, "updates": c.updates, "samples": c.samples,
               "flops": float(self.flops.total), "wall_time": round(c.wall_time, 3),
               "iteration": c.iterations,
               **{f"flops.{role}": spent for role, spent in self.flops.by_role().items()},
               **metrics}
        self._logger.log(row, final=final)
        return row

    def snapshot_path(self, budget: float) -> Path:
        """Where the snapshot at FLOP budget ``budget`` goes (``snapshot_flops``)."""
        if self._checkpoint_path is None:
            raise ValueError("this run has no checkpoint path to snapshot next to")
        return self._checkpoint_path.parent / f"flops={budget:.6g}.pt"

    def save(self) -> None:
        """Checkpoint the named objects with counters, FLOPs and random streams. In a
        data-parallel run every rank must call it: rank 0 writes one file holding the shared
        state (networks and optimizers, identical on every rank) and, under ``ranks``, each
        rank's random streams and other objects (e.g. its envs' reward normaliser)."""
        if self._checkpoint_path is None:
            return
        ranks = None
        if self.dist.enabled:
            own = {"rng": self._capture_rng(),
                   "objects": {k: v.state_dict() for k, v in self._objects.items()
                               if v is not None and not isinstance(
                                   v, (nn.Module, torch.optim.Optimizer))}}
            ranks = self.dist.gather_objects(own)
            if not self.dist.is_main:
                return
        self.counters.wall_time = self.wall_time()
        state = {
            "objects": {k: (v.state_dict() if v is not None else None)
                        for k, v in self._objects.items()},
            "counters": asdict(self.counters),
            "accountant": self.flops.state_dict(),
            "rng": self._capture_rng(),
        }
        if ranks is not None:
            state["ranks"] = ranks
        save_checkpoint(self._checkpoint_path, state)

    # ---- random streams -----------------------------------------------------------------
    def _capture_rng(self) -> dict[str, Any]:
        state = {"torch": self.torch_rng.get_state(), "eval": self.eval_rng.get_state(),
                 "numpy": self.np_rng.bit_generator.state, "device_type": self.device.type}
        if self.device_rng is not self.torch_rng:
            state["device"] = self.device_rng.get_state()
        return state

    def _restore_rng(self, state: dict[str, Any]) -> None:
        self.torch_rng.set_state(state["torch"])
        self.np_rng.bit_generator.state = state["numpy"]
        if state.get("device_type", "cpu") == self.device.type:
            self.eval_rng.set_state(state["eval"])
            if "device" in state and self.device_rng is not self.torch_rng:
                self.device_rng.set_state(state["device"])
            return
        # Resumed on another kind of device (device=auto after a requeue): its generators
        # cannot take the other kind's state, so they restart from the seed and the
        # iteration; the curve stays reproducible for this sequence of devices.
        log.warning("checkpoint drew on %s, this run is on %s: reseeding the device and "
                    "evaluation generators", state.get("device_type", "cpu"), self.device.type)
        offset = self.seed + STREAM_SEED_STRIDE * self.dist.rank + 7919 * self.counters.iterations
        self.eval_rng.manual_seed(offset + 1)
        if self.device_rng is not self.torch_rng:
            self.device_rng.manual_seed(offset)


def end_iterations(ctxs: Sequence[RunContext],
                   metrics: Sequence[dict[str, Any] | Callable[[], dict[str, Any]]],
                   evaluate: Sequence[Callable[[], dict[str, Any]] | None] | None = None) -> None:
    """``end_iteration`` for K runs trained in lock step in one process (``train_many``).

    Each run logs, evaluates and checkpoints into its own record exactly as it would alone.
    A run that diverges stops (``ctx.stopped``; its record ends ``diverged``) while the
    others go on; a preemption checkpoints every run that is still going, then raises
    :class:`StopTraining` (``running``) so the job can be requeued.
    """
    preempted: StopTraining | None = None
    for k, ctx in enumerate(ctxs):
        if ctx.stopped is not None:
            continue
        try:
            ctx.end_iteration(metrics[k], None if evaluate is None else evaluate[k])
        except StopTraining as stop:
            ctx.stopped = stop
            if stop.status == "running":
                preempted = stop
    if preempted is not None:
        raise preempted


def all_done(ctxs: Sequence[RunContext]) -> bool:
    """True once every run of a lock-step group reached its budget or stopped."""
    return all(ctx.done or ctx.stopped is not None for ctx in ctxs)


class NullLogger:
    """What a run without a record logs to (tests; data-parallel ranks > 0)."""

    def log(self, row: dict[str, Any], final: bool = False) -> None:
        pass

    def close(self, status: str) -> None:
        pass
