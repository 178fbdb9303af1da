"""The MNIST bandit of Hilton, Tang & Schulman 2023 ("Scaling laws for single-agent RL").

Every step shows each env a digit drawn uniformly at random from the chosen split; the action is
a label and the reward is 1.0 if it is right, else 0.0. Steps are independent one-step problems,
so the effective horizon is set only by the trainer's discount gamma (with GAE lambda = 1):
`terminated` and `truncated` are always False. For bookkeeping every step counts as a finished
one-step episode (episode_return = that step's reward, episode_length = 1), so the mean episode
return is the running training accuracy.

Since no episode ends for the learner, `info["final_obs"]` never appears (there is nothing to
bootstrap from); `provides_final_obs` is True in that vacuous sense.

Data: the standard MNIST IDX files when `data_path` is given; otherwise scikit-learn's bundled
8x8 digits (no download), rescaled to 0..255 and upsampled to 28x28. The held-out evaluation
envs read the test split (`env.eval: {split: test}`).
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

from envs.base import EnvConfig, EpisodeStats, VecEnv, check_actions, check_num_envs, check_seed
from rl_scaling.registry import register_env

logger = logging.getLogger(__name__)

NUM_CLASSES = 10
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DIGITS_TRAIN_FRACTION = 0.8  # first 80% of sklearn's digits are "train", the rest "test"


@dataclass
class MnistEnvConfig(EnvConfig):
    """`env=mnist`: the MNIST bandit.

    Attributes:
        family: "mnist".
        id: "mnist" (the family has one task).
        num_envs: digits shown (and labelled) per step.
        eval: overrides for the evaluation envs; by default the test split.
        data_path: directory with the MNIST IDX files; None: scikit-learn's bundled digits.
        split: "train" or "test" (the t10k files, or the last 20% of the bundled digits).
    """

    family: str = "mnist"
    id: str = "mnist"
    num_envs: int = 4
    eval: dict[str, Any] = field(default_factory=lambda: {"split": "test"})
    data_path: str | None = None
    split: str = "train"


# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, bottom of page)
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed, detected from its content).

    Format: two zero bytes, a type byte, a byte with the number of dims n, n big-endian uint32
    sizes, then the data in big-endian C order.

    Args:
        path: the file to read.

    Returns:
        The array, in native byte order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a valid IDX file (message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MNIST IDX file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"corrupt gzip file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({ndim} dims, {len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: IDX header says shape {shape} ({expected} bytes) but the file has "
            f"{len(raw)} bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _find_idx(directory: Path, name: str) -> Path:
    """Return `directory/name`, or `directory/name.gz` if only that exists."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"MNIST IDX file not found: {directory / name} (or .gz)")


