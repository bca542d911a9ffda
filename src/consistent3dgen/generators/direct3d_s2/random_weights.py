"""Random Direct3D-S2 weights in the official folder layout (tests, benchmarks, trying the pipeline offline).

:func:`write_direct3d_s2` writes ``config.yaml`` and the six ``.ckpt`` files the official
``Direct3DS2Pipeline.from_pretrained`` reads (``model_dense.ckpt`` {vae, dit}, ``model_sparse_512.ckpt`` /
``model_sparse_1024.ckpt`` {vae, dit}, ``model_refiner.ckpt`` / ``model_refiner_1024.ckpt`` {refiner}), plus a
DINOv2-with-registers folder in the transformers layout (``config.json`` + ``model.safetensors``).

``size="full"`` uses the official architecture (the release's ``config.yaml`` numbers; about 2.6 G parameters,
5 GB in float16). ``size="tiny"`` keeps every part and the cascade's structure but shrinks widths and grids:
the "512" stage decodes a 32³ grid and the "1024" stage a 64³ grid (the config keys keep the official names),
so that the whole pipeline, refiners included, runs on a CPU in seconds. Some tiny parameters are not official
arguments (``encoder_norm_groups`` of the sparse VAE, ``block_out_channels`` / ``feat_channels`` / ``res`` of
the refiners): our classes take them to build small models with the official key names.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from . import targets

SIZES = ("tiny", "full")
VERSIONS = ("v1.0", "v1.1")
DINO_FOLDER = "dinov2"  # OUT/dinov2: the DINOv2 folder written beside the Direct3D-S2 files

_T = "direct3d_s2.models."
_SCHEDULER = "diffusers.schedulers.FlowMatchEulerDiscreteScheduler"
_DINO = {"target": _T + "conditioner.DinoEncoder",
         "params": {"model": "facebookresearch/dinov2", "version": "dinov2_vitl14_reg", "size": 518}}


def _sparse_vae(resolution: int, **extra: Any) -> dict:
    params = {"use_checkpoint": True, "embed_dim": 16, "num_head_channels_encoder": 64, "model_channels_encoder": 512,
              "num_heads_encoder": 8, "num_blocks_encoder": 4, "num_head_channels_decoder": 64,
              "model_channels_decoder": 512, "num_heads_decoder": 8, "num_blocks_decoder": 4,
              "resolution": resolution, "out_channels": 1, "use_fp16": True, "latents_scale": 1.0,
              "latents_shift": 0.0, **extra}
    return {"target": _T + "autoencoders.ss_vae.SparseSDFVAE", "params": params}


def _sparse_dit(resolution: int, factor: float, version: str) -> dict:
    v10 = version == "v1.0"  # the releases differ only here: SSA compression, top-k, sparse conditions
    params = {"resolution": resolution, "in_channels": 16, "out_channels": 16, "model_channels": 1024,
              "cond_channels": 1024, "num_blocks": 24, "num_heads": 32, "num_kv_heads": 2,
              "compression_block_size": 4 if v10 else 8, "selection_block_size": 8,
              "topk": (32 if resolution == 64 else 8) if v10 else 8, "compression_version": "v2" if v10 else "v1",
              "pe_mode": "ape", "factor": factor, "sparse_conditions": v10, "qk_rms_norm": True, "use_shift": True,
              "use_checkpoint": True, "use_fp16": True}
    return {"target": _T + "transformers.sparse_dit.SparseDiT", "params": params}


def _refiner(sign: bool) -> dict:
    name = "Voxel_RefinerXL_sign" if sign else "Voxel_RefinerXL"
    return {"target": _T + f"refiner.unet_refiner.{name}",
            "params": {"in_channels": 1, "out_channels": 1, "layers_per_block": 2, "layers_mid_block": 2,
                       "patch_size": 256 if sign else 192, "use_fp16": True}}


def full_config(version: str = "v1.1") -> dict[str, Any]:
    """The official architecture of a release (the numbers of its ``config.yaml``)."""
    _check(version, VERSIONS, "version")
    return {
        "dense_vae": {"target": _T + "autoencoders.dense_vae.DenseShapeVAE", "params": {
            "use_checkpoint": True, "embed_dim": 8, "in_channels": 1, "out_channels": 1,
            "model_channels_encoder": [32, 128, 512], "num_res_blocks_encoder": 2, "num_res_blocks_middle_encoder": 2,
            "model_channels_decoder": [512, 128, 64], "num_res_blocks_decoder": 4, "num_res_blocks_middle_decoder": 4,
            "use_fp16": True, "latents_scale": 1.0, "latents_shift": 0.0}},
        "dense_dit": {"target": _T + "transformers.dense_dit.DenseDiT", "params": {
            "resolution": 16, "in_channels": 8, "out_channels": 8, "model_channels": 1024, "cond_channels": 1024,
            "num_blocks": 24, "num_heads": 16, "mlp_ratio": 4, "patch_size": 1, "pe_mode": "ape", "qk_rms_norm": True,
            "use_checkpoint": True, "use_fp16": True, "latent_shape": [8, 16, 16, 16]}},
        "dense_image_encoder": copy.deepcopy(_DINO),
        "dense_scheduler": {"target": _SCHEDULER, "params": {"num_train_timesteps": 1000, "shift": 6.0}},
        "sparse_vae_512": _sparse_vae(64),
        "sparse_dit_512": _sparse_dit(64, 1.0, version),
        "sparse_scheduler_512": {"target": _SCHEDULER, "params": {"num_train_timesteps": 1000, "shift": 6.0}},
        "sparse_vae_1024": _sparse_vae(128, chunk_size=4),
        "sparse_dit_1024": _sparse_dit(128, 0.5, version),
        "sparse_scheduler_1024": {"target": _SCHEDULER, "params": {"num_train_timesteps": 1000, "shift": 8.0}},
        "sparse_image_encoder": copy.deepcopy(_DINO),
        "refiner": _refiner(sign=False),
        "refiner_1024": _refiner(sign=True),
    }


# tiny widths: DINOv2 hidden size = every condition width; v1.0's sparse conditions need it = the DiT width
TINY_WIDTH = 64


def tiny_config(version: str = "v1.1") -> dict[str, Any]:
    """The official config with tiny widths and grids: dense 32³ occupancy (8³ latent), sparse stages at 32³ and
    64³ (latents 4³ and 8³), both refiners at 32³ (the 512 one in one patch, the sign one in 3³ patches)."""
    cfg = full_config(version)
    w = TINY_WIDTH
    for key in ("dense_vae", "dense_dit", "sparse_vae_512", "sparse_vae_1024", "sparse_dit_512", "sparse_dit_1024",
                "refiner", "refiner_1024"):
        cfg[key]["params"]["use_fp16"] = False  # float32 on a CPU
    cfg["dense_vae"]["params"].update(
        embed_dim=4, model_channels_encoder=[8, 16, 16], num_res_blocks_encoder=1, num_res_blocks_middle_encoder=1,
        model_channels_decoder=[16, 16, 8], num_res_blocks_decoder=1, num_res_blocks_middle_decoder=1)
    cfg["dense_dit"]["params"].update(resolution=8, in_channels=4, out_channels=4, model_channels=32,
                                      cond_channels=w, num_blocks=1, num_heads=2, latent_shape=[4, 8, 8, 8])
    for key, res in (("sparse_vae_512", 4), ("sparse_vae_1024", 8)):
        cfg[key]["params"].update(
            embed_dim=4, resolution=res, model_channels_encoder=64, num_blocks_encoder=1, num_heads_encoder=4,
            num_head_channels_encoder=16, model_channels_decoder=64, num_blocks_decoder=1, num_heads_decoder=4,
            num_head_channels_decoder=16, encoder_norm_groups=4)
    cfg["sparse_vae_1024"]["params"]["chunk_size"] = 1  # chunks of an 8³ latent grid would each hold all of it
    for key, res in (("sparse_dit_512", 4), ("sparse_dit_1024", 8)):
        p = cfg[key]["params"]
        p.update(resolution=res, in_channels=4, out_channels=4, model_channels=w, cond_channels=w, num_blocks=1,
                 num_heads=4, topk=2, selection_block_size=4, compression_block_size=2 if version == "v1.0" else 4)
    # block_out_channels[0] = 8: what the refiners' adaptive convolutions take
    small = {"layers_per_block": 1, "layers_mid_block": 1, "res": 32, "block_out_channels": [8, 8, 8, 8]}
    cfg["refiner"]["params"].update(small, patch_size=32, feat_channels=64 // 16)  # one patch
    cfg["refiner_1024"]["params"].update(small, patch_size=16)  # 3³ patches (stride 8), as the official 256/128
    return cfg


def dinov2_config(size: str = "tiny") -> dict[str, Any]:
    """``Dinov2WithRegistersConfig`` arguments: ViT-L/14 with 4 registers (``facebook/dinov2-with-registers-large``)
    or a one-layer model of width :data:`TINY_WIDTH`."""
    _check(size, SIZES, "size")
    base = {"patch_size": 14, "image_size": 518, "num_register_tokens": 4, "mlp_ratio": 4, "layerscale_value": 1.0}
    if size == "full":
        return {**base, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16}
    return {**base, "hidden_size": TINY_WIDTH, "num_hidden_layers": 1, "num_attention_heads": 2}


def random_state(entry: dict[str, Any], seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A state dict with the part's keys and shapes, seeded uniform values scaled by 1/sqrt(fan in) (activations
    stay O(1), float16 does not overflow); the dense DiT's ``pos_emb`` buffer gets its real value, the refiners'
    adaptive filters positive weights."""
    model = targets.build(entry, device="meta")
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        scale = 1.0 / (v[0].numel() ** 0.5) if v.ndim >= 2 else 1.0
        out[k] = (torch.empty(v.shape).uniform_(-1, 1, generator=g) * scale).to(dtype)
    for k in [k for k in out if k.startswith("adaptive_conv") and k.endswith(".2.weight")]:
        # the refiner's per-voxel filters are L1-normalised: with signed random weights three rounds of them cancel
        # the signal to ~1e-4 (no surface at any official level); positive ones make them averaging filters
        out[k] = out[k].abs()
    if "pos_emb" in out:  # the only buffer in these models: the APE of the dense DiT's grid, float32
        from .embedders import AbsolutePositionEmbedder, grid_coords

        coords = grid_coords(model.resolution // model.patch_size)
        out["pos_emb"] = AbsolutePositionEmbedder(model.model_channels, 3)(coords).float()
    return out


def write_direct3d_s2(out: str | os.PathLike, size: str = "tiny", version: str = "v1.1", seed: int = 0,
                      dtype: torch.dtype | None = None, dinov2: bool = True) -> Path:
    """Write ``config.yaml``, the six checkpoints and (``dinov2``) ``OUT/dinov2``; returns ``OUT``.

    ``dtype``: of the stored tensors (default float32 for tiny, float16 for full; loading casts them to the
    layout the config asks for).
    """
    import yaml

    from .checkpoints import CONFIG_FILE

    _check(size, SIZES, "size")
    cfg = tiny_config(version) if size == "tiny" else full_config(version)
    dtype = dtype or (torch.float32 if size == "tiny" else torch.float16)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for n, (part, (file_name, key)) in enumerate(targets.PARTS.items()):
        files.setdefault(file_name, {})[key] = random_state(cfg[part], seed + n, dtype)
    for file_name, content in files.items():
        torch.save(content, folder / file_name)
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(cfg, sort_keys=False))
    if dinov2:
        write_dinov2(folder / DINO_FOLDER, size, seed)
    return folder


def write_dinov2(out: str | os.PathLike, size: str = "tiny", seed: int = 0) -> Path:
    """A random ``Dinov2WithRegistersModel`` in the transformers layout (``config.json`` + ``model.safetensors``)."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(seed)
    model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**dinov2_config(size))).eval()
    model.save_pretrained(str(out), safe_serialization=True)
    return Path(out)


def _check(value: str, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
