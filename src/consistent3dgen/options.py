"""Generation options: validated in one place; values left unset resolve once, from the generator's defaults.

A :class:`GenerationOptions` is frozen. ``None`` means "what this generator brings" (its sampler steps, guidance
strength, thresholds and the SDF convention its VAE was trained on); :meth:`GenerationOptions.resolve` returns a
new, fully specified copy, so the caller's object never changes. Every check names the option it rejects.

The unguided baseline has one definition, :data:`BASELINE`: λ = 0. Fusion left unset follows guidance (on when
λ > 0), so ``pipe(pm, guidance=0)``, ``generate --guidance 0`` and eval's baseline are the same run: the prior
alone, with nothing of the seen shell written into its output.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import InputError
from .limits import DEFAULT_MAX_INPUT_PIXELS, DEFAULT_MAX_PIXELS

# the baseline: the prior alone (fusion, left unset, follows λ and is off)
BASELINE: dict[str, Any] = {"guidance": 0.0}

DENSE_STARTS = ("sdedit", "noise")
# where fusion puts the output's surface on the seen side: ``shell``, the seen shell's own SDF (its outer wall, the
# extracted level, lies the shell's half thickness in front of the seen surface); ``surface``, the extracted level
# on the seen surface itself (the camera-side voxels get ``mc_level + distance / (band − shell)``)
FUSION_AT = ("shell", "surface")
# what the seen side is written as, to match what the generator's sparse VAE was trained on: ``thin_shell``, the
# method's unsigned narrow band ``(d − shell) / (band − shell)`` (the paper's, and the mini prior v1's); ``signed``,
# ``±d / band`` with the camera side positive and behind the seen surface negative (for a prior trained on signed
# distances of solids)
SEEN_FIELDS = ("thin_shell", "signed")
MAX_SEED = 2**63 - 1
# Silhouette slack for generators that bring no default: the least with IoU >= 0.97 on every eval mesh (v1).
FALLBACK_FREE_SPACE_DILATION = 1


@dataclass(frozen=True)
class GenerationOptions:
    """Everything a call can change; ``None`` = the generator's default (see README, "Ablations")."""

    # --- seen side (steps 1-3)
    conf_threshold: float = 0.0  # drop pixels with confidence at or below this
    drop_percent: float = 0.0  # drop the lowest-confidence x % of pixels
    band: float | None = None  # narrow band (voxels) of the seen shell; None = the generator's SDF convention
    shell: float | None = None  # half thickness (voxels) of the seen shell; None = the generator's convention
    front_cut: bool = True  # keep only the camera-side half of the shell's latent cells as target
    free_space: bool = True  # drop tokens / clear SDF in front of the seen surface and outside its silhouette
    # pixels of slack around each view's object mask before "outside the silhouette" counts as empty (mask error,
    # and the voxel-centre test's half pixel); None = the generator's default, else 1, by measurement (eval's
    # "silhouette slack" ablation, mini prior v1, one 128² view, seed 0; spot/bunny/teapot/suzanne): silhouette
    # IoU 0.997/0.989/0.976/0.984 at 0 px, 0.988/0.977/0.972/0.975 at 1, 0.988/0.975/0.970/0.968 at 2; unseen
    # F@0.02 (mean) 0.305 / 0.333 / 0.338: 1 px is the least slack with IoU >= 0.97 on every mesh and about
    # 2 px's back (0 px trims the back's rim as well as the excess)
    free_space_dilation: int | None = None
    # --- dense stage (step 4)
    dense_steps: int | None = None
    dense_start: str = "sdedit"  # sdedit: start from the encoded seen occupancy; noise: plain sampling
    dense_start_sigma: float = 0.8  # SDEdit strength (sigma the seen latent is noised to)
    dense_guidance: float = 0.0  # optional guidance of the dense latent towards the seen occupancy latent
    # draw this many dense samples and keep the one that agrees best with the view (covers most of the seen
    # occupancy, puts least in its free space); None = the generator's, else 1 (one sample, as the paper)
    dense_candidates: int | None = None
    occupancy_threshold: float | None = None  # sigmoid(logit) threshold of the dense decoder
    # grow the dense occupancy by this many cells (26-connected) before it becomes the first sparse stage's tokens;
    # None = the generator's default, else 0. By measurement (one 128² view of the four eval meshes, seed 0): the
    # signed prior v2's unseen F@0.02 0.404 / 0.454 / 0.412 at 0 / 1 / 2 cells (Chamfer 0.0243 / 0.0216 / 0.0245);
    # prior v1's 0.333 / 0.349 at 0 / 1 with 26 → 92 pieces and Chamfer 0.0235 → 0.0260, so v1 keeps 0
    token_dilation: int | None = None
    # --- sparse stages (step 5)
    sparse_steps: int | tuple[int, ...] | None = None  # one count for every stage, or one per stage
    # a later sparse stage's start: 1 = pure noise (the official cascade); < 1 = SDEdit from the previous stage's
    # signed field (resampled to this stage's voxels, encoded by its VAE, noised to this sigma), so the finer
    # stage refines the coarser one's body instead of generating a new one; needs seen_field signed. None = the
    # generator's default, else 1
    sparse_start_sigma: float | None = None
    # run the first sparse stage this many times: each later pass takes its tokens from the previous pass's mesh,
    # as a finer stage does (cells that hold surface, as the stage was trained on, instead of the dense
    # occupancy grown by token_dilation); None = the generator's, else 1
    first_stage_passes: int | None = None
    guidance: float | None = None  # λ; 0 = the unguided prior (the baseline)
    guidance_variant: str | None = None  # paper | noised | x0 | replace (sampling.guidance)
    cfg_scale: float | None = None  # classifier-free guidance; used only when the generator has a negative input
    fusion: bool | None = None  # write the seen shell's SDF into the decoded SDF; None = on when guidance > 0
    # shell | surface: where fusion puts the extracted seen side (FUSION_AT). surface by measurement on the three
    # bundled examples (mini prior, seed 0): depth error mean 0.96/0.87/1.04 % → 0.06/0.09/0.43 % of the object,
    # silhouette IoU 0.986/0.974/0.948 → 0.984/0.974/0.954 (spot/bunny/teapot)
    fusion_at: str = "surface"
    seen_field: str | None = None  # thin_shell | signed (SEEN_FIELDS); None = the generator's, else thin_shell
    refine: bool | None = None  # run the stages' refiners (Direct3D-S2's); None = when the generator has them
    # --- extraction
    mc_level: float | None = None  # marching-cubes level of the decoded SDF (a refiner derives its own from it)
    max_faces: int | None = 200_000  # simplify to about this many faces (None = keep all)
    # drop loose pieces with fewer faces than this fraction of the largest piece (0 keeps all). Off by default:
    # at 0.01 the mini prior's specks went, but Chamfer rose on all four eval meshes (suzanne 0.0284 → 0.0339)
    # and teapot's IoU fell below 0.95, so those specks are mostly real surface cut loose at 128³
    min_component: float = 0.0
    # --- limits (consistent3dgen.limits): nothing a run takes is unbounded
    max_pixels: int = DEFAULT_MAX_PIXELS  # point maps above this many pixels are downscaled (integer stride)
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS  # files whose header says more are refused before decoding
    max_memory_gb: float | None = None  # refuse a step estimated above this; None = 80 % of the memory available
    # --- run
    seed: int = 0
    progress: bool = True

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def with_changes(self, **changes: Any) -> GenerationOptions:
        """A copy with ``changes`` applied (unknown names refused), validated."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise InputError(f"unknown generation option {unknown[0]!r}; known: {', '.join(self.names())}")
        return replace(self, **changes).validate()

    def resolve(self, defaults: Mapping[str, Any], num_sparse_stages: int) -> GenerationOptions:
        """Fill every unset value from the generator's ``defaults`` (option name → value); a new object."""
        filled = {k: defaults[k] for k in self.names() if getattr(self, k) is None and k in defaults}
        out = replace(self, **filled)
        if out.fusion is None:
            out = replace(out, fusion=bool(out.guidance and out.guidance > 0))
        if out.seen_field is None:
            out = replace(out, seen_field="thin_shell")
        if out.free_space_dilation is None:
            out = replace(out, free_space_dilation=FALLBACK_FREE_SPACE_DILATION)
        if out.token_dilation is None:
            out = replace(out, token_dilation=0)
        if out.dense_candidates is None:
            out = replace(out, dense_candidates=1)
        if out.first_stage_passes is None:
            out = replace(out, first_stage_passes=1)
        if out.sparse_start_sigma is None:
            out = replace(out, sparse_start_sigma=1.0)
        if out.sparse_start_sigma < 1.0 and out.seen_field != "signed":
            raise InputError("option sparse_start_sigma below 1 needs a signed-distance generator (seen_field signed)")
        steps = out.sparse_steps
        if isinstance(steps, int):
            steps = (steps,) * num_sparse_stages
        if steps is not None:
            steps = tuple(steps)
            if len(steps) != num_sparse_stages:
                raise InputError(f"sparse_steps has {len(steps)} counts for {num_sparse_stages} sparse stages")
            out = replace(out, sparse_steps=steps)
        missing = [k for k in _RESOLVED if getattr(out, k) is None]
        if missing:
            raise ValueError(f"the generator brings no default for {', '.join(missing)}")
        return out.validate()

    def validate(self) -> GenerationOptions:
        """Types, ranges and names of every set value; returns ``self``."""
        from .sampling.guidance import GUIDANCE_VARIANTS

        for name in ("front_cut", "free_space", "progress"):
            _boolean(self, name)
        _boolean(self, "fusion", optional=True)
        _boolean(self, "refine", optional=True)
        _number(self, "conf_threshold")
        _number(self, "drop_percent", lo=0.0, hi=100.0, hi_open=True)
        _number(self, "band", optional=True, lo=0.0, lo_open=True, hi=64.0)
        _number(self, "shell", optional=True, lo=0.0, hi=64.0, lo_open=True)
        _choice(self, "dense_start", DENSE_STARTS)
        _choice(self, "fusion_at", FUSION_AT)
        _choice(self, "seen_field", SEEN_FIELDS, optional=True)
        _integer(self, "free_space_dilation", optional=True, lo=0, hi=64)
        _integer(self, "token_dilation", optional=True, lo=0, hi=8)
        _integer(self, "dense_candidates", optional=True, lo=1, hi=64)
        _integer(self, "first_stage_passes", optional=True, lo=1, hi=8)
        _number(self, "dense_start_sigma", lo=0.0, hi=1.0, lo_open=True)
        _number(self, "dense_guidance", lo=0.0)
        _number(self, "sparse_start_sigma", optional=True, lo=0.0, hi=1.0, lo_open=True)
        _number(self, "occupancy_threshold", optional=True, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        _integer(self, "dense_steps", optional=True, lo=1)
        steps = self.sparse_steps
        if isinstance(steps, (tuple, list)):
            for s in steps:
                _check_int("sparse_steps", s, lo=1)
        else:
            _integer(self, "sparse_steps", optional=True, lo=1)
        _number(self, "guidance", optional=True, lo=0.0)
        _choice(self, "guidance_variant", tuple(GUIDANCE_VARIANTS), optional=True)
        _number(self, "cfg_scale", optional=True, lo=0.0)
        _number(self, "mc_level", optional=True, lo=-1.0, hi=1.0, lo_open=True, hi_open=True)
        _integer(self, "max_faces", optional=True, lo=4)
        _number(self, "min_component", lo=0.0, hi=1.0, hi_open=True)
        _integer(self, "seed", lo=0, hi=MAX_SEED)
        _integer(self, "max_pixels", lo=4)
        _integer(self, "max_input_pixels", lo=4)
        _number(self, "max_memory_gb", optional=True, lo=0.0, lo_open=True)
        if self.band is not None and self.shell is not None and self.shell >= self.band:
            raise InputError(f"option shell ({self.shell:g} voxels) must be thinner than the band ({self.band:g})")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


# options every generator must resolve (the others have fixed defaults)
_RESOLVED = ("band", "shell", "dense_steps", "occupancy_threshold", "sparse_steps", "guidance", "guidance_variant",
             "cfg_scale", "mc_level")


def _boolean(opts: GenerationOptions, name: str, optional: bool = False) -> None:
    value = getattr(opts, name)
    if value is None and optional:
        return
    if not isinstance(value, bool):
        raise InputError(f"option {name} must be true or false, got {value!r}")


def _choice(opts: GenerationOptions, name: str, choices: tuple[str, ...], optional: bool = False) -> None:
    value = getattr(opts, name)
    if value is None and optional:
        return
    if value not in choices:
        raise InputError(f"option {name} must be one of {', '.join(choices)}, got {value!r}")


def _number(opts: GenerationOptions, name: str, optional: bool = False, lo: float | None = None,
            hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> None:
    value = getattr(opts, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InputError(f"option {name} must be a finite number, got {value!r}")
    low_bad = lo is not None and (value <= lo if lo_open else value < lo)
    high_bad = hi is not None and (value >= hi if hi_open else value > hi)
    if low_bad or high_bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        bounds = f"{left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}"
        raise InputError(f"option {name} must lie in {bounds}, got {value!r}")


def _integer(opts: GenerationOptions, name: str, optional: bool = False, lo: int | None = None,
             hi: int | None = None) -> None:
    value = getattr(opts, name)
    if value is None and optional:
        return
    _check_int(name, value, lo, hi)


def _check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"option {name} must be an integer, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise InputError(f"option {name} must lie in [{lo}, {hi if hi is not None else 'inf'}], got {value}")
