"""The NetHack agent (``model=nethack``): the standard NLE encoder in front of the width-scaled
LSTM core of :class:`agents.models.LSTMActorCritic`.

The encoder (Küttler et al. 2020's baseline, as used by the NetHack scaling studies) reads
the observation dict of ``env=nethack``:

- every map cell's glyph, character and colour, each embedded (16 + 8 + 8 = 32 channels);
- a CNN over the whole 21 x 79 dungeon map (3 conv layers of 16 channels, the last two with
  stride 2) and a linear layer to 256 features;
- the same embeddings cropped to the 9 x 9 cells around the agent (its position from the
  bottom-line stats), 2 conv layers and a linear layer to 128 features;
- the 27 bottom-line stats (``blstats``), squashed by ``sign(x) log(1 + |x|)`` (hit points,
  gold and the turn counter span orders of magnitude), through a 2-layer MLP to 64;
- the 256-byte message line: byte embeddings, a 1-D convolution and a max over the line, to
  64 features.

The 512 features go through the pre-core MLP, the LSTM core (hidden size ``256 x width``,
``depth`` layers) and the policy and value heads. As in the study, only those are scaled, and
only they count as the effective N and FLOPs (``scaled_modules``); the encoder is the same at
every width, and its FLOPs are in the run record's ``flops_per_forward.total`` and the
per-role totals. IMPALA logs the RL convention ``flops_8nd = 8 N D`` beside the exact count.
"""

from __future__ import annotations

import gymnasium
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.models import LSTMActorCritic, ModelConfig
from rl_scaling.registry import register_model

REQUIRED_KEYS = ("glyphs", "chars", "colors", "blstats", "message")
CROP = 9  # cells on a side of the crop around the agent
GLYPH_DIM, CHAR_DIM, COLOR_DIM = 16, 8, 8
MAP_FEATURES, CROP_FEATURES, STATS_FEATURES, MESSAGE_FEATURES = 256, 128, 64, 64
BL_X, BL_Y = 0, 1  # NLE_BL_X, NLE_BL_Y: the agent's column and row in blstats


