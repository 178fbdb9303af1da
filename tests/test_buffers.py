"""The rollout buffer and GAE against hand-computed and brute-force answers."""

import numpy as np
import pytest
import torch

from agents.buffers import RolloutBuffer, compute_gae


def brute_force_gae(rewards, values, dones, last_value, last_done, gamma, lam):
    """Advantages as the explicit lambda-weighted sum of n-step TD errors, episode by episode."""
    T, N = rewards.shape
    values_ext = np.vstack([values, last_value[None]])
    starts = np.vstack([dones, last_done[None]])  # starts[t]: obs t begins a new episode
    adv = np.zeros((T, N))
    for n in range(N):
        for t in range(T):
            total, weight = 0.0, 1.0
            for k in range(t, T):
                nonterminal = 0.0 if starts[k + 1, n] else 1.0
                delta = rewards[k, n] + gamma * values_ext[k + 1, n] * nonterminal - values[k, n]
                total += weight * delta
                if not nonterminal:
                    break
                weight *= gamma * lam
            adv[t, n] = total
    return adv


@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.9, 1.0), (0.5, 0.0)])
def test_gae_matches_brute_force(gamma, lam):
    rng = np.random.default_rng(0)
    T, N = 12, 3
    rewards = rng.normal(size=(T, N))
    values = rng.normal(size=(T, N))
    dones = rng.random((T, N)) < 0.2
    last_value, last_done = rng.normal(size=N), rng.random(N) < 0.3
    adv, ret = compute_gae(*(torch.tensor(x) for x in (rewards, values, dones, last_value,
                                                        last_done)), gamma, lam)
    expected = brute_force_gae(rewards, values, dones, last_value, last_done, gamma, lam)
    np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ret.numpy(), expected + values, rtol=1e-10, atol=1e-10)


def test_gae_lambda_one_is_discounted_return_without_bootstrap_at_episode_end():
    # One env, episode of 3 steps ending at the rollout's end (last_done=True): returns are
    # plain discounted sums, independent of the value estimates.
    rewards = torch.tensor([[1.0], [0.0], [2.0]])
    values = torch.tensor([[5.0], [-3.0], [7.0]])
    dones = torch.zeros(3, 1, dtype=torch.bool)
    _, ret = compute_gae(rewards, values, dones, torch.tensor([100.0]), torch.tensor([True]),
                         0.5, 1.0)
    assert ret.squeeze().tolist() == pytest.approx([1 + 0.25 * 2, 0.5 * 2, 2.0])


def test_minibatches_partition_the_rollout():
    buf = RolloutBuffer(4, 6, (2,), torch.float32, torch.device("cpu"))
    for t in range(4):
        buf.add(t, torch.full((6, 2), float(t)), torch.zeros(6, dtype=torch.bool),
                torch.arange(6) + 10 * t, torch.zeros(6), torch.zeros(6), torch.zeros(6))
    buf.finish(torch.zeros(6), torch.zeros(6, dtype=torch.bool), 0.99, 0.95)
    seen = torch.cat([mb["actions"] for mb in buf.minibatches(3)])
    assert sorted(seen.tolist()) == sorted(buf.actions.flatten().tolist())
    assert all(len(mb["actions"]) == 8 for mb in buf.minibatches(3))
    with pytest.raises(ValueError, match="num_minibatches"):
        next(buf.minibatches(5))


def test_box_actions_and_behaviour_params_travel_with_their_samples():
    """A Gaussian policy's (T, N, d) float actions and, where asked, the behaviour policy's
    params (T, N, P) are stored and minibatched row for row with the other fields."""
    buf = RolloutBuffer(3, 2, (1,), torch.float32, torch.device("cpu"), action_shape=(2,),
                        action_dtype=torch.float32, dist_params=4)
    assert buf.actions.shape == (3, 2, 2) and buf.dist_params.shape == (3, 2, 4)
    for t in range(3):
        ids = torch.arange(2, dtype=torch.float32) + 10 * t  # one id per sample
        buf.add(t, ids[:, None], torch.zeros(2, dtype=torch.bool), ids[:, None].repeat(1, 2),
                torch.zeros(2), torch.zeros(2), torch.zeros(2), ids[:, None].repeat(1, 4))
    buf.finish(torch.zeros(2), torch.zeros(2, dtype=torch.bool), 0.99, 0.95)
    for mb in buf.minibatches(2, generator=torch.Generator().manual_seed(0)):
        assert mb["actions"].shape == (3, 2) and mb["dist_params"].shape == (3, 4)
        assert (mb["actions"] == mb["obs"]).all() and (mb["dist_params"] == mb["obs"]).all()
    plain = RolloutBuffer(3, 2, (1,), torch.float32, torch.device("cpu"))
    assert plain.dist_params is None and plain.actions.dtype == torch.long
    assert "dist_params" not in next(plain.minibatches(1))
