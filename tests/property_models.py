"""Random architectures built from the ops prunec supports, for property-based tests."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

BLOCKS = ["conv", "residual", "depthwise", "se", "cat", "chunk", "grouped"]


class Block(nn.Module):
    def __init__(self, kind: str, c: int, width: int):
        super().__init__()
        self.kind = kind
        if kind == "conv":
            self.a = nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
            self.out = width
        elif kind == "residual":
            self.a = nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                   nn.Conv2d(width, c, 1), nn.BatchNorm2d(c))
            self.out = c
        elif kind == "depthwise":
            self.a = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c), nn.ReLU6())
            self.out = c
        elif kind == "se":
            self.fc1, self.fc2 = nn.Linear(c, width), nn.Linear(width, c)
            self.out = c
        elif kind == "cat":
            self.a, self.b = nn.Conv2d(c, width, 1), nn.Conv2d(c, width, 3, padding=1)
            self.out = 2 * width
        elif kind == "chunk":
            self.a = nn.Conv2d(c // 2, c // 2, 3, padding=1)
            self.out = c
        elif kind == "grouped":
            self.a = nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1, groups=2), nn.GroupNorm(2, 2 * c), nn.GELU())
            self.out = 2 * c

    def forward(self, x):
        if self.kind in ("conv", "depthwise", "grouped"):
            return self.a(x)
        if self.kind == "residual":
            return F.relu(x + self.a(x))
        if self.kind == "se":
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
            return x * s[:, :, None, None]
        if self.kind == "cat":
            return torch.cat([self.a(x), F.gelu(self.b(x))], dim=1)
        left, right = x.chunk(2, dim=1)
        return torch.cat([right, F.relu(self.a(left))], dim=1)


class RandomCNN(nn.Module):
    def __init__(self, kinds: list[str], widths: list[int], classes: int = 5, flatten: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        blocks, c = [], 16
        for kind, w in zip(kinds, widths):
            blocks.append(Block(kind, c, w))
            c = blocks[-1].out
        self.blocks = nn.Sequential(*blocks)
        self.flatten = flatten
        self.head = nn.Linear(c * (16 if flatten else 1), classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem(x)))
        if self.flatten:
            return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 4), 1))
        return self.head(x.mean((2, 3)))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int):
        super().__init__()
        self.h, self.kv, self.d = heads, kv_heads, dim // heads
        self.q = nn.Linear(dim, heads * self.d)
        self.k = nn.Linear(dim, kv_heads * self.d)
        self.v = nn.Linear(dim, kv_heads * self.d)
        self.o = nn.Linear(heads * self.d, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.h, self.d).transpose(1, 2)
        k = self.k(x).view(b, n, self.kv, self.d).transpose(1, 2)
        v = self.v(x).view(b, n, self.kv, self.d).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, enable_gqa=self.h != self.kv)
        return self.o(a.transpose(1, 2).reshape(b, n, self.h * self.d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, gated: bool):
        super().__init__()
        self.gated = gated
        self.up, self.down = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.gate = nn.Linear(dim, hidden, bias=False) if gated else None

    def forward(self, x):
        h = F.silu(self.gate(x)) * self.up(x) if self.gated else F.gelu(self.up(x))
        return self.down(h)


class RandomTransformer(nn.Module):
    def __init__(self, layers: list[tuple[int, int, int, bool]], dim: int = 32, norm: bool = False):
        super().__init__()
        self.embed = nn.Linear(12, dim)
        self.attn = nn.ModuleList(Attention(dim, h, kv) for h, kv, _, _ in layers)
        self.mlp = nn.ModuleList(MLP(dim, hid, g) for _, _, hid, g in layers)
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x)
        for attn, mlp in zip(self.attn, self.mlp):
            x = x + attn(x)
            x = x + mlp(x)
        return self.head(self.norm(x))
