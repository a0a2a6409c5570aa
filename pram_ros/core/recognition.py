"""The landmark recognizer: a transformer over an image's sparse keypoints (PRAM section 2).

One token per keypoint (a linear projection of its descriptor); positions enter as a learnable
Fourier-feature rotary encoding of normalized keypoint coordinates, applied to queries and keys in
every layer (as in LightGlue); a linear head gives logits over 1 + K classes (0 = no landmark).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F



@dataclass(frozen=True)
class RecognizerConfig:
    descriptor_dim: int = 64
    num_classes: int = 17  # 1 + K
    hidden: int = 128
    heads: int = 4
    layers: int = 4

    def __post_init__(self) -> None:
        if self.hidden % (2 * self.heads):
            raise ValueError("hidden must be divisible by 2 * heads")

    def to_dict(self) -> dict:
        return asdict(self)


def normalize_keypoints(kpts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixels -> [-1, 1] by the longest side, the same in training and inference."""
    w, h = size
    c = torch.tensor([w / 2, h / 2], device=kpts.device, dtype=kpts.dtype)
    return (kpts - c) / (max(w, h) / 2)


class FourierRotary(nn.Module):
    """Learnable Fourier features -> (cos, sin) for rotary position encoding."""

    def __init__(self, head_dim: int, gamma: float = 1.0) -> None:
        super().__init__()
        self.Wr = nn.Linear(2, head_dim // 2, bias=False)
        nn.init.normal_(self.Wr.weight.data, mean=0, std=gamma ** -2)

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        p = self.Wr(xy)  # (B, N, hd/2)
        emb = torch.stack([torch.cos(p), torch.sin(p)], 0).unsqueeze(-3)  # (2, B, 1, N, hd/2)
        return emb.repeat_interleave(2, dim=-1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x = x.unflatten(-1, (-1, 2))
    x1, x2 = x.unbind(-1)
    return torch.stack((-x2, x1), -1).flatten(-2)


def _rotary(freqs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return t * freqs[0] + _rotate_half(t) * freqs[1]


class SelfBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.Wqkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(),
                                 nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, enc: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        # Wqkv's outputs interleave q, k and v per channel (h, d, 3). Each is projected by its own
        # rows: slicing one (B, N, H, hd, 3) output instead cost three zero-filled copies of it in
        # training's backward pass (a third of a step). Heads must be contiguous in their last
        # dimension, or attention takes PyTorch's 5x slower reference path on the CPU.
        w, bias = self.Wqkv.weight, self.Wqkv.bias
        q, k, v = (F.linear(x, w[c::3], bias[c::3]).view(b, n, self.heads, -1).transpose(1, 2) for c in range(3))
        q, k, v = _rotary(enc, q), _rotary(enc, k), v.contiguous()
        attn_mask = None if mask is None else mask[:, None, None, :]
        msg = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        msg = self.out(msg.transpose(1, 2).reshape(b, n, d))
        return x + self.ffn(torch.cat([x, msg], -1))


class Recognizer(nn.Module):
    """Per-keypoint logits over 1 + K landmark classes."""

    def __init__(self, conf: RecognizerConfig) -> None:
        super().__init__()
        self.conf = conf
        self.input_proj = nn.Linear(conf.descriptor_dim, conf.hidden)
        self.posenc = FourierRotary(conf.hidden // conf.heads)
        self.layers = nn.ModuleList([SelfBlock(conf.hidden, conf.heads) for _ in range(conf.layers)])
        self.head = nn.Linear(conf.hidden, conf.num_classes)

    def forward(self, desc: torch.Tensor, kpts_norm: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """desc (B, N, D), normalized keypoints (B, N, 2), optional valid mask (B, N) -> logits (B, N, C)."""
        x = self.input_proj(desc)
        enc = self.posenc(kpts_norm)
        for layer in self.layers:
            x = layer(x, enc, mask)
        return self.head(x)
