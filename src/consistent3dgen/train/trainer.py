"""Trainers of the mini prior: the VAE and flow-matching objectives, AdamW + EMA, resumable checkpoints, curves.

Objectives (Direct3D-S2's training code is not public; these follow its released model code and TRELLIS, the
codebase its sparse modules come from):

* dense VAE: occupancy {0,1} → posterior sample → logits; binary cross-entropy + ``kl_weight`` · KL, the KL
  averaged over latent elements like the official ``DiagonalGaussianDistribution.kl``.
* sparse SDF VAE: narrow-band voxels → posterior sample on latent cells → tanh SDF on every voxel of the
  cells; L1 to the stored values + ``kl_weight`` · KL. Like the official ``chunk_size`` training, the decoder's
  upsampling runs on one random box of latent cells (with a padding of context cells) to bound its cost.
* dense / sparse DiT (rectified flow, diffusers convention): ``x_t = (1 − σ) x0 + σ ε``, target ``v = ε − x0``,
  the model sees ``t = 1000 σ``; σ ~ logit-normal(mean 1, std 1) as TRELLIS trains, optionally shifted
  ``σ' = sσ / (1 + (s − 1)σ)`` (SD3/diffusers shift), or shifted-uniform. MSE loss. The latents are the
  EMA VAE's posterior means, scaled to unit variance (``latents_scale``, stored in the config as the
  official models do).

Devices: every model trains where its parameters are (``train_mini_prior(device=...)`` moves them); batches,
noise and noise levels are drawn on the CPU from the stage's own generators and then moved, so a run's batches do
not depend on the device, and checkpoints and latent caches are stored from the CPU.

Checkpoints: ``<run>/<stage>/checkpoint.safetensors`` (model, EMA, AdamW moments, RNG states) +
``checkpoint.json`` (step, config, loss history); a resumed run continues bit-exactly (same batches, noise).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..devices import module_device
from ..errors import InputError
from ..generators.direct3d_s2.sparse_tensor import SparseTensor
from ..generators.mini import build_component
from ..io.atomic import atomic_path, atomic_write_text
from ..preview import line_plot
from ..sampling.noise import draw_noise
from .config import MiniPriorConfig, StageTraining
from .data import SampleSet, ShapeSample, band_mask

# ------------------------------------------------------------------------------------------------- models


def build_models(cfg: MiniPriorConfig, seed: int | None = None) -> dict[str, nn.Module]:
    """The models of the mini prior (one per stage of ``cfg.stages()``: four, six with a second sparse stage),
    freshly initialised for training (seeded; the first four draw the same weights either way). The second
    stage's models are re-initialised from the first's trained weights before they train
    (:meth:`StageTrainer.init_from`)."""
    torch.manual_seed(cfg.seed if seed is None else seed)
    models = {
        "dense_vae": build_component(cfg.dense_vae),
        "dense_dit": build_component(cfg.dense_dit),
        "sparse_vae": build_component(cfg.sparse_vae),
        "sparse_dit": build_component(cfg.sparse_dit),
    }
    for name, m in models.items():
        init_for_training(m, is_dit=name.endswith("dit"))
    for name in cfg.stages()[len(models):]:  # the second stage: shapes of the first, init replaced by its weights
        models[name] = build_component(cfg.model_entry(name))
        init_for_training(models[name], is_dit="dit" in name)
    return models


def init_for_training(model: nn.Module, is_dit: bool) -> None:
    """The official initialisation: xavier linears, zero adaLN modulation and zero output layers (DiT: output 0;
    sparse decoder: tanh(0) = 0), except the sparse encoder's posterior: its mean half keeps the xavier weights and
    its log-variance starts at -8, because a zero output layer samples z ~ N(0, 1) at first, pure noise that the
    decoder learns to ignore; with KL weight 1e-6 the tiny VAE stalled at chance for hundreds of steps that way."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for name, m in model.named_modules():
        last = name.split(".")[-1]
        if is_dit and "adaLN_modulation" in name and isinstance(m, nn.Linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        if last == "out_layer" and isinstance(m, nn.Linear):
            if name == "encoder.out_layer" and not is_dit:
                half = m.out_features // 2
                with torch.no_grad():
                    m.weight[half:] = 0.0
                    m.bias[half:] = -8.0
            else:
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)
    if is_dit:
        for name, m in model.named_modules():
            if name.endswith("adaLN_modulation") and isinstance(m, nn.Sequential):
                nn.init.zeros_(m[-1].weight)
                nn.init.zeros_(m[-1].bias)


def count_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


