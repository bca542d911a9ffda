"""Shared test helpers: where ../shared is, and a skip when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED} (CI provides ../shared beside the clone)")
    return SHARED


@pytest.fixture(scope="session")
def meshes_dir(shared_dir: Path) -> Path:
    d = shared_dir / "data" / "meshes"
    if not d.is_dir():
        pytest.skip(f"test meshes not found at {d}")
    return d
