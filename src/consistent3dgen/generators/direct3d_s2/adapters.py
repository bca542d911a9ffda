"""Adapters from the Direct3D-S2 models to the stage protocols the sampler and pipeline use (``base.py``).

Latent space seen by the sampler = the diffusion space of the official pipeline:
``z_diffusion = (z_vae − latents_shift) · latents_scale`` (both 1.0 / 0.0 in the released configs; the official
pipeline decodes ``z / latents_scale + latents_shift``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ...devices import module_device
from ...errors import InputError
from .dense_dit import DenseDiT
from .dense_vae import DenseShapeVAE, UpsampleBlock3d

# What Direct3D-S2 brings to unset generation options. Official numbers from DreamTechAI/Direct3D-S2 (a1cf235),
# ``direct3d_s2/pipeline.py``, ``Direct3DS2Pipeline.__call__`` / ``inference``; one pipeline serves both
# releases (``from_pretrained(subfolder=...)``), so v1.0 and v1.1 bring the same numbers:
# * steps 50 / 30 / 15 and CFG 7.0 for each stage: ``__call__``'s ``dense_sampler_params``,
#   ``sparse_512_sampler_params``, ``sparse_1024_sampler_params``; shifts 6 / 6 / 8: ``config.yaml``'s
#   ``dense_scheduler`` / ``sparse_scheduler_512`` / ``sparse_scheduler_1024`` (sampling.DIRECT3D_S2_SCHEDULES);
# * occupancy threshold 0.1: ``inference(mode='dense', mc_threshold=0.1)``, i.e. ``DenseShapeVAE.decode_mesh``
#   keeps sigmoid(logits) >= 0.1 as the 512 stage's tokens;
# * mc_level 0.2: ``__call__(mc_threshold=0.2)`` (app.py passes 0.2 too), the level of a decoded SDF without
#   refiner (``SparseSDFVAE.sparse2mesh``); the refiners derive theirs from it (``refinement.py``: 512 at 2 × 0.2,
#   1024 at 0.2);
# * refiners on: the 512 one always (``remove_interior=True`` hard-coded), the 1024 one by ``remove_interior=True``
#   (here ``refine`` resolves on when the refiner files were found: ``Generator.option_defaults``);
# * no simplification by default (``remesh=False``; app.py decimates 95 % with pyvista), so no face count is
#   official: ``max_faces`` stays this package's.
# Ours, not official: band 2 / shell 1 voxel (the seen shell's convention) and the paper's guidance λ 8.
DIRECT3D_S2_OFFICIAL: dict[str, dict[str, Any]] = {
    version: {"cfg_scale": 7.0, "occupancy_threshold": 0.1, "mc_level": 0.2}
    for version in ("v1.0", "v1.1")
}
DIRECT3D_S2_DEFAULTS = {"band": 2.0, "shell": 1.0, "guidance": 8.0, "guidance_variant": "paper",
                        **DIRECT3D_S2_OFFICIAL["v1.1"]}


def config_version(config: dict[str, Any]) -> str:
    """``v1.0`` when the config's sparse DiTs take sparse conditions (the v1.0 release), else ``v1.1``."""
    dits = [v for k, v in config.items() if k.startswith("sparse_dit") and isinstance(v, dict)]
    return "v1.0" if any((d.get("params") or {}).get("sparse_conditions") for d in dits) else "v1.1"


