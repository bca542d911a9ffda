"""Devices: every tensor of a run is made on the models' device, noise comes from one CPU generator, ``pipe.to``
moves every model, low-memory mode keeps only the running stage's models on the device, and the report names each
stage's time and peak memory.

A CPU-only machine has no second device, so :func:`fake_device` makes one: tensors "on" it are CPU tensors wrapped
so that they report the ``meta`` device (a real meta tensor has no data) and compute on their CPU data, while any op
that mixes them with a CPU tensor of one or more dimensions (a CPU 0-d scalar is fine, as on CUDA) fails with
CUDA's device error, and a CPU ``torch.Generator`` asked to draw on it fails as CUDA's does. ``.numpy()`` of such a
tensor fails too. So a CPU tensor mixed with model tensors, which would crash on a GPU, fails here. The tests that
need CUDA skip without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from consistent3dgen.devices import StageMeter, resolve_device, resolve_dtype
from consistent3dgen.errors import InputError
from consistent3dgen.generators.base import SparseLatent, stage_modules
from consistent3dgen.pipeline import Pipeline, low_memory_chunks
from consistent3dgen.sampling import FlowMatchSchedule, FrontGuidance, initial_noise, sample

FAKE = torch.device("meta")
aten = torch.ops.aten
# ops that accept CPU index tensors for a device tensor (as CUDA's do)
_INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
FAST = dict(dense_steps=2, sparse_steps=2, progress=False)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# ----------------------------------------------------------------------------------------- the stand-in device


class OnFake(torch.Tensor):
    """A CPU tensor that reports the FAKE device; its ops run on the CPU data (inside :func:`fake_device`)."""

    _data: torch.Tensor

    @staticmethod
    def __new__(cls, data: torch.Tensor) -> OnFake:
        t = torch.Tensor._make_wrapper_subclass(cls, data.shape, strides=data.stride(),
                                               storage_offset=data.storage_offset(), dtype=data.dtype, device=FAKE,
                                               requires_grad=data.requires_grad)
        t._data = data
        return t

    def tolist(self):  # noqa: ANN201 - as Tensor.tolist (which refuses subclasses)
        return self._data.tolist()

    def __repr__(self) -> str:
        return f"OnFake({self._data!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        raise RuntimeError("a fake-device tensor used outside fake_device()")


def _is_fake(device: object) -> bool:
    return device is not None and not isinstance(device, int) and torch.device(device) == FAKE  # type: ignore


def _wrap(out: object, inputs: list[OnFake] = ()) -> object:  # type: ignore[assignment]
    def wrap(o: object) -> object:
        if isinstance(o, torch.Tensor) and not isinstance(o, OnFake):
            for w in inputs:  # an in-place op returns its input
                if o is w._data:
                    return w
            return OnFake(o)
        return o

    return tree_map(wrap, out)


class _Factories(TorchFunctionMode):
    """``torch.tensor / zeros / randn / ...(device=FAKE)``: made on the CPU, then on FAKE (``torch.tensor`` with a
    meta device would skip the dispatcher and give a tensor without data)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        kwargs = dict(kwargs or {})
        if not _is_fake(kwargs.get("device")):
            return func(*args, **kwargs)
        gen = kwargs.get("generator")
        if gen is not None and gen.device != FAKE:  # CUDA: "Expected a 'cuda' device type for generator"
            raise RuntimeError(f"Expected a 'meta' device type for generator but found '{gen.device.type}'")
        kwargs["device"] = torch.device("cpu")
        return _wrap(func(*args, **kwargs))


