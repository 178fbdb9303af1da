"""The one evaluation loop and the one episode-statistics helper every algorithm uses.

``evaluate(policy, envs, episodes)`` runs a policy on (held-out) envs; ``EpisodeLog`` turns
the ``info`` of training steps into the return/length/success metrics of a log line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from rl_scaling.metrics import task_generalization


class EpisodeLog:
    """Collects the episodes that end during an iteration (from each step's ``info``)."""

    def __init__(self) -> None:
        self.returns: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.success: list[np.ndarray] = []
        self.normalized: list[np.ndarray] = []  # envs with a reference return (0..1000)
        self.score: list[np.ndarray] = []  # envs that report a score (NetHack, pointmass)

    def add(self, info: dict[str, Any]) -> None:
        """Record the episodes a step's ``info`` reports (possibly none)."""
        self.returns.append(info["episode_return"])
        self.lengths.append(info["episode_length"])
        if "episode_success" in info:
            self.success.append(info["episode_success"])
        if "episode_normalized_return" in info:
            self.normalized.append(info["episode_normalized_return"])
        if "episode_score" in info:
            self.score.append(info["episode_score"])

    def gathered(self, ranks: Any) -> EpisodeLog:
        """Every data-parallel rank's episodes in one log (``ranks``: the run's
        :class:`~rl_scaling.distributed.Distributed`; itself with one rank)."""
        if not ranks.enabled:
            return self
        parts = ranks.gather_objects(
            {k: [np.concatenate(v)] if v else [] for k, v in vars(self).items()})
        merged = EpisodeLog()
        for part in parts:
            for key, arrays in part.items():
                getattr(merged, key).extend(arrays)
        return merged

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """``return_mean``, ``episode_length``, ``episodes``, ``success_rate`` and
        ``fail_to_success`` (when the env reports success), ``normalized_return_mean``
        (when it has a reference return) and ``score_mean`` (when it reports
        ``episode_score``: NetHack's in-game score, the point-mass task score) of the episodes
        collected; empty if none ended."""
        out: dict[str, float] = {}
        returns = np.concatenate(self.returns) if self.returns else np.zeros(0)
        if returns.size:
            out[f"{prefix}return_mean"] = float(returns.mean())
            out[f"{prefix}episode_length"] = float(np.concatenate(self.lengths).mean())
            out[f"{prefix}episodes"] = int(returns.size)
        success = np.concatenate(self.success) if self.success else np.zeros(0)
        if success.size:
            out[f"{prefix}success_rate"] = float(success.mean())
            out[f"{prefix}fail_to_success"] = fail_to_success(float(success.mean()))
        normalized = np.concatenate(self.normalized) if self.normalized else np.zeros(0)
        if normalized.size:
            out[f"{prefix}normalized_return_mean"] = float(normalized.mean())
        score = np.concatenate(self.score) if self.score else np.zeros(0)
        if score.size:
            out[f"{prefix}score_mean"] = float(score.mean())
        return out

    def clear(self) -> None:
        self.returns.clear()
        self.lengths.clear()
        self.success.clear()
        self.normalized.clear()
        self.score.clear()


def fail_to_success(success_rate: float) -> float | None:
    """Failures per success, ``(1 - s) / s``: Hilton et al. 2023's "natural" metric for
    CoinRun, which keeps improving as a power law long after the success rate saturates.
    None (not measured) when nothing succeeded."""
    return (1.0 - success_rate) / success_rate if success_rate > 0 else None


def evaluate(policy: Callable[[np.ndarray], np.ndarray], envs, episodes: int) -> dict[str, float]:
    """Mean return (and success rate or in-game score, if the env reports one) of ``policy``
    over at least
    ``episodes`` episodes: the first ``ceil(episodes / num_envs)`` of every env.

    ``policy`` maps a batch of observations (num_envs, ...) to actions; a recurrent one
    (``policy.recurrent`` true) also has ``reset(num_envs)`` (called first) and
    ``reset_where(done)`` (called after every step with the envs whose episode ended).
    Taking the first episodes to end across all envs instead would over-sample short
    episodes (e.g. early deaths). The envs are reset first.

    Envs with a fixed set of held-out tasks (the point-mass world's evaluation sets) say how
    many episodes cover every task once (``envs.min_eval_episodes``; ``episodes`` is raised to
    it) and report each episode's ``task_set``, ``task`` and ``normalized_score``. Then, per
    task set ``s`` of ``envs.task_sets`` (the first one unprefixed), the generalization
    metrics of :func:`rl_scaling.metrics.task_generalization` over the per-task mean scores:
    ``eval_[s_]normalized_score``, ``eval_[s_]solved_fraction`` (tasks at or above
    ``envs.solve_threshold``), ``eval_[s_]lowest_score`` (mean of the lowest
    ``envs.lowest_percentile`` %), and every task's score as ``task_score/<s>/<task>``.
    """
    episodes = max(episodes, int(getattr(envs, "min_eval_episodes", 0)))
    per_env = math.ceil(episodes / envs.num_envs)
    tasks: dict[tuple[int, int], list[float]] = {}
    returns: list[list[float]] = [[] for _ in range(envs.num_envs)]
    successes: list[list[float]] = [[] for _ in range(envs.num_envs)]
    normalized: list[list[float]] = [[] for _ in range(envs.num_envs)]
    scores: list[list[float]] = [[] for _ in range(envs.num_envs)]
    obs = envs.reset()
    # a recurrent policy keeps a state per env: it starts afresh and forgets ended episodes
    recurrent = getattr(policy, "recurrent", False)
    if recurrent:
        policy.reset(envs.num_envs)
    while min(len(r) for r in returns) < per_env:
        obs, _, terminated, truncated, info = envs.step(policy(obs))
        if recurrent:
            policy.reset_where(np.logical_or(terminated, truncated))
        # which env each finished episode ran in (the MNIST bandit ends a statistics episode
        # every step without terminating); envs that do not say: the ones that ended
        ended = info.get("episode_env")
        if ended is None:
            ended = np.flatnonzero(np.logical_or(terminated, truncated))
        success = info.get("episode_success")
        norm = info.get("episode_normalized_return")
        task_score = info.get("episode_normalized_score")
        game_score = info.get("episode_score")
        for j, env_index in enumerate(ended):
            if len(returns[env_index]) < per_env:
                if task_score is not None:
                    key = (int(info["episode_task_set"][j]), int(info["episode_task"][j]))
                    tasks.setdefault(key, []).append(float(task_score[j]))
                returns[env_index].append(float(info["episode_return"][j]))
                if success is not None:
                    successes[env_index].append(float(success[j]))
                if norm is not None:
                    normalized[env_index].append(float(norm[j]))
                if game_score is not None:
                    scores[env_index].append(float(game_score[j]))
    out = {"eval_return": float(np.mean([x for r in returns for x in r]))}
    if any(successes):
        out["eval_success"] = float(np.mean([x for s in successes for x in s]))
        out["eval_fail_to_success"] = fail_to_success(out["eval_success"])
    if any(normalized):  # envs with a reference return: the studies' 0..1000 scale
        out["eval_normalized_return"] = float(np.mean([x for n in normalized for x in n]))
    if any(scores):  # envs that report a score (NetHack's in-game score, pointmass's task's)
        out["eval_score"] = float(np.mean([x for s in scores for x in s]))
    if tasks:
        out.update(task_metrics(tasks, envs))
    return out


def task_metrics(tasks: dict[tuple[int, int], list[float]], envs) -> dict[str, float]:
    """The generalization metrics of :func:`evaluate` from ``{(set, task): scores}``."""
    names = list(getattr(envs, "task_sets", ["test"]))
    threshold = float(getattr(envs, "solve_threshold", 0.8))
    percentile = float(getattr(envs, "lowest_percentile", 10.0))
    out: dict[str, float] = {}
    for set_index, name in enumerate(names):
        per_task = {t: float(np.mean(v)) for (s, t), v in sorted(tasks.items())
                    if s == set_index}
        if not per_task:
            continue
        prefix = "eval_" if set_index == 0 else f"eval_{name}_"
        summary = task_generalization(np.array(list(per_task.values())), threshold, percentile)
        out.update({prefix + k: v for k, v in summary.items()})
        skipped = getattr(envs, "skipped_tasks", {})
        if name in skipped:  # tasks the reference could not solve, left out of the set
            out[prefix + "tasks_skipped"] = skipped[name]
        out.update({f"task_score/{name}/{t}": v for t, v in per_task.items()})
    return out
