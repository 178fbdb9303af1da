"""The one rollout buffer and the one GAE (every on-policy algorithm), the one V-trace
(IMPALA), and the one replay buffer (every off-policy algorithm).

Storage lives on the training device, so on a GPU neither the rollout, the advantage
computation nor replay sampling copies through the host.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    last_value: torch.Tensor,
    last_done: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016).

    All inputs are (T, N) except ``last_value``/``last_done`` (N,). ``dones[t]`` marks
    that the observation at step t starts a new episode (the previous one ended), as
    in the Procgen PPO recipe. Returns ``(advantages, returns)``, both (T, N).
    """
    num_steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(last_value)
    for t in reversed(range(num_steps)):
        if t == num_steps - 1:
            next_nonterminal = 1.0 - last_done.to(values.dtype)
            next_value = last_value
        else:
            next_nonterminal = 1.0 - dones[t + 1].to(values.dtype)
            next_value = values[t + 1]
        delta = rewards[t] + gamma * next_value * next_nonterminal - values[t]
        last_gae = delta + gamma * gae_lambda * next_nonterminal * last_gae
        advantages[t] = last_gae
    return advantages, advantages + values


def vtrace(
    behaviour_logprobs: torch.Tensor,
    target_logprobs: torch.Tensor,
    rewards: torch.Tensor,
    values: torch.Tensor,
    bootstrap_value: torch.Tensor,
    discounts: torch.Tensor,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
    pg_rho_bar: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """V-trace targets and policy-gradient advantages (Espeholt et al. 2018, IMPALA).

    All inputs are (T, B) except ``bootstrap_value`` (B,), the value of the observation after
    the last step. ``discounts[t]`` is ``gamma`` where step t did not end its episode and 0
    where it did (the value after a terminal step is 0). With importance weights
    ``rho_t = pi(a_t|x_t) / mu(a_t|x_t)`` (target over behaviour policy), clipped at
    ``rho_bar`` (the fixed point) and ``c_bar`` (the traces), returns ``(vs, pg_advantages)``:

        vs_t = V(x_t) + sum_k (prod_{i<k} gamma c_i) rho_k (r_k + gamma V(x_{k+1}) - V(x_k))
        pg_advantage_t = min(pg_rho_bar, rho_t) (r_t + gamma vs_{t+1} - V(x_t))

    On-policy (``rho = 1``) with ``rho_bar = c_bar = 1``, ``vs`` is the n-step return
    bootstrapped at the end of the unroll. Computed without gradients (targets only).
    """
    with torch.no_grad():
        rhos = (target_logprobs - behaviour_logprobs).exp()
        clipped_rhos = rhos.clamp(max=rho_bar)
        cs = rhos.clamp(max=c_bar)
        next_values = torch.cat([values[1:], bootstrap_value.unsqueeze(0)])
        deltas = clipped_rhos * (rewards + discounts * next_values - values)
        vs_minus_v = torch.zeros_like(values)
        acc = torch.zeros_like(bootstrap_value)
        for t in reversed(range(values.shape[0])):
            acc = deltas[t] + discounts[t] * cs[t] * acc
            vs_minus_v[t] = acc
        vs = vs_minus_v + values
        next_vs = torch.cat([vs[1:], bootstrap_value.unsqueeze(0)])
        pg_rhos = rhos.clamp(max=rho_bar if pg_rho_bar is None else pg_rho_bar)
        pg_advantages = pg_rhos * (rewards + discounts * next_vs - values)
    return vs, pg_advantages


class RolloutBuffer:
    """Fixed-size (num_steps x num_envs) storage for one on-policy rollout."""

    def __init__(self, num_steps: int, num_envs: int, obs_shape: tuple[int, ...],
                 obs_dtype: torch.dtype, device: torch.device, *,
                 action_shape: tuple[int, ...] = (), action_dtype: torch.dtype = torch.long,
                 dist_params: int = 0) -> None:
        """``action_shape``/``action_dtype``: one action (a policy distribution's, see
        ``agents.distributions``; the default is a discrete action). ``dist_params``: P > 0
        also stores the behaviour policy's distribution parameters (T, N, P), so a trust
        region against it (V-MPO's KL) needs no extra forward; 0 stores none."""
        self.num_steps, self.num_envs, self.device = num_steps, num_envs, device
        self.obs = torch.zeros((num_steps, num_envs, *obs_shape), dtype=obs_dtype, device=device)
        self.actions = torch.zeros((num_steps, num_envs, *action_shape), dtype=action_dtype,
                                   device=device)
        self.dist_params = (torch.zeros((num_steps, num_envs, dist_params), device=device)
                            if dist_params > 0 else None)
        self.logprobs = torch.zeros((num_steps, num_envs), device=device)
        self.rewards = torch.zeros((num_steps, num_envs), device=device)
        self.dones = torch.zeros((num_steps, num_envs), dtype=torch.bool, device=device)
        self.values = torch.zeros((num_steps, num_envs), device=device)
        self.advantages = torch.zeros((num_steps, num_envs), device=device)
        self.returns = torch.zeros((num_steps, num_envs), device=device)

    @property
    def size(self) -> int:
        return self.num_steps * self.num_envs

    def add(self, step: int, obs: torch.Tensor, done: torch.Tensor, action: torch.Tensor,
            logprob: torch.Tensor, value: torch.Tensor, reward: torch.Tensor | None,
            dist_params: torch.Tensor | None = None, envs: slice = slice(None)) -> None:
        """Store step ``step`` of the envs ``envs`` (all by default; a group when env groups
        step apart). ``reward=None``: it is not known yet; set ``rewards[step, envs]``
        when the step's result arrives."""
        self.obs[step, envs].copy_(obs)
        self.dones[step, envs].copy_(done)
        self.actions[step, envs].copy_(action)
        self.logprobs[step, envs].copy_(logprob)
        self.values[step, envs].copy_(value)
        if reward is not None:
            self.rewards[step, envs].copy_(reward)
        if self.dist_params is not None:
            self.dist_params[step, envs].copy_(dist_params)

    def finish(self, last_value: torch.Tensor, last_done: torch.Tensor, gamma: float,
               gae_lambda: float) -> None:
        self.advantages, self.returns = compute_gae(
            self.rewards, self.values, self.dones, last_value, last_done, gamma, gae_lambda
        )

    def minibatches(self, num_minibatches: int,
                    generator: torch.Generator | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Yield ``num_minibatches`` random disjoint minibatches of flattened samples
        (``dist_params`` among them where the buffer stores them)."""
        if self.size % num_minibatches:
            raise ValueError(
                f"num_envs*num_steps={self.size} is not divisible by "
                f"num_minibatches={num_minibatches}"
            )
        mb_size = self.size // num_minibatches
        flat = {
            "obs": self.obs.flatten(0, 1),
            "actions": self.actions.flatten(0, 1),
            "logprobs": self.logprobs.flatten(),
            "values": self.values.flatten(),
            "advantages": self.advantages.flatten(),
            "returns": self.returns.flatten(),
        }
        if self.dist_params is not None:
            flat["dist_params"] = self.dist_params.flatten(0, 1)
        perm = torch.randperm(self.size, generator=generator, device="cpu").to(self.device)
        for start in range(0, self.size, mb_size):
            idx = perm[start:start + mb_size]
            yield {k: v[idx] for k, v in flat.items()}


class ReplayBuffer:
    """A ring buffer of transitions for ``seeds`` independent runs, on the training device.

    Each seed has its own rows (dim 0) and is sampled with its own generator, so K seeds
    trained together draw exactly the batches each would draw alone. A transition is
    ``(obs, action, reward, next_obs, terminated)``; ``next_obs`` is the real next
    observation (the final one where an episode was truncated), so a time limit bootstraps.

    ``seed_state(k)`` is seed k's part as an object with ``state_dict``/``load_state_dict``
    for its run's checkpoint (only the filled rows are saved).
    """

    def __init__(self, seeds: int, capacity: int, obs_shape: tuple[int, ...], action_dim: int,
                 device: torch.device | str = "cpu", obs_dtype: torch.dtype = torch.float32):
        if capacity <= 0:
            raise ValueError(f"replay capacity must be > 0, got {capacity}")
        self.seeds, self.capacity, self.device = seeds, int(capacity), torch.device(device)
        shape = (seeds, self.capacity)
        self.obs = torch.zeros((*shape, *obs_shape), dtype=obs_dtype, device=self.device)
        self.next_obs = torch.zeros_like(self.obs)
        self.actions = torch.zeros((*shape, action_dim), device=self.device)
        self.rewards = torch.zeros(shape, device=self.device)
        self.terminated = torch.zeros(shape, device=self.device)
        self.pos = 0  # next row to write (the same for every seed: they add in lock step)
        self.size = 0

    def add(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
            next_obs: torch.Tensor, terminated: torch.Tensor) -> None:
        """Add n transitions per seed: tensors (seeds, n, ...)."""
        n = obs.shape[1]
        rows = (torch.arange(n) + self.pos) % self.capacity
        rows = rows.to(self.device)
        self.obs[:, rows] = obs.to(self.device, self.obs.dtype)
        self.next_obs[:, rows] = next_obs.to(self.device, self.obs.dtype)
        self.actions[:, rows] = actions.to(self.device, torch.float32)
        self.rewards[:, rows] = rewards.to(self.device, torch.float32)
        self.terminated[:, rows] = terminated.to(self.device, torch.float32)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generators: list[torch.Generator]
               ) -> tuple[torch.Tensor, ...]:
        """``batch_size`` transitions per seed, uniformly, seed k drawing with
        ``generators[k]``: (obs, actions, rewards, next_obs, terminated), each (seeds, B, ...).
        """
        idx = torch.stack([torch.randint(0, self.size, (batch_size,), generator=g,
                                         device=g.device) for g in generators]).to(self.device)
        seed_rows = torch.arange(self.seeds, device=self.device)[:, None]
        return (self.obs[seed_rows, idx].float(), self.actions[seed_rows, idx],
                self.rewards[seed_rows, idx], self.next_obs[seed_rows, idx].float(),
                self.terminated[seed_rows, idx])

    def all(self) -> tuple[torch.Tensor, ...]:
        """Every stored transition, (seeds, size, ...) in ring order (for held-out checks)."""
        n = self.size
        return (self.obs[:, :n].float(), self.actions[:, :n], self.rewards[:, :n],
                self.next_obs[:, :n].float(), self.terminated[:, :n])

    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for t in
                   (self.obs, self.next_obs, self.actions, self.rewards, self.terminated))

    def seed_state(self, seed_index: int) -> _SeedReplayState:
        return _SeedReplayState(self, seed_index)


class _SeedReplayState:
    """One seed's rows of a :class:`ReplayBuffer` for its run's checkpoint."""

    FIELDS = ("obs", "next_obs", "actions", "rewards", "terminated")

    def __init__(self, buffer: ReplayBuffer, seed_index: int) -> None:
        self.buffer, self.k = buffer, seed_index

    def state_dict(self) -> dict:
        b = self.buffer
        out = {name: getattr(b, name)[self.k, :b.size].cpu().clone() for name in self.FIELDS}
        return {**out, "pos": b.pos, "size": b.size, "capacity": b.capacity}

    def load_state_dict(self, state: dict) -> None:
        """Load a seed's rows; a buffer of another capacity (the run's budget was raised, so
        its capacity grew) gets them oldest first, the newest kept if they do not fit."""
        b = self.buffer
        size, pos = int(state["size"]), int(state["pos"])
        order = torch.arange(size)
        if size == state["capacity"] and b.capacity != state["capacity"]:
            order = (order + pos) % size  # a full ring: oldest row first
        keep = order[-b.capacity:] if b.capacity != state["capacity"] else order
        for name in self.FIELDS:
            saved = state[name][keep]
            rows = getattr(b, name)[self.k, :len(keep)]
            if rows.shape != saved.shape:
                raise ValueError(f"replay {name}: shape {tuple(saved.shape)} "
                                 f"!= {tuple(rows.shape)}")
            rows.copy_(saved)
        if b.capacity == state["capacity"]:
            b.pos, b.size = pos, size
        else:
            b.size = len(keep)
            b.pos = b.size % b.capacity