def load_mnist_idx(data_path: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, ...]:
    """Load one MNIST split from IDX files.

    Args:
        data_path: directory holding `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
            `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (each optionally `.gz`).
        split: "train" or "test" (the t10k files).

    Returns:
        images uint8 (n, H, W, 1) and labels int64 (n,).
    """
    directory = Path(data_path).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"MNIST data directory not found: {directory}")
    image_file, label_file = (_find_idx(directory, name) for name in SPLIT_FILES[split])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{image_file}: expected uint8 images of shape (n, H, W), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(
            f"{label_file}: expected uint8 labels (n,), got {labels.dtype} {labels.shape}"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"{image_file} has {len(images)} images but {label_file} has {len(labels)} labels"
        )
    if len(labels) == 0:
        raise ValueError(f"{label_file} holds no examples")
    if labels.max() >= NUM_CLASSES:
        raise ValueError(f"{label_file}: labels must be 0..9, found {labels.max()}")
    return images[..., None], labels.astype(np.int64)


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D bilinear resampling with pixel-centre alignment."""
    centres = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    centres = np.clip(centres, 0, n_in - 1)
    lo = np.floor(centres).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = centres - lo
    weights = np.zeros((n_out, n_in))
    weights[np.arange(n_out), lo] += 1 - frac
    weights[np.arange(n_out), hi] += frac
    return weights


@functools.lru_cache(maxsize=4)  # train and eval envs share one copy; parsing takes ~0.5 s
def load_sklearn_digits(split: str = "train", size: int = 28) -> tuple[np.ndarray, ...]:
    """scikit-learn's 1,797 bundled 8x8 digits as an MNIST stand-in (no download).

    Pixels 0..16 are rescaled to 0..255 and bilinearly upsampled to `size` x `size` once here.
    The split is deterministic: the first 80% of the dataset is "train", the rest "test".

    Returns:
        images uint8 (n, size, size, 1) and labels int64 (n,), both read-only (cached).
    """
    from sklearn.datasets import load_digits  # imported lazily: sklearn is slow to import

    digits = load_digits()
    n_train = int(DIGITS_TRAIN_FRACTION * len(digits.target))
    part = slice(0, n_train) if split == "train" else slice(n_train, None)
    images = digits.images[part] * (255.0 / 16.0)
    resample = _bilinear_matrix(images.shape[1], size)
    images = np.einsum("ih,nhw,jw->nij", resample, images, resample)
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8)[..., None]
    labels = digits.target[part].astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


class MnistBanditVecEnv(VecEnv):
    """`num_envs` copies of the MNIST bandit; see the module docstring."""

    provides_final_obs = True  # vacuously: terminated and truncated are always False

    def __init__(self, num_envs: int, seed: int, images: np.ndarray, labels: np.ndarray):
        """Args:
        num_envs: number of digits shown per step.
        seed: seeds the numpy Generator that draws the digits.
        images: uint8 (n, H, W, 1) dataset images.
        labels: int (n,) their labels 0..9.
        """
        self.num_envs = num_envs
        self.images, self.labels = images, labels
        self.single_observation_space = gymnasium.spaces.Box(0, 255, images.shape[1:], np.uint8)
        self.single_action_space = gymnasium.spaces.Discrete(NUM_CLASSES)
        self._rng = np.random.default_rng(seed)
        self._stats = EpisodeStats(num_envs)
        self._targets: np.ndarray | None = None  # labels of the digits currently shown
        self._all_done = np.ones(num_envs, dtype=bool)

    def _draw(self) -> np.ndarray:
        index = self._rng.integers(0, len(self.labels), size=self.num_envs)
        self._targets = self.labels[index]
        return self.images[index]

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self._rng = np.random.default_rng(check_seed(seed))
        self._stats.reset()
        return self._draw()

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._targets is None:
            raise RuntimeError("call reset() before step()")
        actions = check_actions(actions, self.num_envs, self.single_action_space)
        reward = (actions == self._targets).astype(np.float32)
        # every step is a finished one-step "episode" for the statistics, but never a terminal
        # for the learner: the discount alone sets the horizon
        info = self._stats.update(reward, self._all_done)
        never = np.zeros(self.num_envs, dtype=bool)
        return self._draw(), reward, never, never.copy(), info


def make_mnist(
    *,
    num_envs: int,
    seed: int,
    data_path: str | os.PathLike | None = None,
    split: str = "train",
) -> MnistBanditVecEnv:
    """Build the MNIST bandit.

    Args:
        num_envs: number of digits shown (and labelled by the agent) per step.
        seed: seeds the digit sampler, in [0, 2**31).
        data_path: directory with the MNIST IDX files (plain or .gz). None uses scikit-learn's
            bundled 8x8 digits upsampled to 28x28 and logs a warning.
        split: "train" or "test".

    Raises:
        FileNotFoundError: `data_path` or one of its files is missing.
        ValueError: a bad argument or a corrupt IDX file.
    """
    num_envs = check_num_envs(num_envs)
    seed = check_seed(seed)
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {list(SPLIT_FILES)}, got {split!r}")
    if data_path is None:
        images, labels = load_sklearn_digits(split)
        logger.warning(
            "MNIST IDX files were not configured (env.data_path is null); using scikit-learn's "
            "bundled 8x8 digits (%s split: %d images) upsampled to 28x28 instead",
            split,
            len(labels),
        )
    else:
        images, labels = load_mnist_idx(data_path, split)
    return MnistBanditVecEnv(num_envs, seed, images, labels)


def build(cfg: MnistEnvConfig, *, num_envs: int, seed: int) -> MnistBanditVecEnv:
    """The registry's builder: `cfg.data_path` and `cfg.split` pick the digits."""
    return make_mnist(num_envs=num_envs, seed=seed, data_path=cfg.data_path, split=cfg.split)


register_env("mnist", MnistEnvConfig, build)
