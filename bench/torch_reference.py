"""PyTorch reference of the MSM-MAE model and pre-training recipe, written the way the official
code runs (eager PyTorch, explicit attention; timm's AdamW parameter groups, MAE's per-iteration
lr schedule and gradient accumulation), for benchmarks and cross-checks. Module and parameter
names follow the official state dict, so weights converted from our Flax parameters load with
`load_state_dict(strict=True)`.

Optional: needs `pip install torch` (CPU build is enough). Not imported by the package.

    python bench/torch_reference.py --variant base_208 --batch 64 [--threads 2] [--steps 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # pragma: no cover - depends on the optional extra
    raise SystemExit("bench/torch_reference.py needs PyTorch: pip install torch") from e

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.common import model_config_for  # noqa: E402
from msm_mae_jax.model import convert  # noqa: E402
from msm_mae_jax.model.config import ModelConfig  # noqa: E402


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def pos_embed_2d(dim: int, grid_hw: tuple[int, int], cls: bool) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed: first half encodes the width (time) index."""
    gh, gw = grid_hw
    w, h = np.meshgrid(np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32))
    emb = np.concatenate([_sincos_1d(dim // 2, w), _sincos_1d(dim // 2, h)], axis=1)
    return np.concatenate([np.zeros((1, dim)), emb]) if cls else emb


def pos_embed_1d_interleaved(dim: int, n: int, cls: bool) -> np.ndarray:
    """The official decoder's 1-D table: angle p / 10000^(2*(j//2)/D), sin even, cos odd."""
    p = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(dim)[None, :]
    ang = p / np.power(10000, 2 * (j // 2) / dim)
    tab = np.where(j % 2 == 0, np.sin(ang), np.cos(ang))
    return np.concatenate([np.zeros((1, dim)), tab]) if cls else tab


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        qkv = qkv.reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: tuple[int, int], dim: int):
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)

    def forward(self, x):  # [B,1,F,T] -> [B, N, D], frequency-major
        return self.proj(x).flatten(2).transpose(1, 2)


class TorchMAE(nn.Module):
    """MSM-MAE with the official module names."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.c = c
        d, dd = c.embed_dim, c.decoder_embed_dim
        cls = int(c.use_cls_token)
        self.patch_embed = PatchEmbed(c.patch_size, d)
        if cls:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer(
            "pos_embed",
            torch.tensor(pos_embed_2d(d, c.grid_size, bool(cls)), dtype=torch.float32)[None],
        )
        self.blocks = nn.ModuleList(Block(d, c.num_heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        dec = (
            pos_embed_1d_interleaved(dd, c.num_patches, bool(cls))
            if c.decoder_pos_embed == "1d"
            else pos_embed_2d(dd, c.grid_size, bool(cls))
        )
        self.register_buffer("decoder_pos_embed", torch.tensor(dec, dtype=torch.float32)[None])
        self.decoder_blocks = nn.ModuleList(
            Block(dd, c.decoder_num_heads, c.mlp_ratio) for _ in range(c.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(dd, eps=1e-6)
        self.decoder_pred = nn.Linear(dd, c.patch_dim)
        self._init()

    def _init(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.c.use_cls_token:
            nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def load_jax_params(self, params: dict) -> TorchMAE:
        """Loads our Flax parameters ({'encoder', 'decoder'}) through the official state dict."""
        sd = convert.params_to_state_dict(params, self.c)
        self.load_state_dict({k: torch.tensor(v) for k, v in sd.items()}, strict=True)
        return self

    def patchify(self, x):  # [B,1,F,T] -> [B, N, ph*pw], frequency-major
        ph, pw = self.c.patch_size
        b, _, f, t = x.shape
        x = x.reshape(b, 1, f // ph, ph, t // pw, pw)
        return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (f // ph) * (t // pw), ph * pw)

    def forward_encoder(self, x, mask_ratio: float, noise=None):
        cls = int(self.c.use_cls_token)
        x = self.patch_embed(x) + self.pos_embed[:, cls:, :]
        b, n, d = x.shape
        keep = int(n * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(b, n, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        if cls:
            tok = (self.cls_token + self.pos_embed[:, :1, :]).expand(b, -1, -1)
            x = torch.cat((tok, x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x, ids_restore):
        cls = int(self.c.use_cls_token)
        x = self.decoder_embed(x)
        b, n = ids_restore.shape
        tokens = torch.cat([x[:, cls:, :], self.mask_token.expand(b, n + cls - x.shape[1], -1)], 1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :cls, :], tokens], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, cls:, :]

    def forward(self, imgs, mask_ratio: float | None = None, noise=None):
        ratio = self.c.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        target = self.patchify(imgs)
        if self.c.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(-1)
        return (loss * mask).sum() / mask.sum(), pred, mask


def add_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """The official AdamW parameter groups (timm's `optim_factory.add_weight_decay`, as MAE's
    main_pretrain.py calls it): trainable 1-D tensors and names ending in '.bias' get no
    decay, every other trainable tensor does (`cls_token` and `mask_token` included);
    frozen tensors are left out."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim == 1 or name.endswith(".bias") else decay).append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def make_optimizer(model: TorchMAE, lr: float = 1.5e-4, wd: float = 0.05):
    """AdamW(betas=(0.9, 0.95)) over the official parameter groups."""
    return torch.optim.AdamW(add_weight_decay(model, wd), lr=lr, betas=(0.9, 0.95))


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The arguments of the official schedule: lr = blr * effective batch / 128 (MSM-MAE's
    main_pretrain.py; MAE divides by 256), epochs may be fractional in the formula."""

    lr: float
    epochs: float
    warmup_epochs: float
    min_lr: float = 0.0
    accum_iter: int = 1


def adjust_learning_rate(optimizer, epoch: float, r: Recipe) -> float:
    """MAE's util/lr_sched.py: linear warm-up to r.lr over warmup_epochs, then half-cycle
    cosine to min_lr at r.epochs; `epoch` is fractional. Sets every group's lr."""
    if epoch < r.warmup_epochs:
        lr = r.lr * epoch / r.warmup_epochs
    else:
        t = (epoch - r.warmup_epochs) / (r.epochs - r.warmup_epochs)
        lr = r.min_lr + (r.lr - r.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def train_one_epoch(model, loader, optimizer, scaler, epoch: int, r: Recipe) -> list[float]:
    """MAE's engine_pretrain.py `train_one_epoch` in float32: the lr set from the fractional
    epoch at the first iteration of each accumulation window, loss / accum_iter through the
    loss scaler (NativeScaler: scaled backward; on an update unscale, step, update), the
    optimizer stepped and zeroed every accum_iter iterations. `loader` is a sized iterable of
    (lms_B1FT, noise_BN) (the masking noise made explicit). Returns the iteration losses."""
    model.train()
    optimizer.zero_grad()
    losses = []
    for it, (lms, noise) in enumerate(loader):
        if it % r.accum_iter == 0:
            adjust_learning_rate(optimizer, it / len(loader) + epoch, r)
        loss = model(lms, noise=noise)[0]
        losses.append(loss.item())
        scaler.scale(loss / r.accum_iter).backward()
        if (it + 1) % r.accum_iter == 0:
            scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
    return losses


def bench_train_step(c: ModelConfig, batch: int, steps: int, warmup: int = 2) -> dict:
    torch.manual_seed(0)
    model = TorchMAE(c).train()
    opt = make_optimizer(model)
    x = torch.randn(batch, 1, *c.input_size)
    for _ in range(warmup):
        opt.zero_grad(set_to_none=True)
        model(x)[0].backward()
        opt.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = model(x)[0]
        loss.backward()
        opt.step()
    dt = time.perf_counter() - t0
    return {"samples_per_s": batch * steps / dt, "step_s": dt / steps, "loss": loss.item()}


@torch.no_grad()
def bench_encode(c: ModelConfig, batch: int, steps: int, warmup: int = 1) -> dict:
    """Encoder forward without masking on full units (feature extraction)."""
    torch.manual_seed(0)
    model = TorchMAE(c).eval()
    x = torch.randn(batch, 1, *c.input_size)
    for _ in range(warmup):
        model.forward_encoder(x, 0.0)
    t0 = time.perf_counter()
    for _ in range(steps):
        model.forward_encoder(x, 0.0)
    dt = time.perf_counter() - t0
    return {"units_per_s": batch * steps / dt}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="base_208", help="configs/msm_mae.py variant")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    c = model_config_for(a.variant)
    r = bench_train_step(c, a.batch, a.steps)
    r.update(variant=a.variant, batch=a.batch, threads=a.threads, torch=torch.__version__)
    print(
        f"torch {torch.__version__} {a.variant} batch {a.batch} threads {a.threads}: "
        f"{r['samples_per_s']:.2f} samples/s ({r['step_s'] * 1e3:.0f} ms/step)"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)
    return r


if __name__ == "__main__":
    main()