class Direct3DS2DenseStage:
    """Dense stage (``DenseStage``): 64³ occupancy ↔ (8, 16, 16, 16) latent, velocity from the dense DiT.

    Inputs are cast to the models' compute dtype; outputs keep that dtype for ``velocity`` (so a float16 model
    runs the sampler in float16, as the official pipeline does) and are float32 for encode/decode.
    """

    def __init__(self, vae: DenseShapeVAE, dit: DenseDiT):
        self.vae = vae.eval()
        self.dit = dit.eval()
        self.latent_shape = (dit.in_channels, dit.resolution, dit.resolution, dit.resolution)
        levels = sum(isinstance(b, UpsampleBlock3d) for b in vae.decoder.blocks)
        self.occupancy_resolution = dit.resolution * 2**levels
        self.latents_scale = float(vae.latents_scale)
        self.latents_shift = float(vae.latents_shift)

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.dtype

    @property
    def device(self) -> torch.device:
        return module_device(self.dit)

    def _check_latent(self, latent: torch.Tensor) -> None:
        if latent.ndim != 5 or tuple(latent.shape[1:]) != self.latent_shape:
            raise ValueError(f"dense latent must be (B, {self.latent_shape}), got {tuple(latent.shape)}")

    @torch.no_grad()
    def encode_occupancy(self, occupancy: torch.Tensor) -> torch.Tensor:
        """(B, 1, R, R, R) {0, 1} occupancy → (B, 8, 16, 16, 16) float32 latent (posterior mean)."""
        r = self.occupancy_resolution
        if occupancy.ndim != 5 or tuple(occupancy.shape[1:]) != (1, r, r, r):
            raise ValueError(f"occupancy must be (B, 1, {r}, {r}, {r}), got {tuple(occupancy.shape)}")
        occ = occupancy.to(device=module_device(self.vae), dtype=torch.float32)
        if not torch.all((occ == 0) | (occ == 1)):
            raise ValueError("occupancy must contain only 0 and 1")
        mean = self.vae.encode(occ).float()
        return (mean - self.latents_shift) * self.latents_scale

    @torch.no_grad()
    def decode_occupancy(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, 8, 16, 16, 16) latent → (B, 1, 64, 64, 64) float32 occupancy logits."""
        self._check_latent(latent)
        z = latent.to(module_device(self.vae)).float() / self.latents_scale + self.latents_shift
        return self.vae.decode(z.to(self.vae.decoder.dtype)).float()

    @torch.no_grad()
    def velocity(self, x: torch.Tensor, timestep: torch.Tensor, cond: Any) -> torch.Tensor:
        """DiT velocity for (B, 8, 16, 16, 16) latents; ``timestep`` (1,) or (B,) = 1000·sigma; cond (B|1, L, C)."""
        self._check_latent(x)
        device = self.device
        b = x.shape[0]
        t = torch.as_tensor(timestep, device=device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(b)
        elif t.numel() != b:
            raise ValueError(f"{t.numel()} timesteps for a batch of {b}")
        if not torch.is_tensor(cond) or cond.ndim != 3:
            raise ValueError("dense stage condition must be a (B, L, C) tensor of image tokens")
        cond = cond.to(device)
        if cond.shape[0] == 1 and b > 1:
            cond = cond.expand(b, -1, -1)
        return self.dit(x.to(device=device, dtype=self.dit.dtype), t, cond)


def load_dense_stage(
    source: str | os.PathLike | None = None,
    subfolder: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> Direct3DS2DenseStage:
    """Dense stage from a local folder or the hub id (default ``wushuang98/Direct3D-S2``, v1.1)."""
    from . import checkpoints

    parts = checkpoints.load_parts(
        source if source is not None else checkpoints.HUB_ID,
        parts=("dense_vae", "dense_dit"),
        subfolder=subfolder if subfolder is not None else checkpoints.DEFAULT_SUBFOLDER,
        dtype=dtype,
        device=device,
        **kwargs,
    )
    return Direct3DS2DenseStage(parts["dense_vae"], parts["dense_dit"])


def sparse_condition(tokens: torch.Tensor, patch_mask: torch.Tensor, num_cls: int = 1, num_reg: int = 4):
    """v1.0 sparse conditions (official ``extract_tokens_and_coords``): a SparseTensor of the cls + register
    tokens at (b, 0, 0, 1) and the foreground patch tokens at (b, w, h, 0); ``patch_mask`` (B, H, W) bool."""
    from .sparse_tensor import SparseTensor

    feats, coords = [], []
    side = patch_mask.shape[1]
    for b in range(tokens.shape[0]):
        head = tokens[b, : num_cls + num_reg]
        pos = patch_mask[b].nonzero()
        h, w = pos[:, 0], pos[:, 1]
        patches = tokens[b, num_cls + num_reg :][h * side + w]
        head_coords = torch.tensor([[b, 0, 0, 1]] * (num_cls + num_reg), device=tokens.device)
        patch_coords = torch.stack([torch.full_like(h, b), w, h, torch.zeros_like(h)], dim=1)
        feats += [head, patches]
        coords += [head_coords, patch_coords]
    return SparseTensor(torch.cat(feats), torch.cat(coords).to(torch.int32))


class Direct3DS2SparseStage:
    """Sparse stage (``SparseStage``): SDF voxels at 8·latent resolution ↔ latent tokens; sparse DiT velocity.

    ``velocity`` returns the DiT output in the model's compute dtype (like the dense stage). ``refiner``: the
    stage's optional :class:`~consistent3dgen.generators.base.Refiner` (``refinement.py``).
    """

    latent_factor = 8

    def __init__(self, vae: torch.nn.Module, dit: torch.nn.Module, refiner: Any = None):
        if vae.resolution != dit.resolution:
            raise ValueError(f"sparse VAE latent grid {vae.resolution} != sparse DiT grid {dit.resolution}")
        self.vae = vae.eval()
        self.dit = dit.eval()
        self.resolution = int(vae.resolution) * self.latent_factor
        self.latent_channels = int(dit.in_channels)
        if refiner is not None and refiner.resolution != self.resolution:
            raise InputError(f"{refiner.name} works at {refiner.resolution}^3, its sparse stage at "
                             f"{self.resolution}^3 (config 'res')")
        self.refiner = refiner

    @property
    def device(self) -> torch.device:
        return module_device(self.dit)

    def modules(self) -> list[torch.nn.Module]:
        """The stage's models (what ``Generator.to`` moves), its refiner's included."""
        return [self.vae, self.dit] + ([self.refiner.model] if self.refiner is not None else [])

    def prepare_condition(self, cond: Any, mask: torch.Tensor | None) -> Any:
        """The image tokens as this DiT takes them: v1.0 (``sparse_conditions``) a sparse condition of the cls +
        register tokens and the foreground patches (official ``extract_tokens_and_coords``), else unchanged."""
        if not getattr(self.dit, "sparse_conditions", False) or not torch.is_tensor(cond):
            return cond
        if mask is None:
            raise ValueError("this sparse DiT (v1.0) takes sparse conditions: the condition needs its patch mask")
        return sparse_condition(cond.to(self.device), mask.to(self.device))

    def encode_sdf(self, sdf):
        from .sparse_codec import encode_sdf

        return encode_sdf(self.vae, sdf)

    def decode_sdf(self, latent, chunk_size: int | None = None):
        from .sparse_codec import decode_sdf

        return decode_sdf(self.vae, latent, chunk_size=chunk_size)

    def token_order(self, coords: torch.Tensor) -> torch.Tensor:
        """Permutation to block order (the official ``sort_block`` with the DiT's selection block size)."""
        from .block_order import block_order

        return block_order(coords, self.dit.selection_block_size)

    @torch.no_grad()
    def velocity(self, x: torch.Tensor, coords: torch.Tensor, timestep: torch.Tensor, cond: Any) -> torch.Tensor:
        """Velocity (N, C) for one shape's tokens x (N, C) at latent coords (N, 3) (in block order)."""
        from .sparse_tensor import SparseTensor

        if x.ndim != 2 or coords.ndim != 2 or coords.shape != (x.shape[0], 3):
            raise ValueError(f"tokens (N, C) with coords (N, 3) expected, got {tuple(x.shape)}, {tuple(coords.shape)}")
        device = self.device
        c = coords.to(device=device, dtype=torch.int32)
        c4 = torch.cat([torch.zeros(len(c), 1, dtype=torch.int32, device=device), c], dim=1)
        if torch.is_tensor(cond):
            cond = cond.to(device)
        t = torch.as_tensor(timestep, device=device).reshape(-1)
        return self.dit(SparseTensor(x.to(device=device, dtype=self.dit.dtype), c4), t, cond).feats


def load_direct3d_s2(
    source: str | os.PathLike | None = None,
    subfolder: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    sparse_resolutions: tuple[int, ...] = (512, 1024),
    dino_weights: str | os.PathLike | None = None,
    with_conditioner: bool = True,
    with_refiners: bool = True,
    **kwargs: Any,
):
    """The full Direct3D-S2 prior as a ``Generator``: dense stage, sparse stages, refiners, DINOv2 conditioner.

    Every file is found before any is read, so missing weights (offline: not in the hub cache) are one line at
    once. DINOv2 comes from ``dino_weights`` (a transformers folder or hub id), else from the folder
    ``<source>/dinov2-with-registers-large`` when ``source`` is a local folder holding one, else from the hub
    id ``facebook/dinov2-with-registers-large``. The refiners (``model_refiner.ckpt`` on the 512 stage,
    ``model_refiner_1024.ckpt`` on the 1024 stage, config keys ``refiner`` / ``refiner_1024``) are loaded when
    ``with_refiners`` and their files and config entries are there; without them the stages run unrefined.
    """
    from ...sampling.schedule import DIRECT3D_S2_SCHEDULES
    from ..base import Generator, SamplerSettings
    from . import checkpoints, targets
    from .conditioner import DEFAULT_DINO, DINO_HINT, DINO_SUBFOLDER, DINO_WHAT, DinoConditioner, resolve_model_folder
    from .refinement import InteriorRefiner, SignRefiner

    bad = [r for r in sparse_resolutions if r not in (512, 1024)]
    if bad:
        raise InputError(f"Direct3D-S2 sparse stages are 512 and 1024, got {bad}")
    names = ["dense_vae", "dense_dit"]
    for r in sparse_resolutions:
        names += [f"sparse_vae_{r}", f"sparse_dit_{r}"]
    sub = subfolder if subfolder is not None else checkpoints.DEFAULT_SUBFOLDER
    src = source if source is not None else checkpoints.HUB_ID
    resolve_keys = ("cache_dir", "local_files_only", "revision")
    refiner_parts = {512: ("refiner", InteriorRefiner), 1024: ("refiner_1024", SignRefiner)}
    wanted = [refiner_parts[r][0] for r in sparse_resolutions] if with_refiners else []
    files = checkpoints.resolve_files(src, names, sub, with_config=kwargs.get("config") is None,
                                      optional_parts=wanted, **{k: kwargs[k] for k in resolve_keys if k in kwargs})
    dino = None
    if with_conditioner:
        if dino_weights is None:
            local = Path(src).expanduser() / DINO_SUBFOLDER  # (a hub id is no local folder: the default)
            dino_weights = local if Path(src).expanduser().is_dir() and local.is_dir() else DEFAULT_DINO
        dino = resolve_model_folder(dino_weights, DINO_WHAT, DINO_HINT)
    load_kwargs = {k: v for k, v in kwargs.items() if k not in resolve_keys}
    config = load_kwargs.pop("config", None)
    config = dict(config) if config is not None else targets.load_config(files[checkpoints.CONFIG_FILE])
    found = [p for p in wanted if targets.PARTS[p][0] in files and p in config]
    parts = checkpoints.load_parts(parts=names + found, dtype=dtype, device=device, files=files, config=config,
                                   **load_kwargs)
    dense = Direct3DS2DenseStage(parts["dense_vae"], parts["dense_dit"])
    sparse = []
    for r in sparse_resolutions:
        vae = parts[f"sparse_vae_{r}"]
        part, kind = refiner_parts[r]
        refiner = kind(parts[part], vae) if part in parts else None
        sparse.append(Direct3DS2SparseStage(vae, parts[f"sparse_dit_{r}"], refiner))
    conditioner = DinoConditioner(weights=dino).to(device) if dino is not None else None
    version = config_version(config)
    shift, steps = DIRECT3D_S2_SCHEDULES["dense"]
    samplers = [SamplerSettings(DIRECT3D_S2_SCHEDULES[f"sparse{r}"][1], DIRECT3D_S2_SCHEDULES[f"sparse{r}"][0])
                for r in sparse_resolutions]
    return Generator(dense=dense, sparse=sparse, dense_sampler=SamplerSettings(steps, shift), sparse_samplers=samplers,
                     defaults={**DIRECT3D_S2_DEFAULTS, **DIRECT3D_S2_OFFICIAL[version]}, conditioner=conditioner,
                     name=f"direct3d-s2 {version}")
