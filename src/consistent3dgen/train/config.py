"""The tiny configuration of the bundled mini prior: data, the four models, and how each is trained.

Sizes (chosen so the weights stay far below the 40 MB budget and all four stages train in about 2 h on 2 CPU cores):

* one sparse stage at 128³ SDF voxels, latent factor 8 → tokens on a 16³ latent-cell grid;
* optionally (``data.second_resolution``, off by default) a second sparse stage, e.g. 256³ → a 32³ cell grid,
  fine-tuned from the first (see :meth:`MiniPriorConfig.second_stage_entries`): its VAE starts from the first
  VAE's weights, its DiT from the first DiT's, with the positional ``factor`` first / second resolution (0.5) so
  its token coordinates land in the first stage's range, as Direct3D-S2's 1024 DiT (``factor: 0.5``) does;
* the dense stage's occupancy is that 16³ cell grid (as Direct3D-S2's 64³ occupancy is the 512 stage's cell
  grid); its VAE downsamples by 4 like the official one (64³ → 16³ there, 16³ → 4³ here) to an (8, 4, 4, 4)
  latent, and the dense DiT runs on its 64 tokens (patch 1).

Measured cost per step (``python -m consistent3dgen.train.profile``, 1 thread, CPU seconds): see the model
card of a trained prior; the step counts below keep the total near 1.5 CPU hours.

Model parameters are written exactly like the official ``configs/*.yaml`` entries (``target`` + ``params``) so
the same classes (``generators/direct3d_s2``, resolved through its registry) build them.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import InputError


@dataclass
class DataConfig:
    """What a training sample is (see :mod:`consistent3dgen.train.data`)."""

    sparse_resolution: int = 128
    latent_factor: int = 8
    # narrow band: voxels closer than this to the surface; 4 (twice the geometry.shell default) because a tiny
    # sparse VAE resolves a 4-voxel-thick shell inside 8-voxel cells, where the 2-voxel one stayed at chance
    band_voxels: float = 4.0
    convention: str = "thin_shell"  # "thin_shell" (as geometry.shell.thin_shell_sdf) or "signed"
    shell_voxels: float = 2.0  # only for "thin_shell": half thickness of the shell (geometry.shell default 1)
    candidate_safety: float = 1.25  # slack on the cell-candidate radius (first-order SDFs underestimate)
    num_procedural: int = 300
    meshes: list[str] = field(default_factory=lambda: ["cow", "fandisk", "beetle"])
    mesh_views: int = 12  # yaws per training mesh
    families: list[str] | None = None  # None = all procedural families
    seed: int = 0
    # optional second sparse stage (None: one stage): the SDF resolution of its samples, e.g. 256; band, shell and
    # convention are then in voxels of that resolution
    second_resolution: int | None = None
    # how many of the training shapes are also built at second_resolution (0 = all), to bound the data cost; the
    # held-out shapes of the first stage are built at it too (for its metrics), so the split stays by shape
    second_samples: int = 100

    @property
    def occupancy_resolution(self) -> int:
        return self.sparse_resolution // self.latent_factor

    def at_second_resolution(self) -> DataConfig:
        """The same sample builder at ``second_resolution`` (a one-stage config of that resolution)."""
        if self.second_resolution is None:
            raise ValueError("this data config has no second sparse stage")
        return replace(self, sparse_resolution=int(self.second_resolution), second_resolution=None)

    def check(self) -> None:
        r2 = self.second_resolution
        if r2 is not None and (r2 <= self.sparse_resolution or r2 % self.latent_factor):
            raise InputError(f"data.second_resolution must be above sparse_resolution ({self.sparse_resolution}) "
                             f"and a multiple of latent_factor ({self.latent_factor}), got {r2}")
        if self.second_samples < 0:
            raise InputError(f"data.second_samples must be >= 0 (0 = all), got {self.second_samples}")


TIMESTEP_SAMPLINGS = ("logit_normal", "shifted_uniform")


@dataclass
class StageTraining:
    """Optimisation of one model."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    warmup_steps: int = 100
    grad_clip: float = 1.0
    checkpoint_every: int = 200
    log_every: int = 10
    # VAE objectives
    kl_weight: float = 1e-6
    # flow-matching objectives: sigma ~ sigmoid(N(mean, std)) (logit-normal), then optionally shifted
    timestep_sampling: str = "logit_normal"  # or "shifted_uniform"
    logit_mean: float = 1.0
    logit_std: float = 1.0
    shift: float = 1.0
    # sparse VAE: decode a random crop of at most this many latent cells per sample (the official
    # ``chunk_size`` training decodes one random sub-volume); 0 = all cells
    max_decoded_cells: int = 0
    # sparse VAE: L1 weight of narrow-band voxels relative to the far (+1) voxels of the decoded cells
    band_weight: float = 1.0
    # dense DiT: each shape also as its images under this many symmetries of the ground square (y stays up):
    # 1 (as built), 2 (+ the x mirror), 4 (+ the z mirror and the half turn), 8 (+ the quarter turns); the
    # dense data is a few hundred shapes, which the DiT otherwise learns by heart
    symmetries: int = 1


