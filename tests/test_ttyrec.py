"""NetHack ttyrec datasets (agents/ttyrec.py) and the BC policy (agents/nethack_net.py's
NetHackBCNet): real NLE games recorded into a temporary directory, read back through
nle.dataset, and the policy trained and stepped on them."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("nle")

from agents import ttyrec  # noqa: E402
from agents.nethack_net import NetHackBCNet  # noqa: E402
from rl_scaling.context import count_params  # noqa: E402
from rl_scaling.flops import flops_by_module, forward_flops  # noqa: E402

GAMES, STEPS = 4, 50
OBS_KEYS = ("tty_chars", "tty_colors", "tty_cursor")


class Recorder:
    """A random policy that keeps what it saw and what it pressed."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.frames: list[dict[str, np.ndarray]] = []
        self.actions: list[int] = []

    def __call__(self, obs: dict) -> int:
        self.frames.append({k: np.array(obs[k], copy=True) for k in OBS_KEYS})
        self.actions.append(int(self.rng.integers(ttyrec.NUM_ACTIONS)))
        return self.actions[-1]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """4 games of 50 random actions, recorded and populated: (dbfile, name, recorder)."""
    tmp = tmp_path_factory.mktemp("ttyrec")
    recorder = Recorder(1)
    root = ttyrec.record_ttyrecs(tmp / "data", games=GAMES, seed=0, max_steps=STEPS,
                                 policy=recorder)
    db = tmp / "ttyrecs.db"
    assert ttyrec.populate(root, "rec", db) == GAMES
    return db, "rec", recorder


def stream(db, name, **kwargs) -> list[dict[str, torch.Tensor]]:
    kwargs = {"batch_size": 1, "seq_len": 37, "seed": 0, "threads": 1, **kwargs}
    return list(ttyrec.TtyrecSequences(db, name, **kwargs))


def cat(batches: list[dict[str, torch.Tensor]], key: str) -> torch.Tensor:
    return torch.cat([b[key] for b in batches])


# ---------------------------------------------------------------------------------------------
# Recording and populating
# ---------------------------------------------------------------------------------------------


def test_actions_are_nethack_challenges():
    from nle import nethack

    assert ttyrec.NUM_ACTIONS == len(nethack.ACTIONS) == 121
    keys = np.arange(256)
    mapped = ttyrec.keypress_to_action(keys)
    assert mapped.dtype == np.int64 and mapped.shape == (256,)
    for key, index in zip(keys, mapped, strict=True):
        if index >= 0:
            assert ttyrec.ACTIONS[index] == key
    assert mapped[0] == -1 and mapped[ord("k")] == ttyrec.ACTIONS.index(ord("k"))
    # a key listed twice (SEEAMULET / QUOTE) maps to its first index
    assert mapped[ord('"')] == ttyrec.ACTIONS.index(ord('"'))
    assert ttyrec.keypress_to_action(np.array([[107, 0]], np.uint8)).shape == (1, 2)


def test_keypress_alignment_and_actions(recorded):
    """Frame t is what the player saw, action t the key pressed on it; the games end in the
    xlogfile (quit keys after the policy's), and random play maps to actions throughout."""
    db, name, recorder = recorded
    batches = stream(db, name, val_fraction=0.0, split="train", loop=False)
    valid = cat(batches, "valid")
    first = cat(batches, "first")[valid]
    starts = torch.nonzero(first).flatten().tolist()
    assert len(starts) == GAMES and starts[0] == 0
    bounds = [*starts, int(valid.sum())]
    action = cat(batches, "action")[valid]
    assert float((action < 0).float().mean()) < 0.05
    for g in range(GAMES):
        lo, hi = bounds[g], bounds[g + 1]
        assert hi - lo > STEPS  # the policy's steps, then the quit keys
        for t in range(STEPS):
            seen = recorder.frames[g * STEPS + t]
            for key in OBS_KEYS:
                got = cat(batches, key)[valid][lo + t].numpy()
                np.testing.assert_array_equal(got, seen[key], err_msg=f"game {g}, {t}: {key}")
            # the same key (a key listed twice in ACTIONS maps to its first index)
            pressed = recorder.actions[g * STEPS + t]
            assert int(action[lo + t]) == ttyrec.ACTIONS.index(ttyrec.ACTIONS[pressed])


