"""Shared test fixtures: where ../shared is (with one skip reason when it is absent), and one torch thread."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout; tests that need it skip with this reason when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED} (CI provides ../shared beside the clone)")
    return SHARED


@pytest.fixture(scope="session")
def meshes_dir(shared_dir: Path) -> Path:
    """``../shared/data/meshes`` (the evaluation and training meshes)."""
    d = shared_dir / "data" / "meshes"
    if not d.is_dir():
        pytest.skip(f"test meshes not found at {d}")
    return d


@pytest.fixture(scope="session")
def fixture_file(shared_dir: Path) -> Callable[..., Path]:
    """``fixture_file("direct3d_s2", "dense_vae_tiny.safetensors")`` → the path under ``../shared/fixtures``,
    or a skip naming the missing file."""

    def get(*parts: str) -> Path:
        path = shared_dir.joinpath("fixtures", *parts)
        if not path.exists():
            pytest.skip(f"fixture not found: {path}")
        return path

    return get


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub in offline mode (HF_HUB_OFFLINE), as on a machine without network."""
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def hub_cache() -> Callable[..., Path]:
    """``hub_cache(root, repo, {name: Path | bytes}, subfolder="")`` lays files out as a huggingface_hub cache
    (blobs/<sha>, snapshots/<commit>/<subfolder>/<name> → blob, refs/main; a Path is moved in) and returns root."""
    import hashlib

    def make(root: Path, repo: str, files: dict, subfolder: str = "") -> Path:
        repo_dir = root / ("models--" + repo.replace("/", "--"))
        commit = "0123456789abcdef0123456789abcdef01234567"
        (repo_dir / "refs").mkdir(parents=True)
        (repo_dir / "refs" / "main").write_text(commit)
        (repo_dir / "blobs").mkdir()
        snap = repo_dir / "snapshots" / commit / subfolder
        snap.mkdir(parents=True)
        for name, content in files.items():
            blob = repo_dir / "blobs" / hashlib.sha256(f"{subfolder}/{name}".encode()).hexdigest()
            if isinstance(content, bytes):
                blob.write_bytes(content)
            else:
                Path(content).rename(blob)
            (snap / name).symlink_to(blob)
        return root

    return make


@pytest.fixture(scope="session")
def write_tiny_prior() -> Callable[..., tuple]:
    """``write_tiny_prior(folder, seed=0)`` writes a mini-prior folder with random weights (the smoke config: the
    bundled prior's classes and sizes) and returns ``(training config, {stage: model})``."""
    from consistent3dgen.generators.mini import save_mini_prior
    from consistent3dgen.train.config import smoke_config
    from consistent3dgen.train.trainer import build_models

    def write(folder: Path, seed: int = 0) -> tuple:
        cfg = smoke_config()
        models = build_models(cfg, seed=seed)
        names = cfg.component_names()
        save_mini_prior(folder, {names[s]: (getattr(cfg, s), m) for s, m in models.items()}, cfg.prior_spec())
        return cfg, models

    return write


@pytest.fixture(scope="module")
def tiny_prior_dir(tmp_path_factory: pytest.TempPathFactory, write_tiny_prior: Callable[..., tuple]) -> Path:
    """A random-weight mini-prior folder (seed 3), one per test module."""
    folder = tmp_path_factory.mktemp("tiny_prior")
    write_tiny_prior(folder, seed=3)
    return folder


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests use small tensors: on a shared 2-core machine, a second intra-op thread only adds contention (it made
    tiny convolutions ~50x slower). Results differ from 2 threads by < 1e-6 (fixture README)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused commands must not read an input nor load a model: both fail the test if called."""
    from consistent3dgen import cli
    from consistent3dgen.pipeline import Pipeline

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the checks")

    monkeypatch.setattr(cli, "read_views", fail)
    monkeypatch.setattr(Pipeline, "from_pretrained", fail)