class NetHackEncoder(nn.Module):
    """The NLE encoder (see the module docstring): a dict of (N, ...) arrays -> (N, 512)."""

    def __init__(self, space: gymnasium.spaces.Dict) -> None:
        super().__init__()
        missing = [k for k in REQUIRED_KEYS if k not in space.spaces]
        if missing:
            raise ValueError(f"model=nethack reads {list(REQUIRED_KEYS)} from the observation; "
                             f"env.observation_keys lacks {missing}")
        rows, cols = space["glyphs"].shape
        self.max_glyph = int(space["glyphs"].high.max())  # NLE's MAX_GLYPH: "nothing here"
        self.glyph_embed = nn.Embedding(self.max_glyph + 1, GLYPH_DIM)
        self.char_embed = nn.Embedding(256, CHAR_DIM)
        self.color_embed = nn.Embedding(16, COLOR_DIM)
        cell = GLYPH_DIM + CHAR_DIM + COLOR_DIM

        self.map_cnn = nn.Sequential(
            nn.Conv2d(cell, 16, 3, padding=1), nn.ELU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ELU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ELU(), nn.Flatten())
        map_out = 16 * ((rows + 3) // 4) * ((cols + 3) // 4)
        self.map_fc = nn.Sequential(nn.Linear(map_out, MAP_FEATURES), nn.ELU())
        self.crop_cnn = nn.Sequential(
            nn.Conv2d(cell, 16, 3, padding=1), nn.ELU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ELU(), nn.Flatten())
        self.crop_fc = nn.Sequential(nn.Linear(16 * CROP * CROP, CROP_FEATURES), nn.ELU())
        stats = int(space["blstats"].shape[0])
        self.stats_mlp = nn.Sequential(nn.Linear(stats, STATS_FEATURES), nn.ELU(),
                                       nn.Linear(STATS_FEATURES, STATS_FEATURES), nn.ELU())
        self.message_embed = nn.Embedding(256, 16)
        self.message_conv = nn.Sequential(nn.Conv1d(16, 32, 5, stride=2, padding=2), nn.ELU())
        self.message_fc = nn.Sequential(nn.Linear(32, MESSAGE_FEATURES), nn.ELU())
        self.out_size = MAP_FEATURES + CROP_FEATURES + STATS_FEATURES + MESSAGE_FEATURES

    def _cells(self, glyphs: Tensor, chars: Tensor, colors: Tensor) -> Tensor:
        """(N, H, W) ids -> (N, 32, H, W) embeddings."""
        x = torch.cat([self.glyph_embed(glyphs.long()), self.char_embed(chars.long()),
                       self.color_embed(colors.long())], dim=-1)
        return x.permute(0, 3, 1, 2)

    def _crop(self, ids: Tensor, x: Tensor, y: Tensor, pad: int) -> Tensor:
        """The CROP x CROP ids around (x, y) of every map in ``ids`` (N, H, W), ``pad``
        outside the map."""
        half = CROP // 2
        padded = F.pad(ids.long(), (half, half, half, half), value=pad)
        offsets = torch.arange(CROP, device=ids.device)
        rows = (y[:, None] + offsets)[:, :, None]  # padded coordinates: y - half + half
        cols = (x[:, None] + offsets)[:, None, :]
        batch = torch.arange(ids.shape[0], device=ids.device)[:, None, None]
        return padded[batch, rows, cols]

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        glyphs, chars, colors = obs["glyphs"], obs["chars"], obs["colors"]
        blstats = obs["blstats"]
        dungeon = self.map_fc(self.map_cnn(self._cells(glyphs, chars, colors)))
        rows, cols = glyphs.shape[-2:]
        x = blstats[:, BL_X].long().clamp(0, cols - 1)
        y = blstats[:, BL_Y].long().clamp(0, rows - 1)
        crop = self._cells(self._crop(glyphs, x, y, self.max_glyph),
                           self._crop(chars, x, y, ord(" ")), self._crop(colors, x, y, 0))
        around = self.crop_fc(self.crop_cnn(crop))
        stats = blstats.float()
        stats = self.stats_mlp(torch.sign(stats) * torch.log1p(stats.abs()))
        message = self.message_embed(obs["message"].long()).transpose(1, 2)  # (N, 16, 256)
        message = self.message_fc(self.message_conv(message).amax(dim=-1))
        return torch.cat([dungeon, around, stats, message], dim=-1)


class NetHackNet(LSTMActorCritic):
    """The NLE encoder -> pre-core MLP -> LSTM core -> heads; forward as
    :class:`~agents.models.LSTMActorCritic`'s, with a dict of (T, B, ...) observations."""

    def __init__(self, space: gymnasium.spaces.Dict, num_actions: int, width: float = 1.0,
                 depth: int = 1) -> None:
        encoder = NetHackEncoder(space)
        super().__init__((), num_actions, width=width, depth=depth, torso=encoder,
                         torso_size=encoder.out_size)


def build_nethack(cfg: ModelConfig, spec, role: str = "policy") -> nn.Module:
    """``ctx.network`` builder for ``model=nethack`` (``env=nethack``'s dict observations,
    ``Discrete`` actions)."""
    space, actions = spec.observation_space, spec.action_space
    if not isinstance(space, gymnasium.spaces.Dict):
        raise ValueError(f"model=nethack reads NetHack's dict observations (env=nethack); "
                         f"this env's observations are {space}")
    if not isinstance(actions, gymnasium.spaces.Discrete):
        raise ValueError(f"model=nethack is a discrete actor-critic; the env's actions are "
                         f"{actions}")
    if getattr(cfg, "separate_value", None):
        raise ValueError("model.separate_value is not a knob of nethack (one core, two heads)")
    ModelConfig(cfg.family, cfg.width, cfg.depth).validate()
    return NetHackNet(space, int(actions.n), width=float(cfg.width),
                      depth=1 if cfg.depth is None else int(cfg.depth))


register_model("nethack", ModelConfig, build_nethack)