def test_record_is_reproducible(tmp_path):
    roots = [ttyrec.record_ttyrecs(tmp_path / f"r{i}", games=2, seed=5, max_steps=20)
             for i in range(2)]
    chars = []
    for i, root in enumerate(roots):
        db = tmp_path / f"{i}.db"
        ttyrec.populate(root, "r", db)
        chars.append(cat(stream(db, "r", val_fraction=0.0, loop=False), "tty_chars"))
    assert torch.equal(chars[0], chars[1])
    with pytest.raises(ttyrec.TtyrecError, match="seed5"):
        ttyrec.record_ttyrecs(tmp_path / "r0", games=1, seed=5)


def test_populate_is_idempotent(recorded, tmp_path):
    db, name, _ = recorded
    root = ttyrec.record_ttyrecs(tmp_path / "more", games=1, seed=3, max_steps=5)
    copy = tmp_path / "copy.db"
    copy.write_bytes(db.read_bytes())
    assert ttyrec.populate(root, "more", copy) == 1
    assert ttyrec.populate(root, "more", copy) == 1
    assert ttyrec.populate(root, "more", copy, kind="nle") == 1
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT COUNT(*) FROM datasets").fetchone()[0] == GAMES + 1
    with pytest.raises(ttyrec.TtyrecError, match="already has dataset"):
        ttyrec.populate(tmp_path / "other", "more", copy)


def one_line(err: pytest.ExceptionInfo, path) -> None:
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message


def test_populate_errors(tmp_path):
    db = tmp_path / "t.db"
    with pytest.raises(ttyrec.TtyrecError) as err:
        ttyrec.populate(tmp_path / "missing", "x", db)
    one_line(err, tmp_path / "missing")
    empty = tmp_path / "empty" / "run"
    empty.mkdir(parents=True)
    (empty / "nle.1.xlogfile").write_text("")
    with pytest.raises(ttyrec.TtyrecError) as err:
        ttyrec.populate(empty.parent, "x", db)
    one_line(err, empty.parent)
    with pytest.raises(ttyrec.TtyrecError, match="one NLE run") as err:  # a run, not a root
        ttyrec.populate(empty, "x", db)
    one_line(err, empty)
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ttyrec.TtyrecError) as err:
        ttyrec.populate(bare, "x", db)
    one_line(err, bare)
    with pytest.raises(ttyrec.TtyrecError, match="kind"):
        ttyrec.populate(bare, "x", db, kind="zip")
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not a database" * 100)
    with pytest.raises(ttyrec.TtyrecError) as err:
        ttyrec.populate(bare, "x", corrupt)
    one_line(err, corrupt)
    other = tmp_path / "other.db"  # sqlite, but not nle.dataset's
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(ttyrec.TtyrecError) as err:
        ttyrec.populate(bare, "x", other)
    one_line(err, other)


def test_unfinished_games_are_not_a_dataset(tmp_path):
    """Ttyrecs whose games are not in the xlogfile add nothing: an error, no empty dataset."""
    root = ttyrec.record_ttyrecs(tmp_path / "d", games=1, seed=0, max_steps=5)
    for xlog in root.glob("*/*.xlogfile"):
        xlog.write_text("")
    db = tmp_path / "t.db"
    with pytest.raises(ttyrec.TtyrecError, match="no finished games") as err:
        ttyrec.populate(root, "x", db)
    one_line(err, root)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM roots").fetchone()[0] == 0


# ---------------------------------------------------------------------------------------------
# Sequences
# ---------------------------------------------------------------------------------------------


def test_split_is_by_game_disjoint_and_deterministic(recorded):
    db, name, _ = recorded
    make = ttyrec.TtyrecSequences
    train = make(db, name, split="train", val_fraction=0.3, batch_size=2, seq_len=8, seed=0)
    val = make(db, name, split="val", val_fraction=0.3, batch_size=2, seq_len=8, seed=0)
    assert train.games and val.games and not set(train.games) & set(val.games)
    assert sorted(train.games + val.games) == list(range(1, GAMES + 1))
    again = make(db, name, split="train", val_fraction=0.3, batch_size=2, seq_len=8, seed=0)
    assert again.games == train.games
    a, b = next(iter(train)), next(iter(again))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert train.loop and not val.loop and train.num_actions == 121
    assert train.samples_per_batch == 16
    # val: one pass over its games, rows padded; each frame of its games comes once
    batches = list(val)
    seen = cat(batches, "gameid")[cat(batches, "valid")]
    assert set(seen.unique().tolist()) == set(val.games)
    assert set(a["gameid"].unique().tolist()) <= set(train.games)
    # a split with no game is an error naming the database
    with pytest.raises(ttyrec.TtyrecError, match="val split") as err:
        make(db, name, split="val", val_fraction=0.0, batch_size=2, seq_len=8, seed=0)
    one_line(err, db)
    with pytest.raises(ttyrec.TtyrecError, match="no dataset"):
        make(db, "nope", batch_size=2, seq_len=8, seed=0)