@dataclass
class MiniPriorConfig:
    data: DataConfig = field(default_factory=DataConfig)
    dense_vae: dict[str, Any] = field(
        default_factory=lambda: {
            "target": "direct3d_s2.models.autoencoders.dense_vae.DenseShapeVAE",
            "params": {
                "embed_dim": 8,
                "in_channels": 1,
                "out_channels": 1,
                "model_channels_encoder": [16, 32, 48],
                "num_res_blocks_encoder": 1,
                "num_res_blocks_middle_encoder": 1,
                "model_channels_decoder": [48, 32, 16],
                "num_res_blocks_decoder": 1,
                "num_res_blocks_middle_decoder": 1,
                "use_fp16": False,
                "latents_scale": 1.0,
                "latents_shift": 0.0,
            },
        }
    )
    dense_dit: dict[str, Any] = field(
        default_factory=lambda: {
            "target": "direct3d_s2.models.transformers.dense_dit.DenseDiT",
            "params": {
                "resolution": 4,
                "in_channels": 8,
                "out_channels": 8,
                "model_channels": 128,
                "cond_channels": 64,
                "num_blocks": 4,
                "num_heads": 4,
                "mlp_ratio": 4,
                "patch_size": 1,
                "pe_mode": "ape",
                "qk_rms_norm": True,
                "use_fp16": False,
                "latent_shape": [8, 4, 4, 4],
            },
        }
    )
    sparse_vae: dict[str, Any] = field(
        default_factory=lambda: {
            "target": "direct3d_s2.models.autoencoders.ss_vae.SparseSDFVAE",
            # not an official parameter: GroupNorm groups of the encoder's down blocks (official 32 needs
            # model_channels >= 512); see generators.mini.build_component
            "encoder_norm_groups": 4,
            "params": {
                "embed_dim": 8,
                "resolution": 16,
                "model_channels_encoder": 64,
                "num_blocks_encoder": 2,
                "num_heads_encoder": 2,
                "num_head_channels_encoder": 32,
                # wider than the encoder: the decoder's last blocks get 128/4, 128/8, 128/16 channels, and at 64
                # (16, 8, 4) they could not place the surface inside a latent cell
                "model_channels_decoder": 128,
                "num_blocks_decoder": 2,
                "num_heads_decoder": 4,
                "num_head_channels_decoder": 32,
                "out_channels": 1,
                "use_fp16": False,
                "chunk_size": 1,
                "latents_scale": 1.0,
                "latents_shift": 0.0,
            },
        }
    )
    sparse_dit: dict[str, Any] = field(
        default_factory=lambda: {
            "target": "direct3d_s2.models.transformers.sparse_dit.SparseDiT",
            "params": {
                "resolution": 16,
                "in_channels": 8,
                "out_channels": 8,
                "model_channels": 96,
                "cond_channels": 64,
                "num_blocks": 3,
                "num_heads": 4,
                "num_kv_heads": 2,
                "compression_block_size": 4,
                "selection_block_size": 8,
                "topk": 4,
                "compression_version": "v1",
                "pe_mode": "ape",
                "factor": 1.0,
                "sparse_conditions": False,
                "qk_rms_norm": True,
                "use_shift": True,
                "use_fp16": False,
            },
        }
    )
    # the unconditional prior still has cross-attention layers: they see this many all-zero tokens (the
    # official classifier-free-guidance "uncond" input), so guidance alone supplies the image
    null_cond_tokens: int = 1
    train_dense_vae: StageTraining = field(
        default_factory=lambda: StageTraining(steps=600, batch_size=16, lr=1e-3, kl_weight=1e-4, warmup_steps=50,
                                              checkpoint_every=100)
    )
    train_dense_dit: StageTraining = field(
        default_factory=lambda: StageTraining(steps=2500, batch_size=32, lr=3e-4, shift=1.0, checkpoint_every=100)
    )
    train_sparse_vae: StageTraining = field(
        default_factory=lambda: StageTraining(
            steps=1500, batch_size=2, lr=1e-3, warmup_steps=50, kl_weight=1e-6, max_decoded_cells=128,
            band_weight=4.0, checkpoint_every=100,
        )
    )
    train_sparse_dit: StageTraining = field(
        default_factory=lambda: StageTraining(steps=1500, batch_size=4, lr=3e-4, shift=1.0, checkpoint_every=100)
    )
    # second sparse stage (only with data.second_resolution): model entries, None = derived from sparse_vae /
    # sparse_dit (second_stage_entries; training fills them in, with the measured latents_scale), and fine-tunes
    # that start from the first stage's EMA weights (fewer steps, smaller lr)
    sparse_vae_2: dict[str, Any] | None = None
    sparse_dit_2: dict[str, Any] | None = None
    train_sparse_vae_2: StageTraining = field(
        default_factory=lambda: StageTraining(
            steps=300, batch_size=2, lr=3e-4, warmup_steps=20, kl_weight=1e-6, max_decoded_cells=128,
            band_weight=4.0, checkpoint_every=50,
        )
    )
    train_sparse_dit_2: StageTraining = field(
        default_factory=lambda: StageTraining(steps=300, batch_size=2, lr=1e-4, warmup_steps=20, shift=1.0,
                                              checkpoint_every=50)
    )
    # inference schedule shifts (diffusers FlowMatchEulerDiscreteScheduler) and step counts for the mini prior
    dense_sampler: dict[str, Any] = field(default_factory=lambda: {"shift": 3.0, "steps": 25})
    sparse_sampler: dict[str, Any] = field(default_factory=lambda: {"shift": 3.0, "steps": 20})
    # generation-option defaults the exported prior brings (measured with prior v1: README, "Ablations");
    # cfg_scale is unused (an unconditional prior has no negative branch)
    inference_defaults: dict[str, Any] = field(default_factory=lambda: {
        "guidance": 8.0, "guidance_variant": "paper", "cfg_scale": 1.0, "occupancy_threshold": 0.5})
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MiniPriorConfig:
        d = dict(d)
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown mini-prior config keys: {sorted(unknown)}")
        if "data" in d:
            d["data"] = DataConfig(**d["data"])
        for k in TRAINING_KEYS:
            if k in d:
                d[k] = StageTraining(**d[k])
        cfg = cls(**d)
        cfg.data.check()
        for k in TRAINING_KEYS:
            sampling = getattr(cfg, k).timestep_sampling
            if sampling not in TIMESTEP_SAMPLINGS:
                raise InputError(f"{k}.timestep_sampling must be one of {', '.join(TIMESTEP_SAMPLINGS)}, "
                                 f"got {sampling!r}")
            if getattr(cfg, k).symmetries not in (1, 2, 4, 8):
                raise InputError(f"{k}.symmetries must be 1, 2, 4 or 8, got {getattr(cfg, k).symmetries!r}")
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> MiniPriorConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise InputError(f"cannot read mini-prior config {path}: {e}") from e

    def field_convention(self) -> dict[str, float | str]:
        """The seen-shell settings matching the training data (the exported prior's defaults): same band
        and shell; marching cubes at the level of distance 1 voxel (the shell-1 / band-2 default's level 0), so a
        thicker training shell, easier for a tiny VAE to resolve, still gives a surface 1 voxel off the seen one."""
        d = self.data
        if d.convention != "thin_shell":
            # signed: the seen side written as the same signed field, level 0; the shell only sets how deep
            # fusion writes the inside behind the seen surface: 2 voxels, as 1 left the fused layer in loose bits
            # where the prior's body did not reach it (prior v2 on the four eval meshes: 55 → 13 pieces, IoU
            # 0.988 → 0.995)
            return {"band": d.band_voxels, "shell": 2.0, "mc_level": 0.0, "seen_field": "signed"}
        level = min(0.0, (1.0 - d.shell_voxels) / (d.band_voxels - d.shell_voxels))
        return {"band": d.band_voxels, "shell": d.shell_voxels, "mc_level": level}

    def prior_spec(self, name: str = "mini prior") -> dict[str, Any]:
        """The exported prior's ``pipeline.json`` (see :mod:`consistent3dgen.generators.mini.prior`)."""
        names = self.component_names()
        sparse = [{"vae": names["sparse_vae"], "dit": names["sparse_dit"], "sampler": dict(self.sparse_sampler)}]
        if self.has_second_stage:
            sparse.append({"vae": names["sparse_vae_2"], "dit": names["sparse_dit_2"],
                           "sampler": dict(self.sparse_sampler)})
        return {
            "name": name,
            "null_condition_tokens": int(self.null_cond_tokens),
            "stages": {
                "dense": {"vae": "dense_vae", "dit": "dense_dit", "sampler": dict(self.dense_sampler)},
                "sparse": sparse,
            },
            "defaults": {**self.field_convention(), **self.inference_defaults},
        }

    def component_names(self) -> dict[str, str]:
        """Training stage → component file name in the exported prior (one per stage of :meth:`stages`)."""
        res = self.data.sparse_resolution
        names = {"dense_vae": "dense_vae", "dense_dit": "dense_dit", "sparse_vae": f"sparse_vae_{res}",
                 "sparse_dit": f"sparse_dit_{res}"}
        if self.has_second_stage:
            r2 = self.data.second_resolution
            names.update(sparse_vae_2=f"sparse_vae_{r2}", sparse_dit_2=f"sparse_dit_{r2}")
        return names

    def training(self, stage: str) -> StageTraining:
        return getattr(self, f"train_{stage}")

    # --- the optional second sparse stage

    @property
    def has_second_stage(self) -> bool:
        return self.data.second_resolution is not None

    def stages(self) -> tuple[str, ...]:
        """This config's training stages, in training order: :data:`STAGES` (+ :data:`SECOND_STAGES`)."""
        return STAGES + SECOND_STAGES if self.has_second_stage else STAGES

    def model_entry(self, stage: str) -> dict[str, Any]:
        """The model entry (``target`` + ``params``) a stage trains; the second stage's derived when unset."""
        if stage in SECOND_STAGES:
            entry = getattr(self, stage)
            return entry if entry is not None else self.second_stage_entries()[stage]
        return getattr(self, stage)

    def second_stage_entries(self) -> dict[str, dict[str, Any]]:
        """The second stage's model entries derived from the first's: same widths (the weights transfer), latent
        grid ``second_resolution / latent_factor``; the DiT's positional ``factor`` times first / second
        resolution, so its token coordinates span the first stage's range (the official 1024 DiT: 0.5);
        ``latents_scale`` 1 until measured."""
        d = self.data
        if d.second_resolution is None:
            raise ValueError("this config has no second sparse stage")
        cells = int(d.second_resolution) // d.latent_factor
        vae, dit = copy.deepcopy(self.sparse_vae), copy.deepcopy(self.sparse_dit)
        vae["params"].update(resolution=cells, latents_scale=1.0, latents_shift=0.0)
        factor = float(dit["params"].get("factor", 1.0)) * d.sparse_resolution / d.second_resolution
        dit["params"].update(resolution=cells, factor=factor)
        return {"sparse_vae_2": vae, "sparse_dit_2": dit}

    def fill_second_stage_entries(self) -> None:
        """Write the derived second-stage entries into the config (so ``training.json`` records them)."""
        if self.has_second_stage:
            derived = self.second_stage_entries()
            for k in SECOND_STAGES:
                if getattr(self, k) is None:
                    setattr(self, k, derived[k])


STAGES = ("dense_vae", "sparse_vae", "dense_dit", "sparse_dit")
# the optional second sparse stage (data.second_resolution): fine-tunes of sparse_vae and sparse_dit
SECOND_STAGES = ("sparse_vae_2", "sparse_dit_2")
ALL_STAGES = STAGES + SECOND_STAGES
# the stage that initialises each second-stage model (its EMA weights)
INITIALISED_FROM = {"sparse_vae_2": "sparse_vae", "sparse_dit_2": "sparse_dit"}
TRAINING_KEYS = tuple(f"train_{s}" for s in ALL_STAGES)


def smoke_config() -> MiniPriorConfig:
    """A tiny variant for tests and smoke runs: few shapes, few steps, same model sizes."""
    cfg = MiniPriorConfig()
    cfg.data.num_procedural = 6
    cfg.data.meshes = []
    for stage in ALL_STAGES:
        t = cfg.training(stage)
        t.steps, t.batch_size, t.warmup_steps, t.checkpoint_every, t.log_every = 3, 2, 1, 2, 1
    return cfg
