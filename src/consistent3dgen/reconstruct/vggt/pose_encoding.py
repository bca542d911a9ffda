"""VGGT camera encoding ``absT_quaR_FoV`` ↔ OpenCV extrinsics (world→camera [R|t]) and pinhole intrinsics.

Layout of the 9 numbers: translation t (3), quaternion (x, y, z, w) scalar-last (4), fov_h, fov_w (radians).
The principal point is the image centre (W/2, H/2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def quat_to_mat(quaternions: Tensor) -> Tensor:
    """(..., 4) xyzw quaternions (any norm) → (..., 3, 3) rotation matrices."""
    i, j, k, r = torch.unbind(quaternions, -1)
    two_s = 2.0 / (quaternions * quaternions).sum(-1)
    o = torch.stack((
        1 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r),
        two_s * (i * j + k * r), 1 - two_s * (i * i + k * k), two_s * (j * k - i * r),
        two_s * (i * k - j * r), two_s * (j * k + i * r), 1 - two_s * (i * i + j * j),
    ), -1)
    return o.reshape(quaternions.shape[:-1] + (3, 3))


def mat_to_quat(matrix: Tensor) -> Tensor:
    """(..., 3, 3) rotations → (..., 4) unit xyzw quaternions with w >= 0.

    Of the four algebraically equivalent formulas the best-conditioned one (largest |component|) is used.
    """
    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"invalid rotation matrix shape {tuple(matrix.shape)}")
    batch = matrix.shape[:-2]
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = torch.unbind(matrix.reshape(batch + (9,)), dim=-1)
    sq = torch.stack([1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22, 1.0 - m00 + m11 - m22,
                      1.0 - m00 - m11 + m22], dim=-1)
    q_abs = torch.where(sq > 0, torch.sqrt(sq.clamp(min=0)), torch.zeros_like(sq))
    # Row n is the quaternion (r, i, j, k) multiplied by 2*q_abs[n].
    by_rijk = torch.stack([
        torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
        torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
        torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
    ], dim=-2)
    floor = torch.tensor(0.1, dtype=q_abs.dtype, device=q_abs.device)
    candidates = by_rijk / (2.0 * q_abs[..., None].max(floor))
    best = F.one_hot(q_abs.argmax(dim=-1), num_classes=4) > 0.5
    out = candidates[best, :].reshape(batch + (4,))
    out = out[..., [1, 2, 3, 0]]  # rijk → ijkr (xyzw)
    return torch.where(out[..., 3:4] < 0, -out, out)


def pose_encoding_to_extri_intri(pose_encoding: Tensor, image_size_hw: tuple[int, int] | None = None,
                                 build_intrinsics: bool = True) -> tuple[Tensor, Tensor | None]:
    """(B, S, 9) encoding → extrinsics (B, S, 3, 4) world→camera, intrinsics (B, S, 3, 3) or None."""
    t = pose_encoding[..., :3]
    quat = pose_encoding[..., 3:7]
    fov_h, fov_w = pose_encoding[..., 7], pose_encoding[..., 8]
    extrinsics = torch.cat([quat_to_mat(quat), t[..., None]], dim=-1)
    intrinsics = None
    if build_intrinsics:
        if image_size_hw is None:
            raise ValueError("image_size_hw is needed to build intrinsics")
        h, w = image_size_hw
        intrinsics = torch.zeros(pose_encoding.shape[:2] + (3, 3), device=pose_encoding.device)
        intrinsics[..., 0, 0] = (w / 2.0) / torch.tan(fov_w / 2.0)
        intrinsics[..., 1, 1] = (h / 2.0) / torch.tan(fov_h / 2.0)
        intrinsics[..., 0, 2] = w / 2
        intrinsics[..., 1, 2] = h / 2
        intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics


def extri_intri_to_pose_encoding(extrinsics: Tensor, intrinsics: Tensor, image_size_hw: tuple[int, int]) -> Tensor:
    """Inverse of :func:`pose_encoding_to_extri_intri` (float32 output)."""
    h, w = image_size_hw
    quat = mat_to_quat(extrinsics[:, :, :3, :3])
    fov_h = 2 * torch.atan((h / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((w / 2) / intrinsics[..., 0, 0])
    return torch.cat([extrinsics[:, :, :3, 3], quat, fov_h[..., None], fov_w[..., None]], dim=-1).float()