# --------------------------------------------------------------------------------------------- objectives


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, e^logvar) ‖ N(0, 1)) averaged over elements (the official ``kl`` uses a mean)."""
    return 0.5 * torch.mean(mean.pow(2) + logvar.exp() - 1.0 - logvar)


def dense_vae_loss(vae: nn.Module, occupancy: torch.Tensor, kl_weight: float, gen: torch.Generator) -> dict:
    occupancy = occupancy.to(module_device(vae))
    mean, logvar = vae.encode_moments(occupancy)
    z = mean + torch.exp(0.5 * logvar) * draw_noise(mean.shape, gen, mean.device, mean.dtype)
    logits = vae.decode(z)
    recon = F.binary_cross_entropy_with_logits(logits, occupancy)
    kl = gaussian_kl(mean, logvar)
    with torch.no_grad():
        pred = logits > 0
        truth = occupancy > 0.5
        iou = (pred & truth).sum() / (pred | truth).sum().clamp(min=1)
    return {"loss": recon + kl_weight * kl, "recon": recon, "kl": kl, "iou": iou}


def batch_band_tensor(samples: list[ShapeSample], keep: list[np.ndarray | None] | None = None,
                      device: torch.device | str = "cpu") -> SparseTensor:
    """Narrow-band voxels of several samples as one SparseTensor on ``device`` (batch column first, rows grouped);
    ``keep[b]`` (optional) is a bool mask over sample b's latent cells: only their band voxels are taken."""
    coords, feats = [], []
    for b, s in enumerate(samples):
        if keep is not None and keep[b] is not None:  # the sample restricted to those cells, band taken after
            s = dataclasses.replace(s, cells=s.cells[keep[b]], values=s.values[keep[b]])
        band = s.band()
        coords.append(np.concatenate([np.full((len(band), 1), b, np.int32), band.coords], 1))
        feats.append(band.feats)
    return SparseTensor(torch.from_numpy(np.concatenate(feats)).float(),
                        torch.from_numpy(np.concatenate(coords))).to(device)


def crop_cells(cells: np.ndarray, max_cells: int, rng: np.random.Generator, padding: int = 1):
    """(core mask, padded mask) over a sample's latent cells (M, 3): a random Chebyshev box around one cell
    holding ≤ ``max_cells`` cells, and that box grown by ``padding`` cells (context for the convolutions)."""
    n = len(cells)
    if max_cells <= 0 or n <= max_cells:
        full = np.ones(n, bool)
        return full, full
    xyz = cells.astype(np.int64)
    dist = np.abs(xyz - xyz[int(rng.integers(n))]).max(axis=1)
    radius = int(np.sort(dist)[max_cells - 1])
    core = dist <= radius
    if core.sum() > max_cells:  # the boundary shell overshoots: keep the box one smaller (≥ the centre)
        core = dist <= max(radius - 1, 0)
    return core, dist <= int(dist[core].max()) + padding


def sparse_vae_loss(
    vae: nn.Module,
    samples: list[ShapeSample],
    kl_weight: float,
    max_cells: int,
    gen: torch.Generator,
    rng,
    band_weight: float = 1.0,
) -> dict:
    """Weighted L1 over every decoded voxel (weight ``band_weight`` in the narrow band, 1 beyond it, where the
    target is the constant +1) + ``kl_weight`` · KL; also reports the band's inside/outside accuracy.

    With ``max_cells`` > 0 each sample is cropped **before encoding** to a random box of ≤ ``max_cells`` latent
    cells plus one cell of context, and only the box's voxels are supervised: the VAE is local (convolutions and
    windowed attention), and encoding the whole shape for a small decoded crop cost ~4× more per step.
    """
    dev = module_device(vae)
    crops = [crop_cells(s.cells, max_cells, rng) for s in samples]
    x = batch_band_tensor(samples, [padded for _, padded in crops], device=dev)
    h = vae.encoder(x)
    mean, logvar = torch.chunk(h.feats, 2, dim=1)
    logvar = logvar.clamp(-30.0, 20.0)
    z = mean + torch.exp(0.5 * logvar) * draw_noise(mean.shape, gen, mean.device, mean.dtype)
    sdf, _ = vae.decoder.upsamples(vae.decoder.transformer(h.replace(z)), x.feats.dtype)
    losses, weight_sum, sign_ok, band_n = [], 0.0, 0.0, 0
    for b, (s, (core, _)) in enumerate(zip(samples, crops, strict=True)):
        rows = torch.nonzero(sdf.coords[:, 0] == b)[:, 0]
        parent = sdf.coords[rows, 1:].long() // s.factor
        keep = rows[_rows_in(parent, torch.from_numpy(s.cells[core]).long().to(dev), s.cell_resolution)]
        pred = sdf.feats[keep, 0]
        target_np = s.lookup(sdf.coords[keep, 1:].cpu().numpy())  # the stored field, looked up on the CPU
        target = torch.from_numpy(target_np).to(dev)
        band = torch.from_numpy(band_mask(target_np, s.convention)).to(dev)
        weight = torch.where(band, band_weight, 1.0)
        losses.append((weight * torch.abs(pred - target)).sum())
        weight_sum += float(weight.sum())
        with torch.no_grad():
            sign_ok += float(((pred[band] > 0) == (target[band] > 0)).float().sum())
            band_n += int(band.sum())
    recon = torch.stack(losses).sum() / max(weight_sum, 1.0)
    kl = gaussian_kl(mean, logvar)
    return {
        "loss": recon + kl_weight * kl,
        "recon_l1": recon,
        "kl": kl,
        "band_sign_acc": torch.tensor(sign_ok / max(band_n, 1)),
    }


