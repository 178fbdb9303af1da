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

The behavioural-cloning policy of Tuyls et al. 2024 (:class:`NetHackBCNet`, trained by
``algo=bc`` on NLD-AA-style ttyrecs, ``agents/ttyrec.py``) reads what a ttyrec holds, the 24 x
80 terminal (``tty_chars``, ``tty_colors``, ``tty_cursor``) and its previous action
(:class:`TtyEncoder`), and has an LSTM or a causal transformer core of hidden size ``256 x
width`` and a policy head, no value head. Scaled parts as above: pre-core, core and head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.models import LSTMActorCritic, ModelConfig, layer_init, lstm_with_resets
from rl_scaling.registry import register_model

REQUIRED_KEYS = ("glyphs", "chars", "colors", "blstats", "message")
CROP = 9  # cells on a side of the crop around the agent
GLYPH_DIM, CHAR_DIM, COLOR_DIM = 16, 8, 8
MAP_FEATURES, CROP_FEATURES, STATS_FEATURES, MESSAGE_FEATURES = 256, 128, 64, 64
BL_X, BL_Y = 0, 1  # NLE_BL_X, NLE_BL_Y: the agent's column and row in blstats


def crop_around(ids: Tensor, x: Tensor, y: Tensor, pad: int) -> Tensor:
    """The CROP x CROP cells of every (H, W) screen in ``ids`` (N, H, W) centred on column
    ``x``, row ``y`` (N,), ``pad`` outside it (both encoders' crop)."""
    half = CROP // 2
    padded = F.pad(ids.long(), (half, half, half, half), value=pad)
    offsets = torch.arange(CROP, device=ids.device)
    rows = (y[:, None] + offsets)[:, :, None]  # padded coordinates: y - half + half
    cols = (x[:, None] + offsets)[:, None, :]
    batch = torch.arange(ids.shape[0], device=ids.device)[:, None, None]
    return padded[batch, rows, cols]