class _Compute(TorchDispatchMode):
    """Ops on FAKE tensors run on their CPU data; a CPU tensor beside them is the device error CUDA raises."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        kwargs = dict(kwargs or {})
        flat, _ = tree_flatten((args, kwargs))
        fake = [t for t in flat if isinstance(t, OnFake)]
        dev = kwargs.get("device")
        if any(type(t) is torch.Tensor and t.device.type == "meta" for t in flat):
            raise RuntimeError(f"a real meta tensor (no data) reached {func}")
        if func is aten._to_copy.default:
            src = args[0]
            data = src._data if isinstance(src, OnFake) else src
            kw = {k: v for k, v in kwargs.items() if k != "device"}
            if (dev is not None and not _is_fake(dev)) or (dev is None and not isinstance(src, OnFake)):
                return func(data, **kw)  # to the CPU, or a cast of a CPU tensor
            return OnFake(func(data, **kw))
        if not fake and not _is_fake(dev):
            return func(*args, **kwargs)
        if func is not aten.copy_.default:  # a copy between devices is fine
            plain = [t for t in flat if type(t) is torch.Tensor and t.dim() > 0]
            if func in _INDEX_OPS:
                plain = [t for t in plain if not any(t is i for i in args[1] if i is not None)]
            if plain:
                raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                                   f"meta and cpu! ({func}; CPU tensors {[tuple(t.shape) for t in plain]})")
        if _is_fake(dev):
            kwargs["device"] = torch.device("cpu")
        unwrap = lambda t: t._data if isinstance(t, OnFake) else t  # noqa: E731
        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        return out if func is aten._local_scalar_dense.default else _wrap(out, fake)


@contextlib.contextmanager
def fake_device() -> Iterator[torch.device]:
    with _Factories(), _Compute():
        yield FAKE


def test_the_stand_in_device_fails_as_cuda_does():
    """The harness can fail: CPU tensors beside device tensors, a CPU generator drawing on the device, numpy."""
    with fake_device() as dev:
        x = torch.randn(3, 4).to(dev)
        assert x.device == dev and isinstance(x * 2 + torch.zeros((), dtype=x.dtype), OnFake)  # 0-d CPU scalar: ok
        assert torch.equal((x + torch.ones(3, 4, device=dev)).cpu(), x.cpu() + 1)
        with pytest.raises(RuntimeError, match="same device"):
            x + torch.ones(3, 4)
        with pytest.raises(RuntimeError, match="same device"):
            x.masked_fill(torch.ones(3, 4, dtype=torch.bool), 0.0)
        with pytest.raises(RuntimeError, match="generator"):
            torch.randn(3, generator=torch.Generator().manual_seed(0), device=dev)
        with pytest.raises((RuntimeError, TypeError)):
            x.numpy()
        assert x[torch.tensor([0, 2])].shape == (2, 4)  # CPU indices are fine, as on CUDA
        m = torch.nn.Linear(4, 2).to(dev)
        assert m.weight.device == dev and m(x).device == dev


# ----------------------------------------------------------------------------------------- the sampler


def _check_device(v: torch.Tensor, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    assert x.device == device, f"the latent reached the model on {x.device}"
    return v


@pytest.mark.parametrize("kind", ["euler", "ancestral", "resample", "fresh-noise guidance"])
def test_sampler_draws_its_noise_on_the_cpu_and_moves_it(kind):
    """Ancestral, RePaint and fresh-noise guidance draws come from the CPU generator and land on the latent's
    device; the numbers are the CPU run's (today's code drew on the latent's device: a CUDA crash)."""
    schedule = FlowMatchSchedule.shifted(6, 3.0)
    weight = torch.linspace(-1, 1, 8 * 3).reshape(8, 3)

    def run(device: torch.device) -> torch.Tensor:
        gen = torch.Generator().manual_seed(5)
        noise = initial_noise((8, 3), gen, device=device)
        w = weight.to(device)
        guide = None
        if kind != "euler":
            variant = "noised" if kind == "fresh-noise guidance" else "paper"
            guide = FrontGuidance(torch.ones(8, 3), (torch.arange(8) < 4).float(), 2.0, variant,
                                  noise="fresh" if kind == "fresh-noise guidance" else "initial")
        fn = lambda x, t, c: _check_device(x * w - 0.001 * t, x, device)  # noqa: E731
        return sample(fn, noise, schedule, guidance=guide, generator=gen, progress=False,
                      eta=0.7 if kind == "ancestral" else 0.0, resample=2 if kind == "resample" else 0).x

    cpu = run(torch.device("cpu"))
    with fake_device() as dev:
        out = run(dev)
        assert out.device == dev
        out = out.cpu()
    torch.testing.assert_close(out, cpu, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def pointmap():
    from consistent3dgen.demo import load_example

    return load_example("spot")


def _params_on(modules: list[torch.nn.Module], device: torch.device) -> bool:
    return all(p.device == device for m in modules for p in m.parameters())


def _same_latents(a, b) -> None:
    for za, zb in zip(a.latents, b.latents, strict=True):
        assert torch.equal(za.coords.cpu(), zb.coords.cpu())
        torch.testing.assert_close(za.feats.cpu(), zb.feats.cpu(), rtol=0, atol=1e-4)


def test_pipeline_runs_on_a_second_device_with_the_cpu_noise(pointmap):
    """``pipe.to(device)`` moves every model and returns the pipeline; the whole run (dense, tokens, guided sparse
    stage, decoding, free space) makes its tensors there, and a seed gives the CPU run's result."""
    pipe = Pipeline.from_pretrained("mini")
    ref = pipe(pointmap, **FAST)
    assert ref.runtime == {"device": "cpu", "dtype": None, "autocast": None, "low_memory": False}
    for s in ref.stages:  # on the CPU: the resident-set high-water mark's rise, in bytes
        assert s["seconds"] > 0 and s["memory"]["kind"] == "cpu_rss_hwm_delta" and s["memory"]["peak_bytes"] >= 0
    assert [s["stage"] for s in ref.report()["stages"]] == ["dense", "sparse128"]
    with fake_device() as dev:
        assert pipe.to(dev) is pipe and pipe.device == dev
        assert _params_on(list(pipe.generator.modules()), dev) and pipe.generator.null_condition.device == dev
        res = pipe(pointmap, **FAST)
    _same_latents(res, ref)
    assert len(res.faces) > 1000 and abs(len(res.faces) - len(ref.faces)) <= 0.01 * len(ref.faces)
    assert res.runtime["device"] == "meta" and res.stages[1]["memory"] == {"kind": None, "peak_bytes": None}
    assert all(lat.feats.device.type == "cpu" for lat in res.latents)  # results come back on the CPU


def test_low_memory_keeps_only_the_running_stage_on_the_device(pointmap):
    pipe = Pipeline.from_pretrained("mini")
    ref = pipe(pointmap, **FAST)
    gen = pipe.generator
    dense, sparse = stage_modules(gen.dense), stage_modules(gen.sparse[0])
    seen: dict[str, int] = {}

    def where(info) -> None:  # noqa: ANN001 - a StepInfo, after every sampling step
        running, waiting = (dense, sparse) if info.stage == "dense" else (sparse, dense)
        assert info.x.device == FAKE
        assert _params_on(running, FAKE) and _params_on(waiting, torch.device("cpu")), info.stage
        seen[info.stage] = seen.get(info.stage, 0) + 1

    with fake_device() as dev:
        pipe.low_memory = True
        pipe.to(dev)
        assert _params_on(dense + sparse, torch.device("cpu"))  # nothing waits on the device
        res = pipe(pointmap, callback=where, **FAST)
        assert _params_on(dense + sparse, torch.device("cpu"))
    assert seen["dense"] >= 1 and seen["sparse128"] == 2  # (SDEdit starts the dense stage part-way)
    assert res.runtime["low_memory"] is True
    _same_latents(res, ref)


def test_autocast_runs_float32_weights_in_the_asked_dtype(pointmap):
    """bf16 asked for and weights in float32 (the mini prior): the models run under autocast, weights unchanged."""
    pipe = Pipeline.from_pretrained("mini", dtype="bf16")
    assert pipe.autocast_dtype == torch.bfloat16
    assert {p.dtype for m in pipe.generator.modules() for p in m.parameters()} == {torch.float32}
    state: set[tuple] = set()

    def record(info) -> None:  # noqa: ANN001 - a StepInfo
        state.add((info.stage, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        if info.stage == "dense":  # the dense DiT gives its output as computed (the sparse one casts back)
            assert info.velocity.dtype == torch.bfloat16

    res = pipe(pointmap, callback=record, **FAST)
    assert state == {("dense", True, torch.bfloat16), ("sparse128", True, torch.bfloat16)}
    assert res.runtime["autocast"] == "torch.bfloat16"
    assert Pipeline.from_pretrained("mini").autocast_dtype is None


def test_stage_meter_records_and_places():
    lin = torch.nn.Linear(2, 2)
    meter = StageMeter(torch.device("cpu"), low_memory=True)
    with meter.stage("a", [lin]):
        torch.ones(1000, 1000).sum()
    rec = meter.records["a"]
    assert rec["seconds"] >= 0 and rec["memory"]["kind"] == "cpu_rss_hwm_delta"
    with fake_device() as dev:
        meter = StageMeter(dev, low_memory=True)
        with meter.stage("b", [lin]):
            assert lin.weight.device == dev
        assert lin.weight.device.type == "cpu"
        with pytest.raises(ValueError), meter.stage("c", [lin]):  # back on the CPU after a failure too
            raise ValueError
        assert lin.weight.device.type == "cpu"


# ----------------------------------------------------------------------------------------- chunked decoding


def test_chunked_decoding_on_a_second_device():
    """Low-memory decoding in spatial chunks builds its chunk boxes on the coordinates' device (a CPU box beside
    CUDA coordinates failed), and gives the CPU's voxels."""
    from consistent3dgen.generators.registry import load_generator

    stage = load_generator("mini").sparse[0]
    g = torch.Generator().manual_seed(0)
    coords = torch.unique(torch.randint(3, 13, (200, 3), generator=g, dtype=torch.int32), dim=0)
    lat = SparseLatent(coords, torch.randn(len(coords), stage.latent_channels, generator=g), 16)
    ref = stage.decode_sdf(lat, chunk_size=2)
    whole = stage.decode_sdf(lat)
    with fake_device() as dev:
        stage.vae.to(dev)
        out = stage.decode_sdf(lat, chunk_size=2)
    np.testing.assert_array_equal(out.coords, ref.coords)
    np.testing.assert_allclose(out.feats, ref.feats, atol=1e-4)
    rows = whole.lookup(ref.coords)  # the chunks give the same voxels as one piece
    assert (rows >= 0).all() and len(rows) == len(whole)
    np.testing.assert_allclose(ref.feats, whole.feats[rows], atol=1e-4)


class _Stage:
    latent_factor = 8

    def __init__(self, resolution: int, own: int = 1):
        self.resolution = resolution
        self.vae = type("V", (), {"decoder": type("D", (), {"chunk_size": own})()})()


def test_low_memory_chunk_rule():
    assert low_memory_chunks(_Stage(1024, own=4)) == 8  # Direct3D-S2 1024: 8³ chunks of 16 cells
    assert low_memory_chunks(_Stage(512)) == 4
    assert low_memory_chunks(_Stage(128)) is None  # the mini prior's 16³ latent grid: one piece
    assert low_memory_chunks(_Stage(128, own=2)) == 2  # never fewer than the decoder's own


# ----------------------------------------------------------------------------------------- names


def test_device_and_dtype_names(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(FAKE) == FAKE  # another device type is taken as it is
    for bad in ("gpu", "cuda:x", "tpu", ""):
        with pytest.raises(InputError, match="device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda", 0)
    with pytest.raises(InputError, match="1 CUDA device"):
        resolve_device("cuda:3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device(None) == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_dtype("auto") is None and resolve_dtype("BF16") == torch.bfloat16
    with pytest.raises(InputError, match="dtype"):
        resolve_dtype("fp8")


def test_cli_device_arguments(tmp_path, capsys):
    from consistent3dgen.cli import main

    out = str(tmp_path / "o.glb")
    for argv in (["generate", "missing.npz", "--out", out, "--device", "gpu"],
                 ["demo", "--out", str(tmp_path / "d"), "--dtype", "fp8"]):
        with pytest.raises(SystemExit) as exc:  # usage errors: one line, exit code 2
            main(argv)
        assert exc.value.code == 2
    assert "unknown device 'gpu'" in capsys.readouterr().err
    if not torch.cuda.is_available():  # refused before the input is read
        assert main(["generate", "missing.npz", "--out", out, "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "CUDA is not available" in err and "missing.npz" not in err


# ----------------------------------------------------------------------------------------- a real GPU


@CUDA
def test_cuda_run_and_its_report(pointmap):
    pipe = Pipeline.from_pretrained("mini", device="cuda")
    res = pipe(pointmap, **FAST)
    assert len(res.faces) > 1000 and res.runtime["device"].startswith("cuda")
    for s in res.stages:
        assert s["memory"]["kind"] == "cuda_max_allocated" and s["memory"]["peak_bytes"] > 0
    gen = torch.Generator().manual_seed(0)
    noise = initial_noise((4, 3), gen, device="cuda")
    assert torch.equal(noise.cpu(), torch.randn((4, 3), generator=torch.Generator().manual_seed(0)))


@CUDA
def test_cuda_low_memory(pointmap):
    normal = Pipeline.from_pretrained("mini", device="cuda")(pointmap, **FAST)
    pipe = Pipeline.from_pretrained("mini", device="cuda", low_memory=True)
    assert pipe.autocast_dtype == torch.float16  # fp16 on a GPU in low-memory mode
    res = pipe(pointmap, **FAST)
    assert all(p.device.type == "cpu" for m in pipe.generator.modules() for p in m.parameters())
    assert len(res.faces) > 1000
    low, high = res.stages[0]["memory"]["peak_bytes"], normal.stages[0]["memory"]["peak_bytes"]
    assert low <= high  # the dense stage without the sparse models beside it