def _rows_in(coords: torch.Tensor, members: torch.Tensor, resolution: int) -> torch.Tensor:
    """Mask of ``coords`` (N, 3) rows that are in ``members`` (M, 3)."""
    key = (coords[:, 0] * resolution + coords[:, 1]) * resolution + coords[:, 2]
    mk = torch.sort((members[:, 0] * resolution + members[:, 1]) * resolution + members[:, 2]).values
    pos = torch.searchsorted(mk, key).clamp(max=len(mk) - 1)
    return mk[pos] == key


def sample_sigmas(n: int, tc: StageTraining, gen: torch.Generator) -> torch.Tensor:
    """Training noise levels σ ∈ (0, 1) (see module doc)."""
    if tc.timestep_sampling == "logit_normal":
        sigma = torch.sigmoid(torch.randn(n, generator=gen) * tc.logit_std + tc.logit_mean)
    elif tc.timestep_sampling == "shifted_uniform":
        sigma = torch.rand(n, generator=gen)
    else:
        raise ValueError(f"unknown timestep sampling {tc.timestep_sampling!r}")
    s = tc.shift
    return s * sigma / (1 + (s - 1) * sigma)


def flow_matching_loss(velocity: Callable, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> dict:
    """Rectified-flow loss; ``sigma`` broadcastable to x0; ``velocity(x_t)`` returns the predicted ε − x0."""
    xt = (1 - sigma) * x0 + sigma * noise
    v = velocity(xt)
    loss = F.mse_loss(v, noise - x0)
    return {"loss": loss}


def dense_dit_loss(dit: nn.Module, latents: torch.Tensor, tc: StageTraining, null_tokens: int, gen) -> dict:
    latents = latents.to(module_device(dit))
    b = latents.shape[0]
    sigma = sample_sigmas(b, tc, gen).to(latents.device)
    noise = draw_noise(latents.shape, gen, latents.device, latents.dtype)
    cond = torch.zeros(b, null_tokens, _cond_channels(dit), device=latents.device)
    return flow_matching_loss(lambda xt: dit(xt, sigma * 1000.0, cond), latents, sigma.view(b, 1, 1, 1, 1), noise)


def _cond_channels(model: nn.Module) -> int:
    """Width of the condition tokens (the cross-attention key/value input)."""
    for name, m in model.named_modules():
        if name.endswith("cross_attn.to_kv") and isinstance(m, nn.Linear):
            return m.in_features
    raise ValueError("cannot find the cross-attention context width of the DiT")


def sparse_dit_loss(dit: nn.Module, tokens: list[tuple[np.ndarray, np.ndarray]], tc, null_tokens: int, gen) -> dict:
    """``tokens``: per sample (coords (M, 3) int, latents (M, C)), already in block order."""
    dev = module_device(dit)
    b = len(tokens)
    coords = torch.from_numpy(np.concatenate([np.c_[np.full(len(c), i), c] for i, (c, _) in enumerate(tokens)]))
    coords = coords.to(dev)
    x0 = torch.from_numpy(np.concatenate([z for _, z in tokens])).float().to(dev)
    counts = torch.tensor([len(c) for c, _ in tokens], device=dev)
    sigma = sample_sigmas(b, tc, gen).to(dev)
    noise = draw_noise(x0.shape, gen, x0.device, x0.dtype)
    cond = torch.zeros(b, null_tokens, _cond_channels(dit), device=dev)
    sig_rows = torch.repeat_interleave(sigma, counts)[:, None]

    def velocity(xt):
        return dit(SparseTensor(xt, coords.int()), sigma * 1000.0, cond).feats

    return flow_matching_loss(velocity, x0, sig_rows, noise)


# ------------------------------------------------------------------------------------------- stage runner


class EMA:
    """Exponential moving average of the weights, with the usual warm-up ``min(decay, (1 + n) / (10 + n))`` so a
    short run's average is not dominated by the initial weights."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1.0 + step) / (10.0 + step))
        for e, p in zip(self.model.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - decay)


def _lr_at(step: int, tc: StageTraining) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    frac = (step - tc.warmup_steps) / max(tc.steps - tc.warmup_steps, 1)
    return tc.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


class StageTrainer:
    """Train one model with a loss function ``loss_fn(model, step, gen, rng) -> dict`` and resumable state."""

    def __init__(self, name: str, model: nn.Module, tc: StageTraining, run_dir: str | Path, seed: int = 0):
        self.name = name
        self.model = model
        self.tc = tc
        self.dir = Path(run_dir) / name
        self.opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.99))
        self.ema = EMA(model, tc.ema_decay)
        self.step = 0
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.history: list[dict[str, float]] = []

    def init_from(self, source: nn.Module) -> None:
        """Start from ``source``'s weights (a fine-tune: the model and its EMA), before any step; the optimizer
        keeps its (empty) state, as the parameters are copied in place."""
        if self.step:
            raise ValueError(f"{self.name}: cannot re-initialise a stage at step {self.step}")
        state = source.state_dict()
        self.model.load_state_dict(state, strict=True)
        self.ema.model.load_state_dict(state, strict=True)

    # --- checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.safetensors"

    def save(self) -> None:
        from safetensors.torch import save_file

        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in self.ema.model.state_dict().items()})
        opt_state = self.opt.state_dict()
        for pid, st in opt_state["state"].items():
            for k, v in st.items():
                tensors[f"opt.{pid}.{k}"] = torch.as_tensor(v).detach().cpu().clone().contiguous()
        tensors["rng.torch"] = self.gen.get_state()
        meta = {
            "stage": self.name,
            "step": self.step,
            "training": self.tc.__dict__,
            "numpy_rng": self.rng.bit_generator.state,
            "history": self.history,
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.checkpoint_path) as tmp:
            save_file(tensors, tmp)
        atomic_write_text(self.dir / "checkpoint.json", json.dumps(meta, default=_json_default))

    def load(self) -> bool:
        """Resume from the stage's checkpoint if there is one (weights, EMA, optimizer, RNGs, history)."""
        if not self.checkpoint_path.is_file() or not (self.dir / "checkpoint.json").is_file():
            return False
        from ..io.weights import read_state_dict

        try:
            tensors = read_state_dict(self.checkpoint_path)
            meta = json.loads((self.dir / "checkpoint.json").read_text())
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is the same user error
            raise InputError(f"cannot resume from {self.checkpoint_path}: {e}") from e
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
        self.ema.model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, strict=True)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, pid, key = k.split(".", 2)
                state.setdefault(int(pid), {})[key] = v
        opt_sd = self.opt.state_dict()
        opt_sd["state"] = state
        self.opt.load_state_dict(opt_sd)
        self.gen.set_state(tensors["rng.torch"])
        self.rng.bit_generator.state = meta["numpy_rng"]
        self.step = int(meta["step"])
        self.history = meta["history"]
        return True

    # --- loop
    def run(self, loss_fn: Callable, steps: int | None = None, log: Callable | None = print) -> None:
        """Train until ``steps`` (default: the configured total) steps are done, checkpointing on the way."""
        total = self.tc.steps if steps is None else steps
        self.model.train()
        t0 = time.time()
        while self.step < total:
            for g in self.opt.param_groups:
                g["lr"] = _lr_at(self.step, self.tc)
            out = loss_fn(self.model, self.step, self.gen, self.rng)
            self.opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
            self.opt.step()
            self.ema.update(self.model, self.step)
            self.step += 1
            row = {"step": self.step, "lr": self.opt.param_groups[0]["lr"], "grad_norm": float(grad_norm)}
            row.update({k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in out.items()})
            row["seconds"] = time.time() - t0
            self.history.append(row)
            if log and (self.step % self.tc.log_every == 0 or self.step == total):
                terms = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("step", "seconds"))
                log(f"{self.name} step {self.step}/{total} {terms} ({row['seconds']:.0f} s)")
            if self.step % self.tc.checkpoint_every == 0 or self.step == total:
                self.save()
                write_curves(self.history, self.dir / "loss.csv", self.dir / "loss.png", self.name)