def map_layers(cell: int, rows: int, cols: int) -> tuple[nn.Sequential, nn.Sequential]:
    """The dungeon CNN over (N, cell, rows, cols) embeddings (3 convs of 16 channels, the last
    two with stride 2) and its Linear to MAP_FEATURES."""
    cnn = nn.Sequential(
        nn.Conv2d(cell, 16, 3, padding=1), nn.ELU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ELU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ELU(), nn.Flatten())
    out = 16 * ((rows + 3) // 4) * ((cols + 3) // 4)
    return cnn, nn.Sequential(nn.Linear(out, MAP_FEATURES), nn.ELU())


def crop_layers(cell: int) -> tuple[nn.Sequential, nn.Sequential]:
    """The CNN over the CROP x CROP cells around the agent (2 convs of 16) and its Linear to
    CROP_FEATURES."""
    cnn = nn.Sequential(
        nn.Conv2d(cell, 16, 3, padding=1), nn.ELU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ELU(), nn.Flatten())
    return cnn, nn.Sequential(nn.Linear(16 * CROP * CROP, CROP_FEATURES), nn.ELU())


def line_layers(features: int) -> tuple[nn.Embedding, nn.Sequential, nn.Sequential]:
    """A text line's encoder: byte embeddings, a conv1d of 32 (then a max over the line, in
    forward) and a Linear to ``features``."""
    return (nn.Embedding(256, 16),
            nn.Sequential(nn.Conv1d(16, 32, 5, stride=2, padding=2), nn.ELU()),
            nn.Sequential(nn.Linear(32, features), nn.ELU()))


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

        self.map_cnn, self.map_fc = map_layers(cell, rows, cols)
        self.crop_cnn, self.crop_fc = crop_layers(cell)
        stats = int(space["blstats"].shape[0])
        self.stats_mlp = nn.Sequential(nn.Linear(stats, STATS_FEATURES), nn.ELU(),
                                       nn.Linear(STATS_FEATURES, STATS_FEATURES), nn.ELU())
        self.message_embed, self.message_conv, self.message_fc = line_layers(MESSAGE_FEATURES)
        self.out_size = MAP_FEATURES + CROP_FEATURES + STATS_FEATURES + MESSAGE_FEATURES

    def _cells(self, glyphs: Tensor, chars: Tensor, colors: Tensor) -> Tensor:
        """(N, H, W) ids -> (N, 32, H, W) embeddings."""
        x = torch.cat([self.glyph_embed(glyphs.long()), self.char_embed(chars.long()),
                       self.color_embed(colors.long())], dim=-1)
        return x.permute(0, 3, 1, 2)

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        glyphs, chars, colors = obs["glyphs"], obs["chars"], obs["colors"]
        blstats = obs["blstats"]
        dungeon = self.map_fc(self.map_cnn(self._cells(glyphs, chars, colors)))
        rows, cols = glyphs.shape[-2:]
        x = blstats[:, BL_X].long().clamp(0, cols - 1)
        y = blstats[:, BL_Y].long().clamp(0, rows - 1)
        crop = self._cells(crop_around(glyphs, x, y, self.max_glyph),
                           crop_around(chars, x, y, ord(" ")), crop_around(colors, x, y, 0))
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


# ---------------------------------------------------------------------------------------------
# The behavioural-cloning policy on the tty (Tuyls et al. 2024's NetHack model)
# ---------------------------------------------------------------------------------------------

TTY_ROWS, TTY_COLS = 24, 80
DUNGEON_ROWS = slice(1, 22)  # tty rows 1..21: the map; row 0: messages; rows 22-23: status
TTY_CHAR_DIM, TTY_COLOR_DIM = 24, 8
TTY_COLORS = 32  # the env's tty_colors space: NLE's 16 colours, 16+ with an attribute bit
TOPLINE_FEATURES, BOTTOM_FEATURES, ACTION_FEATURES = 64, 64, 32


class TtyEncoder(nn.Module):
    """The tty observation (what NLD-AA's ttyrecs hold) -> ``out_size`` (544) features.

    Reads a dict of (N, ...) arrays: ``tty_chars``, ``tty_colors`` (24, 80), ``tty_cursor``
    (2,) (row, column) and ``prev_action`` () (an index into the actions, ``num_actions`` for
    none):

    - the 21 dungeon rows (tty rows 1..21): each cell's character and colour embedded
      (24 + 8 channels), the map CNN of :class:`NetHackEncoder` (3 convs of 16 channels, the
      last two with stride 2) and a linear layer to 256;
    - the 9 x 9 cells of the whole screen around the cursor (on the agent while the game waits
      for a command; on the prompt otherwise), 2 convs, a linear layer to 128;
    - the top line (row 0, messages and prompts): byte embeddings, a 1-D convolution and a max
      over the line to 64 (the message encoder of :class:`NetHackEncoder`);
    - the two status lines (rows 22-23): byte embeddings, two strided 1-D convolutions per
      line, flattened (positions matter: the stats are read where they stand) to 64;
    - the previous action embedded (32).

    It is the same at every width (not part of the scaled model, as NetHackEncoder).
    """

    def __init__(self, num_actions: int) -> None:
        super().__init__()
        self.num_actions = int(num_actions)
        self.char_embed = nn.Embedding(256, TTY_CHAR_DIM)
        self.color_embed = nn.Embedding(TTY_COLORS, TTY_COLOR_DIM)
        cell = TTY_CHAR_DIM + TTY_COLOR_DIM
        rows = DUNGEON_ROWS.stop - DUNGEON_ROWS.start
        self.map_cnn, self.map_fc = map_layers(cell, rows, TTY_COLS)
        self.crop_cnn, self.crop_fc = crop_layers(cell)
        self.topline_embed, self.topline_conv, self.topline_fc = line_layers(TOPLINE_FEATURES)
        self.bottom_embed = nn.Embedding(256, 16)
        self.bottom_conv = nn.Sequential(
            nn.Conv1d(16, 32, 5, stride=2, padding=2), nn.ELU(),
            nn.Conv1d(32, 16, 5, stride=2, padding=2), nn.ELU())
        self.bottom_fc = nn.Sequential(
            nn.Linear(2 * 16 * ((TTY_COLS + 3) // 4), BOTTOM_FEATURES), nn.ELU())
        self.action_embed = nn.Embedding(self.num_actions + 1, ACTION_FEATURES)
        self.out_size = (MAP_FEATURES + CROP_FEATURES + TOPLINE_FEATURES + BOTTOM_FEATURES
                         + ACTION_FEATURES)

    def _cells(self, chars: Tensor, colors: Tensor) -> Tensor:
        """(N, H, W) characters and colours -> (N, 32, H, W) embeddings."""
        x = torch.cat([self.char_embed(chars.long()),
                       self.color_embed(colors.long().clamp(0, TTY_COLORS - 1))], dim=-1)
        return x.permute(0, 3, 1, 2)

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        chars, colors, cursor = obs["tty_chars"], obs["tty_colors"], obs["tty_cursor"]
        n = chars.shape[0]
        rows = DUNGEON_ROWS
        dungeon = self.map_fc(self.map_cnn(self._cells(chars[:, rows], colors[:, rows])))
        y = cursor[:, 0].long().clamp(0, TTY_ROWS - 1)
        x = cursor[:, 1].long().clamp(0, TTY_COLS - 1)
        around = self.crop_fc(self.crop_cnn(self._cells(
            crop_around(chars, x, y, ord(" ")), crop_around(colors, x, y, 0))))
        top = self.topline_embed(chars[:, 0].long()).transpose(1, 2)  # (N, 16, 80)
        top = self.topline_fc(self.topline_conv(top).amax(dim=-1))
        bottom = self.bottom_embed(chars[:, 22:].long()).reshape(n * 2, TTY_COLS, -1)
        bottom = self.bottom_conv(bottom.transpose(1, 2)).reshape(n, -1)
        bottom = self.bottom_fc(bottom)
        prev = obs["prev_action"].long().clamp(0, self.num_actions)
        return torch.cat([dungeon, around, top, bottom, self.action_embed(prev)], dim=-1)


class RelativePositions(nn.Module):
    """Learned embeddings of the ``context`` relative positions (0 = the query's own step) of
    each head, scored against the queries (Shaw et al. 2018): (B, H, T, dh) -> (B, H, T,
    context). A matmul the FLOP accountant sees through :meth:`matmul_flops`."""

    def __init__(self, heads: int, context: int, head_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(heads, context, head_dim) * head_dim ** -0.5)

    def forward(self, q: Tensor) -> Tensor:
        return torch.einsum("bhtd,hcd->bhtc", q, self.weight)

    def matmul_flops(self, args: tuple, out: Tensor) -> int:
        return 2 * out.numel() * self.weight.shape[-1]


class CausalSelfAttention(nn.Module):
    """Multi-head attention of a chunk's steps over the cached keys of the last ``context-1``
    steps and the chunk's own, each step seeing its last ``context`` steps of its game."""

    def __init__(self, d: int, heads: int, context: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.positions = RelativePositions(heads, context, self.head_dim)

    def forward(self, x: Tensor, cache_k: Tensor, cache_v: Tensor, allowed: Tensor,
                offsets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (T, B, d); caches (B, H, P, dh); allowed (B, T, P + T) bool; offsets (T, P + T)
        (clamped to [0, context - 1]) -> (T, B, d) and the keys and values of all P + T."""
        steps, batch, d = x.shape
        q, k, v = self.qkv(x).view(steps, batch, 3, self.heads, self.head_dim).permute(
            2, 1, 3, 0, 4)  # each (B, H, T, dh)
        k = torch.cat([cache_k.to(k.dtype), k], dim=2)
        v = torch.cat([cache_v.to(v.dtype), v], dim=2)
        scale = self.head_dim ** -0.5
        rel = self.positions(q) * scale  # (B, H, T, context)
        bias = rel.gather(-1, offsets.expand(batch, self.heads, *offsets.shape))
        bias = bias.masked_fill(~allowed[:, None], float("-inf"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.out(y.permute(2, 0, 1, 3).reshape(steps, batch, d)), k, v


class TransformerBlock(nn.Module):
    """Pre-LN: x + attention(LN(x)), then x + FF(LN(x)) with a 4d GELU MLP."""

    def __init__(self, d: int, heads: int, context: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, heads, context)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: Tensor, cache_k: Tensor, cache_v: Tensor, allowed: Tensor,
                offsets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, k, v = self.attn(self.ln1(x), cache_k, cache_v, allowed, offsets)
        x = x + a
        return x + self.ff(self.ln2(x)), k, v


class CausalTransformer(nn.Module):
    """A pre-LN causal transformer over a stream of steps, run a chunk (or one step) at a time.

    Each layer's step attends to itself and the ``context - 1`` steps before it, never past the
    start of its game; positions are learned relative ones (:class:`RelativePositions`), so a
    step's output does not depend on where a chunk starts. The state carries every layer's
    keys and values of the last ``context - 1`` steps and which of them belong to the current
    game, so feeding a sequence in one call or step by step gives the same outputs (a KV cache,
    as in Transformer-XL; with ``depth`` layers a step's receptive field reaches
    ``depth * (context - 1)`` steps back through the cached keys).

    State: ``(k, v, valid)``: keys and values (depth, B, H, context - 1, dh), valid (1, B,
    context - 1) bool (the batch is dim 1 of every state tensor).
    """

    def __init__(self, d: int, depth: int, heads: int, context: int) -> None:
        super().__init__()
        self.d, self.depth, self.heads, self.context = d, depth, heads, context
        self.blocks = nn.ModuleList(TransformerBlock(d, heads, context) for _ in range(depth))
        self.ln_f = nn.LayerNorm(d)

    def initial_state(self, batch: int, device: torch.device | str | None = None
                      ) -> tuple[Tensor, Tensor, Tensor]:
        past = self.context - 1
        kv = torch.zeros(self.depth, batch, self.heads, past, self.d // self.heads,
                         device=device)
        return kv, kv.clone(), torch.zeros(1, batch, past, dtype=torch.bool, device=device)

    def forward(self, x: Tensor, first: Tensor, state: tuple[Tensor, Tensor, Tensor]
                ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        steps, batch = x.shape[:2]
        past = self.context - 1
        cache_k, cache_v, cache_valid = state
        # segment of each step: how many games started in this chunk up to it; the cache is
        # segment 0, so a game start cuts every earlier key off from the steps after it
        segment = first.long().cumsum(0).T  # (B, T)
        key_segment = torch.cat([segment.new_zeros(batch, past), segment], dim=1)
        key_valid = torch.cat([cache_valid[0], cache_valid.new_ones(batch, steps)], dim=1)
        query_pos = torch.arange(steps, device=x.device)[:, None] + past
        offsets = query_pos - torch.arange(past + steps, device=x.device)[None]  # (T, P + T)
        in_window = (offsets >= 0) & (offsets <= past)
        allowed = (in_window[None] & key_valid[:, None]
                   & (key_segment[:, None] == segment[:, :, None]))
        offsets = offsets.clamp(0, past)
        keys, values = [], []
        for layer, block in enumerate(self.blocks):
            x, k, v = block(x, cache_k[layer], cache_v[layer], allowed, offsets)
            keys.append(k[:, :, steps:] if past == 0 else k[:, :, -past:])
            values.append(v[:, :, steps:] if past == 0 else v[:, :, -past:])
        # the keys a later step may see: those of the last step's game
        valid = (key_valid & (key_segment == segment[:, -1:]))[:, key_valid.shape[1] - past:]
        return self.ln_f(x), (torch.stack(keys), torch.stack(values), valid[None])


CORES = ("lstm", "transformer")


class NetHackBCNet(nn.Module):
    """The NetHack behavioural-cloning policy: :class:`TtyEncoder` -> pre-core (Linear + ReLU
    to ``d``) -> core -> policy head (logits over ``num_actions``); no value head.

    ``d = max(1, round(256 * width))``; ``aspect_ratio`` (``d / depth``) sets ``depth =
    max(1, round(d / aspect_ratio))`` instead of ``depth``, so one width knob scales both. Core
    ``"lstm"``: ``nn.LSTM(d, d, depth)``; ``"transformer"``: :class:`CausalTransformer`
    (``depth`` pre-LN layers, ``heads`` (default ``max(1, d // 64)``, must divide ``d``), a 4d
    feed-forward, attention over the last ``context`` steps of the game).

    ``forward(obs, first, state) -> (logits (T, B, A), state)``: ``obs`` a dict of (T, B, ...)
    ``tty_chars``, ``tty_colors``, ``tty_cursor``, ``prev_action``; ``first`` (T, B) bool
    marks a game's first step, where the state is reset. ``state`` from
    :meth:`initial_state` or the previous call (None: a fresh one); feeding a sequence whole or
    step by step gives the same logits.

    The scaled model (effective N and FLOPs, :meth:`scaled_modules`) is the pre-core, the core
    and the policy head; the encoder is the same at every width, as in :class:`NetHackNet`.
    """

    recurrent = True

    def __init__(self, num_actions: int, *, width: float = 1.0, depth: int = 1,
                 core: str = "lstm", context: int = 32, aspect_ratio: float | None = None,
                 heads: int | None = None) -> None:
        super().__init__()
        if core not in CORES:
            raise ValueError(f"model.core={core!r} must be one of {CORES}")
        d = max(1, round(256 * float(width)))
        if aspect_ratio is not None:
            if not float(aspect_ratio) > 0:
                raise ValueError(f"model.aspect_ratio={aspect_ratio!r} must be > 0")
            depth = max(1, round(d / float(aspect_ratio)))
        if int(depth) != depth or depth < 1:
            raise ValueError(f"model.depth={depth!r} must be an integer >= 1")
        if int(context) != context or context < 1:
            raise ValueError(f"model.context={context!r} must be an integer >= 1")
        self.num_actions, self.hidden_size, self.depth = int(num_actions), d, int(depth)
        self.core_type, self.context = core, int(context)
        self.encoder = TtyEncoder(self.num_actions)
        self.pre_core = nn.Sequential(layer_init(nn.Linear(self.encoder.out_size, d)), nn.ReLU())
        if core == "lstm":
            self.heads = None
            self.core: nn.Module = nn.LSTM(d, d, num_layers=self.depth)
        else:
            self.heads = max(1, d // 64) if heads is None else int(heads)
            if self.heads < 1 or d % self.heads:
                raise ValueError(f"model.heads={self.heads} must divide the width's d={d}")
            self.core = CausalTransformer(d, self.depth, self.heads, self.context)
        self.policy_head = layer_init(nn.Linear(d, self.num_actions), std=0.01)

    def initial_state(self, batch: int, device: torch.device | str | None = None
                      ) -> tuple[Tensor, ...]:
        """The state before any step: LSTM ``(h, c)`` (depth, B, d) zeros; transformer
        ``(k, v, valid)`` with nothing valid (see :class:`CausalTransformer`)."""
        if self.core_type == "lstm":
            zeros = torch.zeros(self.depth, batch, self.hidden_size, device=device)
            return zeros, zeros.clone()
        return self.core.initial_state(batch, device)

    def forward(self, obs: dict[str, Tensor], first: Tensor | None = None,
                state: Any = None) -> tuple[Tensor, Any]:
        one = obs["tty_chars"]
        steps, batch, device = one.shape[0], one.shape[1], one.device
        flat = {k: v.reshape(steps * batch, *v.shape[2:]) for k, v in obs.items()}
        x = self.pre_core(self.encoder(flat).float()).view(steps, batch, -1)
        if first is None:
            first = torch.zeros(steps, batch, dtype=torch.bool, device=device)
        if state is None:
            state = self.initial_state(batch, device)
        if self.core_type == "lstm":
            out, state = lstm_with_resets(self.core, x, first, state)
        else:
            out, state = self.core(x, first, state)
        return self.policy_head(out.reshape(steps * batch, -1)).view(steps, batch, -1), state

    def scaled_modules(self) -> list[nn.Module]:
        return [self.pre_core, self.core, self.policy_head]


@dataclass
class NetHackBCConfig:
    """``model=nethack_bc``: the knobs of :class:`NetHackBCNet` (``algo=bc`` on ttyrecs)."""

    family: str = "nethack_bc"
    width: float = 1.0  # the core's hidden size is 256 * width
    depth: int = 1  # core layers (ignored when aspect_ratio is set)
    core: str = "lstm"  # lstm | transformer
    context: int | None = None  # transformer: steps attended to; None: algo.seq_len
    aspect_ratio: float | None = None  # depth = hidden / aspect_ratio: one knob scales both
    heads: int | None = None  # transformer: attention heads; None: hidden / 64

    def validate(self) -> None:
        ModelConfig(self.family, self.width, self.depth).validate()
        if self.core not in CORES:
            raise ValueError(f"model.core={self.core!r} must be one of {list(CORES)}")
        if self.context is not None and int(self.context) < 1:
            raise ValueError(f"model.context={self.context!r} must be >= 1 or null")
        if self.aspect_ratio is not None and not float(self.aspect_ratio) > 0:
            raise ValueError(f"model.aspect_ratio={self.aspect_ratio!r} must be > 0 or null")


def build_nethack_bc(cfg: NetHackBCConfig, spec, role: str = "policy") -> nn.Module:
    """``ctx.network`` builder for ``model=nethack_bc`` (``Discrete`` actions; ``algo=bc``
    builds it itself with ``context`` defaulting to its ``seq_len``)."""
    if not isinstance(spec.action_space, gymnasium.spaces.Discrete):
        raise ValueError(f"model=nethack_bc is a discrete policy; the actions are "
                         f"{spec.action_space}")
    return NetHackBCNet(int(spec.action_space.n), width=float(cfg.width), depth=int(cfg.depth),
                        core=cfg.core, context=int(cfg.context or 32),
                        aspect_ratio=cfg.aspect_ratio, heads=cfg.heads)


register_model("nethack_bc", NetHackBCConfig, build_nethack_bc)
