"""NetHack ttyrec datasets (NLD-AA-style) for behavioural cloning, through ``nle.dataset``.

Tuyls et al. 2024 clone AutoAscend from NLD-AA (Hambro et al. 2022), a directory of ttyrecs
that AutoAscend recorded in NLE. This module builds and reads such datasets:

- :func:`record_ttyrecs` plays real NLE games and writes them in NLE's own layout
  (``root/<run>/nle.<pid>.<k>.ttyrec3.bz2`` + ``nle.<pid>.xlogfile``), a small stand-in for
  NLD-AA that tests and CPU runs can afford;
- :func:`populate` adds a ttyrec directory to the sqlite database ``nle.dataset`` reads
  (``add_nledata_directory`` for NLE-recorded data, NLD-AA included; ``add_altorg_directory``
  for the alt.org layout of NLD-NAO, whose ttyrecs hold no keypresses and cannot be cloned);
- :class:`TtyrecSequences` streams time-major (T, B) windows of games for training, split
  into train and val by game.

Alignment (verified against NLE by recording a policy's observations, see
``tests/test_ttyrec.py``): frame ``t`` of a ttyrec is the screen the player saw (frame 0 is
the first observation after ``env.reset()``) and ``keypresses[t]`` is the key pressed in
response to it, so the BC target of frame ``t`` is ``keypresses[t]`` and the previous action
is ``keypresses[t - 1]``. A game that does not die ends with the keys that quit it (NLE's
Esc, M-q, y, spaces through the end-of-game screens when its step limit cuts it; the
recorder's Esc..., M-q, y, Esc... in :func:`record_ttyrecs`), recorded like any other keys.

Actions are NLE's full keyboard, :data:`ACTIONS` = ``nle.nethack.ACTIONS`` (121 actions, the
action set of ``NetHackChallenge-v0``). Three keys appear twice in it (``"`` = SEEAMULET /
QUOTE, ``$`` = SEEGOLD / DOLLAR, ``+`` = SEESPELLS / PLUS); a keypress maps to the first
(the command), which sends the same key to the game.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import io
import logging
import math
import sqlite3
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

KINDS = ("auto", "nle", "altorg")
SPLITS = ("train", "val")
ROWS, COLS = 24, 80  # the tty NLE records


class TtyrecError(ValueError):
    """A ttyrec directory or database that cannot be used (the message names the path)."""


def _nle():
    # NLE logs "Not saving any NLE data." / "Created savedir" at INFO for every env it builds
    logging.getLogger("nle.env.base").setLevel(logging.WARNING)
    try:
        import nle  # noqa: F401  (registers the NetHack ids with gymnasium)
        import nle.dataset as nld
        from nle import nethack
    except ImportError as err:
        raise ImportError(f"NetHack ttyrecs need the NetHack Learning Environment: pip install "
                          f"'rl-scaling[nethack]' (nle==1.3.0); {err}") from err
    return nethack, nld


def _actions() -> tuple[int, ...]:
    nethack, _ = _nle()
    return tuple(int(a) for a in nethack.ACTIONS)


ACTIONS: tuple[int, ...] = _actions()
"""The keys of NLE's full action set (``nle.nethack.ACTIONS``, as ``NetHackChallenge-v0``
uses): 121 actions; index ``i`` presses key ``ACTIONS[i]``."""

NUM_ACTIONS = len(ACTIONS)


def _key_table() -> np.ndarray:
    table = np.full(256, -1, dtype=np.int64)
    for index, key in reversed(list(enumerate(ACTIONS))):  # reversed: the first index wins
        table[key] = index
    return table


_KEY_TO_ACTION = _key_table()


def keypress_to_action(keys: np.ndarray) -> np.ndarray:
    """Map keypresses (bytes, any shape) to indices into :data:`ACTIONS` (int64, same shape);
    -1 where the key is not an NLE action (e.g. 0, the padding of a finished row)."""
    return _KEY_TO_ACTION[np.asarray(keys).astype(np.uint8, copy=False)]


# ---------------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------------


def record_ttyrecs(out_dir: str | Path, *, games: int, seed: int,
                   env_id: str = "NetHackChallenge-v0", max_steps: int = 200,
                   policy: Callable[[dict], int] | None = None) -> Path:
    """Play ``games`` real NLE games of ``env_id`` and record them as ttyrecs.

    Writes ``out_dir/seed<seed>/nle.<pid>.<k>.ttyrec3.bz2`` and the run's ``xlogfile`` (NLE's
    layout) and returns ``out_dir``, the root :func:`populate` takes (several recordings with
    other seeds may share it). ``policy(obs) -> action index`` sees the env's observation dict
    (all of NLE's keys, ``tty_chars`` included); None plays uniformly random actions drawn from
    ``np.random.default_rng(seed)``. Each game's NetHack seeds are drawn from the same
    generator, so a seed records the same games (``NetHackChallenge-v0`` forbids seeding
    through its API; the recorder sets the seeds of the NetHack instance underneath). A game
    still running after ``max_steps`` actions is quit in-game (Esc, M-q, y, Esc...: keys in
    its ttyrec after the policy's), so it ends in the xlogfile like a death: only games listed
    there enter a dataset.
    """
    nethack, _ = _nle()
    import gymnasium
    from gymnasium.envs.registration import load_env_creator

    if isinstance(games, bool) or int(games) != games or games < 1:
        raise TtyrecError(f"record_ttyrecs: games={games!r} must be an integer >= 1")
    if isinstance(max_steps, bool) or int(max_steps) != max_steps or max_steps < 1:
        raise TtyrecError(f"record_ttyrecs: max_steps={max_steps!r} must be an integer >= 1")
    root = Path(out_dir)
    run = root / f"seed{seed}"
    if run.exists():
        raise TtyrecError(f"{run} exists: record_ttyrecs writes each seed once into a new "
                          f"directory")
    root.mkdir(parents=True, exist_ok=True)
    spec = gymnasium.spec(env_id)
    # NLE's own step limit stays out of reach: its in-game quit fails in some menus (a menu's
    # "Search for:" prompt), leaving the game unfinished and out of the xlogfile; the
    # recorder cuts games itself and quits with _quit()
    env = load_env_creator(spec.entry_point)(**{
        **spec.kwargs, "save_ttyrec_every": 1, "savedir": str(run),
        "max_episode_steps": 10**9})
    rng = np.random.default_rng(seed)
    try:
        num_actions = int(env.action_space.n)
        for game in range(int(games)):
            core, disp = rng.integers(0, 2**63 - 1, size=2)
            nethack.Nethack.set_initial_seeds(env.nethack, int(core), int(disp), False)
            obs, _ = env.reset()
            for _ in range(int(max_steps)):
                action = int(rng.integers(num_actions)) if policy is None else int(policy(obs))
                obs, _, terminated, truncated, _ = env.step(action)
                if terminated or truncated:
                    break
            if env.nethack.in_normal_game() and not _quit(env.nethack):
                raise TtyrecError(f"{run}: game {game} did not end when quit")
    finally:
        env.close()
    xlogs = sorted(run.glob("*.xlogfile"))
    ended = sum(len(p.read_text().splitlines()) for p in xlogs)
    if ended != games:
        raise TtyrecError(f"{run}: {ended} of {games} recorded games reached the xlogfile")
    return root


ESC = 27
QUIT_KEYS = (ESC, ESC, ESC, 0x80 | ord("q"), ord("y")) + (ESC,) * 8


def _quit(game: Any, attempts: int = 10) -> bool:
    """Quit a running NetHack game (an ``nle.nethack.Nethack``) through its keyboard: Esc out
    of prompts and menus, M-q, y, then Esc through the end-of-game questions and screens. The
    keys go to the game (and its ttyrec) as the player's. True once the game is over."""
    for _ in range(attempts):
        for key in QUIT_KEYS:
            _, done = game.step(key)
            if done:
                return True
    return False


# ---------------------------------------------------------------------------------------------
# The database
# ---------------------------------------------------------------------------------------------


def _check_db(dbfile: Path) -> None:
    """Raise TtyrecError unless ``dbfile`` is an ``nle.dataset`` database."""
    try:
        conn = sqlite3.connect(f"file:{dbfile}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        raise TtyrecError(f"{dbfile} is not a ttyrec database ({err})") from None
    missing = {"meta", "ttyrecs", "games", "datasets", "roots"} - tables
    if missing:
        raise TtyrecError(f"{dbfile} is not a ttyrec database (no {sorted(missing)} tables)")


def _root_of(dbfile: Path, name: str) -> str | None:
    _, nld = _nle()
    with nld.db.db(filename=str(dbfile)) as conn:
        row = conn.execute("SELECT root FROM roots WHERE dataset_name=?", (name,)).fetchone()
    return None if row is None else str(row[0])


def _query_count(dbfile: Path, name: str) -> int:
    _, nld = _nle()
    with nld.db.db(filename=str(dbfile)) as conn:
        return int(nld.db.count_games(name, conn=conn))


def _detect(root: Path, kind: str) -> tuple[str, Path]:
    """The layout of ``root`` and the directory to add: (``"nle"`` | ``"altorg"``, path)."""
    nle_runs = glob.glob(str(root / "*" / "*.xlogfile"))
    nested = root / "nle_data"  # NLD-AA unzips to nld-aa/nle_data/<run>/...
    if kind in ("auto", "nle") and not nle_runs and glob.glob(str(nested / "*" / "*.xlogfile")):
        return "nle", nested
    if kind == "auto":
        if nle_runs:
            return "nle", root
        if glob.glob(str(root / "xlogfile.*")):
            return "altorg", root
        if glob.glob(str(root / "*.xlogfile")):
            raise TtyrecError(f"{root} is one NLE run (its xlogfile is in it): give the "
                              f"directory above it, which may hold several runs")
        raise TtyrecError(f"{root} holds no ttyrec dataset (no */*.xlogfile of NLE runs, no "
                          f"xlogfile.* of alt.org)")
    return kind, root


def populate(root: str | Path, name: str, dbfile: str | Path, *, kind: str = "auto") -> int:
    """Add the ttyrec directory ``root`` to the database ``dbfile`` as dataset ``name``.

    ``dbfile`` is created where missing. ``kind``: ``"nle"`` (NLE-recorded runs,
    ``root/<run>/nle.*.ttyrec*.bz2`` + ``nle.*.xlogfile``: NLD-AA, :func:`record_ttyrecs`;
    an NLD-AA ``root`` holding ``nle_data/`` is read there), ``"altorg"`` (alt.org's
    ``root/<player>/*.ttyrec.bz2`` + ``xlogfile.*`` + ``blacklist.txt``: NLD-NAO) or
    ``"auto"`` (from the files). Only games that ended (listed in an xlogfile) are added.
    Idempotent: a ``name`` already in the database is left as it is (it must have the same
    root). Returns the number of games in the dataset.
    """
    if kind not in KINDS:
        raise TtyrecError(f"populate: kind={kind!r} must be one of {KINDS}")
    root, dbfile = Path(root).absolute(), Path(dbfile).absolute()
    dbfile.parent.mkdir(parents=True, exist_ok=True)
    # the jobs of a sweep populate the same database at once: one at a time, the others then
    # find the dataset there
    with open(dbfile.with_name(dbfile.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _populate(root, name, dbfile, kind)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _populate(root: Path, name: str, dbfile: Path, kind: str) -> int:
    _, nld = _nle()
    if dbfile.exists():
        _check_db(dbfile)
        existing = _root_of(dbfile, name)
        if existing is not None:
            _, wanted = _detect(root, kind) if root.is_dir() else (kind, root)
            if Path(existing) != wanted.absolute():
                raise TtyrecError(f"{dbfile} already has dataset {name!r} from {existing}, "
                                  f"not {wanted}")
            return _query_count(dbfile, name)
    if not root.is_dir():
        raise TtyrecError(f"{root}: no such ttyrec directory")
    layout, path = _detect(root, kind)
    pattern = "*.ttyrec*" if layout == "nle" else "*.ttyrec.bz2"
    if not glob.glob(str(path / "*" / pattern)):
        raise TtyrecError(f"{path} holds no ttyrecs ({'*/' + pattern})")
    if layout == "altorg" and not (path / "blacklist.txt").is_file():
        raise TtyrecError(f"{path / 'blacklist.txt'} is missing (alt.org layout; it may be "
                          f"empty)")
    if not dbfile.exists():
        dbfile.parent.mkdir(parents=True, exist_ok=True)
        nld.db.create(str(dbfile))
    add = nld.add_nledata_directory if layout == "nle" else nld.add_altorg_directory
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):  # nle.dataset prints its progress
            add(str(path), name, str(dbfile))
    except (AssertionError, sqlite3.DatabaseError, OSError, ValueError) as err:
        # nle.dataset asserts (mixed ttyrec versions, an unversioned NLE ttyrec); nothing is
        # committed then
        raise TtyrecError(f"{path}: nle.dataset could not add it as {layout!r} data ({err})"
                          ) from None
    logger.debug("%s", printed.getvalue().strip())
    games = _query_count(dbfile, name)
    if not games:
        with nld.db.db(filename=str(dbfile), rw=True) as conn:
            nld.db.delete_dataset(name, conn=conn)
        raise TtyrecError(f"{path} holds no finished games (none of its ttyrecs is in an "
                          f"xlogfile)")
    return games


# ---------------------------------------------------------------------------------------------
# Training sequences
# ---------------------------------------------------------------------------------------------


def _held_out(seed: int, gameid: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, gameid): the game is in val when it is below
    ``val_fraction`` (stable when games are added, unlike a shuffled cut)."""
    digest = hashlib.blake2b(f"{seed}/{gameid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def split_games(gameids: list[int], seed: int, val_fraction: float) -> dict[str, list[int]]:
    """``{"train": [...], "val": [...]}`` (sorted gameids): a game is held out when
    ``_held_out(seed, gameid) < val_fraction``; with two games or more and
    ``0 < val_fraction``, each split gets at least one (the lowest draw goes to val, the highest
    to train)."""
    draws = sorted((_held_out(seed, g), g) for g in gameids)
    val = {g for u, g in draws if u < val_fraction}
    if len(draws) >= 2 and val_fraction > 0:
        if not val:
            val.add(draws[0][1])
        if len(val) == len(draws):
            val.discard(draws[-1][1])
    return {"train": sorted(g for g in gameids if g not in val), "val": sorted(val)}


class TtyrecSequences:
    """Time-major (T, B) training sequences from a populated ttyrec dataset, split into train /
    val by game.

    Iterating yields dicts of torch tensors (``T = seq_len``, ``B = batch_size``):

    - ``tty_chars`` uint8 (T, B, 24, 80), ``tty_colors`` int8 (T, B, 24, 80) (0..31, the
      env's space: NLE's 16 colours, values from 16 up occur too), ``tty_cursor`` uint8
      (T, B, 2) (row, column): the observation as ``env=nethack`` gives it with these keys;
    - ``action`` int64 (T, B): the key pressed on that frame as an index into :data:`ACTIONS`,
      -1 where it is not an action or the row is padding (ignored by the loss);
    - ``prev_action`` int64 (T, B): the previous frame's action in the same game;
      ``num_actions`` (the "none" index) at a game's first frame and after a key that is not
      an action;
    - ``first`` bool (T, B): the game's first frame; ``done`` bool (T, B): its last frame;
    - ``valid`` bool (T, B): a real frame (False: padding of a row whose games are used up,
      only when not looping); ``gameid`` int64 (T, B) (0 on padding).

    Row b of consecutive batches continues the same stream of games (an LSTM may carry its
    state; ``done`` of a batch's last step looks one batch ahead, so batches are converted
    one ahead of what is yielded). ``loop`` (default: True for train, False for val): cycle
    through the split's games forever, each row through its own share in an order shuffled by
    ``order_seed`` (default ``seed``; nle.dataset assigns game i to row i mod B); False: one
    pass in gameid order, rows padded once their games are used up, and the stream ends. A
    split with fewer games than rows repeats them (loop) or pads the spare rows (one pass).
    ``threads``: ``nle.dataset`` decodes the rows on that many threads (1: in this thread).
    """

    def __init__(self, dbfile: str | Path, name: str, *, split: str = "train",
                 val_fraction: float = 0.1, batch_size: int, seq_len: int, seed: int,
                 loop: bool | None = None, threads: int = 2,
                 order_seed: int | None = None) -> None:
        _, nld = _nle()
        if split not in SPLITS:
            raise TtyrecError(f"TtyrecSequences: split={split!r} must be one of {SPLITS}")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise TtyrecError(f"TtyrecSequences: val_fraction={val_fraction!r} must be in "
                              f"[0, 1)")
        for key, value in (("batch_size", batch_size), ("seq_len", seq_len),
                           ("threads", threads)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise TtyrecError(f"TtyrecSequences: {key}={value!r} must be an integer >= 1")
        self.dbfile = Path(dbfile).absolute()
        if not self.dbfile.is_file():
            raise TtyrecError(f"{self.dbfile}: no such ttyrec database (populate() it first)")
        _check_db(self.dbfile)
        self.name, self.split = name, split
        with nld.db.db(filename=str(self.dbfile)) as conn:
            root = conn.execute("SELECT root, ttyrec_version FROM roots WHERE dataset_name=?",
                                (name,)).fetchone()
            if root is None:
                raise TtyrecError(f"{self.dbfile} has no dataset {name!r} (populate() it)")
            # the games TtyrecDataset can load: those with ttyrecs in the dataset
            gameids = [int(r[0]) for r in conn.execute(
                "SELECT DISTINCT ttyrecs.gameid FROM ttyrecs JOIN datasets "
                "ON ttyrecs.gameid = datasets.gameid WHERE datasets.dataset_name=?", (name,))]
        self.ttyrec_version = int(root[1])
        if self.ttyrec_version < 2:
            raise TtyrecError(f"{self.dbfile}: dataset {name!r} has ttyrec version "
                              f"{self.ttyrec_version}, without keypresses (alt.org / NLD-NAO); "
                              f"behavioural cloning needs NLE-recorded ttyrecs")
        self.games: list[int] = split_games(gameids, seed, float(val_fraction))[split]
        if not self.games:
            raise TtyrecError(f"{self.dbfile}: the {split} split of {name!r} is empty "
                              f"({len(gameids)} games, val_fraction={val_fraction})")
        self.batch_size, self.seq_len, self.seed = int(batch_size), int(seq_len), int(seed)
        # the shuffle of a looping stream (default: seed; a resumed run passes another, so it
        # does not re-read the games it started with); the split always follows ``seed``
        self.order_seed = self.seed if order_seed is None else int(order_seed)
        self.loop = (split == "train") if loop is None else bool(loop)
        self.threads = int(threads)
        self.num_actions = NUM_ACTIONS
        self.samples_per_batch = self.batch_size * self.seq_len
        self._open: weakref.WeakSet = weakref.WeakSet()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        generator = self._batches()
        self._open.add(generator)
        return generator

    def close(self) -> None:
        """Stop the open iterators (and their decoding threads)."""
        for generator in list(self._open):
            generator.close()

    def _order(self) -> tuple[list[int], int]:
        """The gameids handed to nle.dataset and the rows it fills."""
        games = list(self.games)
        if not self.loop:
            return games, min(self.batch_size, len(games))
        order = np.random.default_rng(self.order_seed).permutation(len(games))
        games = [games[i] for i in order]
        # every row needs a game of its own to cycle through
        return games * math.ceil(self.batch_size / len(games)), self.batch_size

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        _, nld = _nle()
        gameids, rows = self._order()
        pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        try:
            dataset = nld.TtyrecDataset(self.name, batch_size=rows, seq_length=self.seq_len,
                                        rows=ROWS, cols=COLS, dbfilename=str(self.dbfile),
                                        threadpool=pool, gameids=gameids, shuffle=False,
                                        loop_forever=self.loop)
            last_game = np.zeros(rows, dtype=np.int64)  # 0: no game yet
            last_action = np.full(rows, self.num_actions, dtype=np.int64)
            pending = None
            for raw in dataset:
                batch = self._convert(raw, last_game, last_action)
                if pending is not None:
                    yield self._finish(pending, batch["first"][0] | ~batch["valid"][0])
                pending = batch
            if pending is not None:
                yield self._finish(pending, np.ones(rows, dtype=bool))
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _convert(self, raw: dict[str, np.ndarray], last_game: np.ndarray,
                 last_action: np.ndarray) -> dict[str, np.ndarray]:
        """One nle.dataset batch (B, T, ...; its arrays are reused) -> time-major copies with
        the per-row carry (``last_game``, ``last_action``, updated in place)."""
        gameid = raw["gameids"].T.astype(np.int64)  # (T, B)
        valid = gameid != 0
        prev_game = np.concatenate([last_game[None], gameid[:-1]])
        # nle.dataset's "done" marks the first frame of a newly loaded game (a row that cycles
        # through one game meets the same gameid again); the gameid change catches the first
        # game of each row, whose flag nle.dataset leaves at 0
        first = valid & ((gameid != prev_game) | raw["done"].T.astype(bool))
        action = np.where(valid, keypress_to_action(raw["keypresses"].T), -1)
        before = np.concatenate([last_action[None], action[:-1]])
        prev_action = np.where(first | ~valid | (before < 0), self.num_actions, before)
        last_game[:] = gameid[-1]
        last_action[:] = action[-1]
        return {
            # copies (order C): with one row the swapped view is already contiguous, and
            # nle.dataset overwrites its arrays with the next batch
            "tty_chars": raw["tty_chars"].swapaxes(0, 1).copy(),
            "tty_colors": raw["tty_colors"].swapaxes(0, 1).copy(),
            "tty_cursor": raw["tty_cursor"].swapaxes(0, 1).astype(np.uint8),
            "action": action, "prev_action": prev_action, "first": first, "valid": valid,
            "gameid": gameid,
        }

    def _finish(self, batch: dict[str, np.ndarray], next_starts: np.ndarray
                ) -> dict[str, torch.Tensor]:
        """Add ``done`` (a frame followed by another game's first frame, padding or the end
        of the stream) and pad spare rows; numpy -> torch."""
        valid = batch["valid"]
        after = np.concatenate([batch["first"][1:] | ~valid[1:], next_starts[None]])
        batch["done"] = valid & after
        spare = self.batch_size - valid.shape[1]
        out = {}
        for key, value in batch.items():
            if spare:
                fill = {"action": -1, "prev_action": self.num_actions}.get(key, 0)
                pad = np.full((value.shape[0], spare, *value.shape[2:]), fill, value.dtype)
                value = np.concatenate([value, pad], axis=1)
            out[key] = torch.from_numpy(value)
        return out