def test_batches_shapes_and_carry(recorded):
    db, name, _ = recorded
    seqs = ttyrec.TtyrecSequences(db, name, split="train", val_fraction=0.3, batch_size=3,
                                  seq_len=16, seed=1, threads=2)
    it = iter(seqs)
    batches = [next(it) for _ in range(12)]  # ~ 190 frames per row: several games
    seqs.close()
    b = batches[0]
    assert b["tty_chars"].shape == (16, 3, 24, 80) and b["tty_chars"].dtype == torch.uint8
    assert b["tty_colors"].shape == (16, 3, 24, 80) and b["tty_colors"].dtype == torch.int8
    assert b["tty_cursor"].shape == (16, 3, 2) and b["tty_cursor"].dtype == torch.uint8
    for key in ("action", "prev_action", "gameid"):
        assert b[key].shape == (16, 3) and b[key].dtype == torch.int64
    for key in ("first", "done", "valid"):
        assert b[key].shape == (16, 3) and b[key].dtype == torch.bool
    assert b["first"][0].all() and b["valid"].all()  # looping: rows never run dry
    action, prev = cat(batches, "action"), cat(batches, "prev_action")
    first, done, gameid = cat(batches, "first"), cat(batches, "done"), cat(batches, "gameid")
    none = seqs.num_actions
    assert (prev[first] == none).all()
    inside = ~first[1:]
    expect = torch.where(action[:-1] >= 0, action[:-1], torch.full_like(action[:-1], none))
    assert torch.equal(prev[1:][inside], expect[inside])  # across batch boundaries too
    assert torch.equal(done[:-1], first[1:])
    assert ((gameid[1:] != gameid[:-1]) <= first[1:]).all()
    assert first[1:].any()  # several games per row in 192 steps


# ---------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------


def random_obs(steps: int, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "tty_chars": torch.randint(32, 128, (steps, batch, 24, 80), generator=g
                                   ).to(torch.uint8),
        "tty_colors": torch.randint(0, 32, (steps, batch, 24, 80), generator=g).to(torch.int8),
        "tty_cursor": torch.stack([torch.randint(0, 24, (steps, batch), generator=g),
                                   torch.randint(0, 80, (steps, batch), generator=g)], -1
                                  ).to(torch.uint8),
        "prev_action": torch.randint(0, 122, (steps, batch), generator=g),
    }


CORES = [("lstm", {}), ("transformer", {"context": 4, "depth": 2})]


@pytest.mark.parametrize(("core", "knobs"), CORES)
def test_step_by_step_equals_sequence(core, knobs):
    torch.manual_seed(0)
    net = NetHackBCNet(121, width=0.25, core=core, **knobs).eval()
    steps, batch = 10, 3
    obs = random_obs(steps, batch)
    first = torch.zeros(steps, batch, dtype=torch.bool)
    first[0] = True
    first[4, 1] = first[1, 2] = True  # game starts inside the sequence
    with torch.no_grad():
        full, _ = net(obs, first)
        assert full.shape == (steps, batch, 121)
        state, outs = net.initial_state(batch), []
        for t in range(steps):
            out, state = net({k: v[t:t + 1] for k, v in obs.items()}, first[t:t + 1], state)
            outs.append(out)
        head, mid = net({k: v[:6] for k, v in obs.items()}, first[:6])
        tail, _ = net({k: v[6:] for k, v in obs.items()}, first[6:], mid)
    torch.testing.assert_close(torch.cat(outs), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([head, tail]), full, atol=1e-5, rtol=1e-5)


def test_transformer_window_and_game_starts():
    """A 1-layer transformer's step sees its last `context` steps of its game, nothing else."""
    torch.manual_seed(0)
    net = NetHackBCNet(121, width=0.25, core="transformer", context=3).eval()
    steps = 8
    obs = random_obs(steps, 1)
    first = torch.zeros(steps, 1, dtype=torch.bool)
    first[0] = first[5] = True
    changed = {k: v.clone() for k, v in obs.items()}
    changed["prev_action"][1] = (changed["prev_action"][1] + 1) % 122
    with torch.no_grad():
        a, _ = net(obs, first)
        b, _ = net(changed, first)
    moved = (a - b).abs().amax(dim=(1, 2)) > 1e-6
    assert moved.tolist() == [False, True, True, True, False, False, False, False]


