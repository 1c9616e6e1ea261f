"""The Video-Depth-Anything network: a DINOv2 ViT encoder and a DPT head with temporal attention.

Written for this project from the published architecture (Chen et al., "Video Depth Anything", 2025) so that
the official checkpoints (``video_depth_anything_{vits,vitb,vitl}.pth``, ``metric_video_depth_anything_*.pth``:
plain state dicts) load with every key matched. The parameter names and shapes are the checkpoints' layout:

* ``pretrained.*`` — DINOv2 (patch 14, 518² position grid interpolated bicubically with the 0.1 offset,
  LayerScale, pre-norm blocks, LayerNorm eps 1e-6); the head reads four of its blocks' normalised outputs;
* ``head.projects`` / ``head.resize_layers`` / ``head.scratch.*`` — the DPT reassemble and fusion stages;
* ``head.motion_modules.{0..3}`` — one temporal transformer each on the 3rd and 4th reassembled features and on
  the two deepest fusion outputs: GroupNorm(32), a linear in, one block of two temporal self-attentions (8 heads,
  sinusoidal position table of ``num_frames`` entries kept in the state dict as ``pos_encoder.pe``) and a GEGLU
  feed-forward, a linear out, added to its input. Attention runs along time only, per feature-map position.

``forward`` takes a window [B,T,3,H,W] and returns [B,T,H,W]; ``forward_stream`` runs one frame's encoder tokens
against the cached inputs of the temporal attentions of earlier frames (the streaming mode) and returns that
frame's cache. The encoder works frame by frame, so a stream encodes a whole batch of frames in one call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VdaConfig:
    """One published configuration (the authors' ``run.py`` ``model_configs``)."""

    encoder: str
    embed_dim: int
    depth: int
    heads: int
    layers: tuple[int, ...]  # the encoder blocks the head reads
    features: int
    out_channels: tuple[int, int, int, int]
    num_frames: int = 32
    patch: int = 14
    grid: int = 37  # the position table's side: 518 / 14


CONFIGS: dict[str, VdaConfig] = {
    "vits": VdaConfig("vits", 384, 12, 6, (2, 5, 8, 11), 64, (48, 96, 192, 384)),
    "vitb": VdaConfig("vitb", 768, 12, 12, (2, 5, 8, 11), 128, (96, 192, 384, 768)),
    "vitl": VdaConfig("vitl", 1024, 24, 16, (4, 11, 17, 23), 256, (256, 512, 1024, 1024)),
}

TEMPORAL_HEADS = 8


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Dinov2Encoder(nn.Module):
    def __init__(self, config: VdaConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.patch = config.patch
        self.layers = config.layers
        self.patch_embed = PatchEmbed(dim, config.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.grid * config.grid, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # training only; in the checkpoints
        self.blocks = nn.ModuleList(EncoderBlock(dim, config.heads) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def positions(self, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
        table = self.pos_embed
        grid = math.isqrt(table.shape[1] - 1)
        if rows == cols == grid:
            return table.to(dtype)
        patches = table[:, 1:].float().reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        # DINOv2 scales by (n + 0.1) / grid rather than asking for n × n: the offset keeps the float scale from
        # flooring to n - 1, and the bicubic weights follow from the scale, so the same call is made here
        scaled = F.interpolate(patches, scale_factor=((rows + 0.1) / grid, (cols + 0.1) / grid), mode="bicubic",
                               antialias=False)
        scaled = scaled.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat([table[:, :1].float(), scaled], dim=1).to(dtype)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The normalised patch tokens [N, rows*cols, dim] after each of ``layers``."""
        rows, cols = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        tokens = tokens + self.positions(rows, cols, tokens.dtype)
        taken = []
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in self.layers:
                taken.append(self.norm(tokens)[:, 1:])
        return taken


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FusionBlock(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)  # noqa: N815 - the checkpoints' name
        self.resConfUnit2 = ResidualConvUnit(features)  # noqa: N815

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None,
                size: tuple[int, int] | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        resize = {"size": size} if size is not None else {"scale_factor": 2}
        return self.out_conv(F.interpolate(x, **resize, mode="bilinear", align_corners=True))


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    position = torch.arange(length).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    table = torch.zeros(1, length, dim)
    table[0, :, 0::2] = torch.sin(position * frequency)
    table[0, :, 1::2] = torch.cos(position * frequency)
    return table


class PositionTable(nn.Module):
    def __init__(self, length: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoid_table(length, dim))


class TemporalAttention(nn.Module):
    """Self-attention along time for every feature-map position; with a cache, only the newest frame asks."""

    def __init__(self, dim: int, frames: int) -> None:
        super().__init__()
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.pos_encoder = PositionTable(frames, dim)

    def forward(self, x: torch.Tensor, cached: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [positions, T, dim]; ``cached`` [positions, K, dim], the earlier frames' inputs."""
        asked = x.shape[1]
        sequence = x if cached is None else torch.cat([cached, x], dim=1)
        sequence = sequence + self.pos_encoder.pe[:, :sequence.shape[1]].to(sequence.dtype)
        n, _, dim = sequence.shape
        heads = TEMPORAL_HEADS

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, t.shape[1], heads, dim // heads).transpose(1, 2)

        q = split(self.to_q(sequence[:, -asked:]))
        out = F.scaled_dot_product_attention(q, split(self.to_k(sequence)), split(self.to_v(sequence)))
        return self.to_out[0](out.transpose(1, 2).reshape(n, asked, dim))


class GeGlu(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.ModuleList([GeGlu(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class TemporalBlock(nn.Module):
    def __init__(self, dim: int, frames: int) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList(TemporalAttention(dim, frames) for _ in range(2))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2))
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, cached: list[torch.Tensor] | None) -> tuple[torch.Tensor, list]:
        inputs = []
        for index, (attention, norm) in enumerate(zip(self.attention_blocks, self.norms, strict=True)):
            normed = norm(x)
            inputs.append(normed)
            x = x + attention(normed, cached[index] if cached is not None else None)
        return x + self.ff(self.ff_norm(x)), inputs


class TemporalTransformer(nn.Module):
    def __init__(self, dim: int, frames: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(32, dim, eps=1e-6)
        self.proj_in = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList([TemporalBlock(dim, frames)])
        self.proj_out = nn.Linear(dim, dim)


class TemporalModule(nn.Module):
    def __init__(self, dim: int, frames: int) -> None:
        super().__init__()
        self.temporal_transformer = TemporalTransformer(dim, frames)

    def forward(self, x: torch.Tensor, frames: int, cached: list[torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x`` [B*T, C, h, w] (frames of a window, consecutive) → the same shape, and the attention inputs of
        these frames [B*h*w, T, C] per attention (the streaming cache)."""
        tt = self.temporal_transformer
        bt, channels, h, w = x.shape
        hidden = tt.proj_in(tt.norm(x).permute(0, 2, 3, 1).reshape(bt, h * w, channels))
        # time as the sequence: [(B, h*w), T, C]
        hidden = hidden.reshape(bt // frames, frames, h * w, channels).transpose(1, 2).reshape(-1, frames, channels)
        inputs: list[torch.Tensor] = []
        for block in tt.transformer_blocks:
            hidden, block_inputs = block(hidden, cached)
            inputs.extend(block_inputs)
        hidden = hidden.reshape(bt // frames, h * w, frames, channels).transpose(1, 2).reshape(bt, h * w, channels)
        out = tt.proj_out(hidden).reshape(bt, h, w, channels).permute(0, 3, 1, 2)
        return out + x, inputs


class DptTemporalHead(nn.Module):
    def __init__(self, config: VdaConfig) -> None:
        super().__init__()
        dim, features, oc = config.embed_dim, config.features, config.out_channels
        self.projects = nn.ModuleList(nn.Conv2d(dim, c, 1) for c in oc)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(oc[0], oc[0], 4, stride=4), nn.ConvTranspose2d(oc[1], oc[1], 2, stride=2),
            nn.Identity(), nn.Conv2d(oc[3], oc[3], 3, stride=2, padding=1)])
        scratch = nn.Module()
        for index, channels in enumerate(oc, start=1):
            setattr(scratch, f"layer{index}_rn", nn.Conv2d(channels, features, 3, padding=1, bias=False))
        for index in range(1, 5):
            setattr(scratch, f"refinenet{index}", FusionBlock(features))
        scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        scratch.output_conv2 = nn.Sequential(nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(),
                                             nn.Conv2d(32, 1, 1), nn.ReLU(), nn.Identity())
        self.scratch = scratch
        self.motion_modules = nn.ModuleList(
            TemporalModule(c, config.num_frames) for c in (oc[2], oc[3], features, features))
        self.patch = config.patch

    def forward(self, tokens: list[torch.Tensor], rows: int, cols: int, frames: int,
                cached: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        layers = []
        for index, x in enumerate(tokens):
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[-1], rows, cols)
            layers.append(self.resize_layers[index](self.projects[index](x)))
        s, mm = self.scratch, self.motion_modules

        def cache(index: int) -> list[torch.Tensor] | None:
            return cached[2 * index:2 * index + 2] if cached is not None else None

        layer3, c0 = mm[0](layers[2], frames, cache(0))
        layer4, c1 = mm[1](layers[3], frames, cache(1))
        rn1, rn2 = s.layer1_rn(layers[0]), s.layer2_rn(layers[1])
        rn3, rn4 = s.layer3_rn(layer3), s.layer4_rn(layer4)
        path4, c2 = mm[2](s.refinenet4(rn4, size=rn3.shape[2:]), frames, cache(2))
        path3, c3 = mm[3](s.refinenet3(path4, rn3, size=rn2.shape[2:]), frames, cache(3))
        path2 = s.refinenet2(path3, rn2, size=rn1.shape[2:])
        out = s.output_conv1(s.refinenet1(path2, rn1))
        out = F.interpolate(out, (rows * self.patch, cols * self.patch), mode="bilinear", align_corners=True)
        last = s.output_conv2[0].weight.dtype
        return s.output_conv2(out.to(last)).to(out.dtype), c0 + c1 + c2 + c3


class VideoDepthNet(nn.Module):
    """Relative inverse depth (or metric depth, for the metric checkpoints) for windows of frames."""

    def __init__(self, config: VdaConfig) -> None:
        super().__init__()
        self.config = config
        self.pretrained = Dinov2Encoder(config)
        self.head = DptTemporalHead(config)

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's tokens for frames [N,3,H,W] (each frame on its own: frames can be batched freely)."""
        return self.pretrained(images)

    def decode(self, tokens: list[torch.Tensor], size: tuple[int, int], frames: int,
               cached: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Depth [B*T,H,W] for the tokens of B windows of ``frames`` frames each, and the temporal attentions'
        inputs of these frames (the streaming cache)."""
        h, w = size
        depth, inputs = self.head(tokens, h // self.config.patch, w // self.config.patch, frames, cached)
        depth = F.relu(F.interpolate(depth, size=(h, w), mode="bilinear", align_corners=True))
        return depth[:, 0], inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B,T,3,H,W] normalised, H and W multiples of 14 → [B,T,H,W]."""
        b, t = x.shape[:2]
        depth, _ = self.decode(self.encode(x.flatten(0, 1)), x.shape[-2:], t)
        return depth.unflatten(0, (b, t))

    def forward_stream(self, tokens: list[torch.Tensor], size: tuple[int, int], cached: list[torch.Tensor] | None
                       ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One frame's tokens (``encode``) against ``cached`` (per temporal attention, the earlier frames' inputs
        [h*w, K, C]); returns its depth [1,H,W] and its own inputs, to cache."""
        return self.decode(tokens, size, 1, cached)


def config_for_state_dict(state: dict[str, torch.Tensor]) -> VdaConfig:
    """The published configuration a checkpoint was saved from: the encoder's width and depth, the head's
    widths and the temporal position table's length are read from its shapes."""
    try:
        dim = state["pretrained.cls_token"].shape[-1]
        depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("pretrained.blocks."))
        base = next(c for c in CONFIGS.values() if c.embed_dim == dim and c.depth == depth)
        frames = state["head.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0."
                       "pos_encoder.pe"].shape[1]
        features = state["head.scratch.layer1_rn.weight"].shape[0]
        out_channels = tuple(int(state[f"head.projects.{i}.weight"].shape[0]) for i in range(4))
        grid = math.isqrt(state["pretrained.pos_embed"].shape[1] - 1)
    except (KeyError, StopIteration, IndexError, ValueError) as exc:
        raise ValueError(f"not a Video-Depth-Anything checkpoint ({exc!r} does not fit)") from None
    return VdaConfig(base.encoder, dim, depth, base.heads, base.layers, features, out_channels, frames,
                     grid=grid)