def _json_default(o):
    if isinstance(o, np.integer | np.floating):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


# ------------------------------------------------------------------------------------------------- curves


def write_curves(history: list[dict[str, float]], csv_path: Path, png_path: Path, title: str = "") -> None:
    """Loss history as CSV (every logged term) and a PNG line plot of ``loss`` (log scale, plus a running mean)."""
    if not history:
        return
    keys = list(dict.fromkeys(k for row in history for k in row))
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    with atomic_path(png_path) as tmp:
        line_plot([r["step"] for r in history], [r["loss"] for r in history], tmp, f"{title} loss", "step")


def dense_vae_objective(data: SampleSet, tc: StageTraining) -> Callable:
    def loss_fn(model, step, gen, rng):
        idx = rng.integers(0, len(data), tc.batch_size)
        occ = torch.from_numpy(data.occupancy_batch(idx))
        return dense_vae_loss(model, occ, tc.kl_weight, gen)

    return loss_fn


def sparse_vae_objective(data: SampleSet, tc: StageTraining) -> Callable:
    def loss_fn(model, step, gen, rng):
        idx = rng.integers(0, len(data), tc.batch_size)
        batch = [data[int(i)] for i in idx]
        return sparse_vae_loss(model, batch, tc.kl_weight, tc.max_decoded_cells, gen, rng, tc.band_weight)

    return loss_fn