def test_policy_learns_a_recorded_batch(recorded):
    db, name, _ = recorded
    batch = next(iter(ttyrec.TtyrecSequences(db, name, batch_size=2, seq_len=16, seed=0,
                                             val_fraction=0.3, threads=1)))
    obs = {k: batch[k] for k in ("tty_chars", "tty_colors", "tty_cursor", "prev_action")}
    for core, knobs in CORES:
        torch.manual_seed(0)
        net = NetHackBCNet(ttyrec.NUM_ACTIONS, width=0.25, core=core, **knobs)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        losses = []
        for _ in range(12):
            logits, _ = net(obs, batch["first"])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                   batch["action"].reshape(-1), ignore_index=-1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        assert losses[-1] < losses[0] - 1.0, (core, losses)


def test_width_depth_heads_and_aspect_ratio():
    net = NetHackBCNet(121, width=1.0, core="transformer", aspect_ratio=128)
    assert net.hidden_size == 256 and net.depth == 2 and net.heads == 4
    assert len(net.core.blocks) == 2
    lstm = NetHackBCNet(121, width=0.5, core="lstm", aspect_ratio=64)
    assert lstm.hidden_size == 128 and lstm.core.num_layers == 2
    assert NetHackBCNet(121, width=0.001).hidden_size == 1
    with pytest.raises(ValueError, match="heads"):
        NetHackBCNet(121, width=0.25, core="transformer", heads=3)
    with pytest.raises(ValueError, match="core"):
        NetHackBCNet(121, core="gru")
    # the encoder is fixed; the scaled parts grow with the width
    small, big = (count_params(NetHackBCNet(121, width=w)) for w in (0.25, 1.0))
    assert small["total"] - small["effective"] == big["total"] - big["effective"]
    assert big["effective"] > 4 * small["effective"]


def test_flops_count_the_attention():
    steps, batch = 8, 2
    obs = random_obs(steps, batch)
    first = torch.zeros(steps, batch, dtype=torch.bool)
    net = NetHackBCNet(121, width=0.25, core="transformer", context=4)
    by_module = flops_by_module(net, (obs, first), n_samples=steps * batch)
    d, keys = 64, 3 + steps  # cached + chunk keys of each query
    assert by_module["core.blocks.0.attn"] == 2 * keys * 2 * d  # QK^T and AV
    assert by_module["core.blocks.0.attn.positions"] == 2 * 4 * d
    assert by_module["core.blocks.0.attn.qkv"] == 2 * d * 3 * d
    effective = forward_flops(net, (obs, first), n_samples=steps * batch)
    scaled = sum(f for name, f in by_module.items() if not name.startswith("encoder"))
    assert effective == scaled
    assert forward_flops(net, (obs, first), effective=False, n_samples=steps * batch) > 20e6


# ---------------------------------------------------------------------------------------------
# The env the BC policy is evaluated in
# ---------------------------------------------------------------------------------------------


def test_nethack_env_with_tty_observations():
    from envs.nethack import make_nethack

    env = make_nethack(num_envs=2, seed=0, env_id="NetHackChallenge-v0",
                       observation_keys=list(OBS_KEYS), max_episode_steps=5)
    try:
        assert env.single_action_space.n == ttyrec.NUM_ACTIONS
        assert tuple(int(a) for a in env._envs[0].actions) == ttyrec.ACTIONS
        obs = env.reset()
        assert set(obs) == set(OBS_KEYS)
        assert obs["tty_chars"].shape == (2, 24, 80) and obs["tty_chars"].dtype == np.uint8
        assert obs["tty_colors"].dtype == np.int8 and obs["tty_cursor"].shape == (2, 2)
        net = NetHackBCNet(ttyrec.NUM_ACTIONS, width=0.25).eval()
        state = net.initial_state(2)
        prev = torch.full((2,), ttyrec.NUM_ACTIONS)
        first = torch.ones(2, dtype=torch.bool)
        ended = np.zeros(2, dtype=bool)
        for _ in range(6):
            step = {k: torch.from_numpy(v)[None] for k, v in obs.items()}
            step["prev_action"] = prev[None]
            with torch.no_grad():
                logits, state = net(step, first[None], state)
            action = logits[0].argmax(-1)
            obs, _, terminated, truncated, _ = env.step(action.numpy())
            first = torch.from_numpy(terminated | truncated)
            ended |= terminated | truncated
            prev = torch.where(first, torch.full_like(action, ttyrec.NUM_ACTIONS), action)
        assert ended.all()
    finally:
        env.close()