def dense_dit_objective(latents: torch.Tensor, tc: StageTraining, null_tokens: int) -> Callable:
    def loss_fn(model, step, gen, rng):
        idx = torch.from_numpy(rng.integers(0, len(latents), tc.batch_size))
        return dense_dit_loss(model, latents[idx], tc, null_tokens, gen)

    return loss_fn


def sparse_dit_objective(tokens: list[tuple[np.ndarray, np.ndarray]], tc: StageTraining, null_tokens: int):
    def loss_fn(model, step, gen, rng):
        idx = rng.integers(0, len(tokens), tc.batch_size)
        return sparse_dit_loss(model, [tokens[int(i)] for i in idx], tc, null_tokens, gen)

    return loss_fn


# ------------------------------------------------------------------------------------------ latent caches


GROUND_SYMMETRIES = (1, 2, 4, 8)


def ground_symmetries(occupancy: np.ndarray, count: int) -> np.ndarray:
    """(B·count, 1, D, D, D): each grid of ``occupancy`` (B, 1, D, D, D), index [x, y, z], y up, under the first
    ``count`` symmetries of the ground square: identity, x mirror, z mirror, half turn, then the same after
    swapping x and z (quarter turns and the diagonal mirrors). Variants are grouped: all of the first, then the
    second, ..."""
    if count not in GROUND_SYMMETRIES:
        raise ValueError(f"symmetries must be one of {GROUND_SYMMETRIES}, got {count}")
    x, z = 2, 4
    flips = [occupancy, np.flip(occupancy, x), np.flip(occupancy, z), np.flip(occupancy, (x, z))]
    swapped = np.swapaxes(occupancy, x, z)
    flips += [swapped, np.flip(swapped, x), np.flip(swapped, z), np.flip(swapped, (x, z))]
    return np.ascontiguousarray(np.concatenate(flips[:count]))


@torch.no_grad()
def encode_dense_latents(vae: nn.Module, data: SampleSet, batch: int = 32, symmetries: int = 1) -> torch.Tensor:
    """Posterior means (N·symmetries, C, L, L, L) of every sample's occupancy (and its ground symmetries)."""
    out, dev = [], module_device(vae)
    for s in range(0, len(data), batch):
        occ = ground_symmetries(data.occupancy_batch(range(s, min(s + batch, len(data)))), symmetries)
        out.append(vae.encode_moments(torch.from_numpy(occ).to(dev))[0].cpu())
    return torch.cat(out)


@torch.no_grad()
def encode_sparse_latents(vae: nn.Module, data: SampleSet, block_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per sample: (latent cell coords (M, 3) in block order, posterior means (M, C))."""
    from ..generators.direct3d_s2.block_order import block_order

    out, dev = [], module_device(vae)
    for i in range(len(data)):
        h = vae.encoder(batch_band_tensor([data[i]], device=dev))
        coords, mean = h.coords.cpu(), torch.chunk(h.feats, 2, dim=1)[0].cpu()
        order = block_order(coords, block_size)
        out.append((coords[order, 1:].numpy().astype(np.int32), mean[order].numpy().astype(np.float32)))
    return out


def latent_scale(values: torch.Tensor | np.ndarray) -> float:
    """``latents_scale`` that gives the diffusion space unit standard deviation (official decode: z / scale)."""
    std = float(torch.as_tensor(values).float().std())
    return 1.0 / max(std, 1e-6)
