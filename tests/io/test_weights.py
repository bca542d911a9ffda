"""io.weights: dtype names, finding files (folder / file / hub cache), reading checkpoints, strict loading."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from consistent3dgen.errors import InputError, WeightsNotFoundError
from consistent3dgen.io import weights as W


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


class Pickled:  # a Python object that weights_only=True must refuse to unpickle
    def __init__(self):
        self.x = 1


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)
        self.register_buffer("scale", torch.ones(2))


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        layout = Tiny().state_dict()
    return {k: torch.randn(v.shape, generator=g) for k, v in layout.items()}


# --------------------------------------------------------------------------- dtypes


def test_parse_dtype_names_and_errors():
    assert W.parse_dtype("fp32") is torch.float32 and W.parse_dtype("Float32") is torch.float32
    assert W.parse_dtype("fp16") is torch.float16 and W.parse_dtype("float16") is torch.float16
    assert W.parse_dtype("BF16") is torch.bfloat16 and W.parse_dtype("bfloat16") is torch.bfloat16
    assert W.parse_dtype(torch.bfloat16) is torch.bfloat16
    assert W.parse_dtype(None) is None
    for bad in ("int8", "fp64", torch.int8, torch.float64):
        with pytest.raises(InputError, match="unsupported dtype") as e:
            W.parse_dtype(bad)
        _one_line(e)


# --------------------------------------------------------------------------- reading


def test_safetensors_round_trip_is_a_private_memory_map(tmp_path):
    sd = {"w": torch.randn(3, 5), "h": torch.arange(7, dtype=torch.float16), "i": torch.arange(4)}
    path = tmp_path / "m.safetensors"
    save_file(sd, str(path))
    back = W.read_state_dict(path)
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    back["w"] += 1  # copy-on-write: the file is never written
    assert torch.equal(W.read_state_dict(path)["w"], sd["w"])


@pytest.mark.parametrize("zipped", [True, False])
def test_torch_round_trip_weights_only_and_nested(tmp_path, zipped):
    ckpt = {"vae": _state(1), "dit": {"x": torch.ones(2, dtype=torch.bfloat16)}, "step": 3}
    for suffix in (".pt", ".ckpt", ".bin"):
        path = tmp_path / f"c{suffix}"
        torch.save(ckpt, path, _use_new_zipfile_serialization=zipped)
        back = W.read_state_dict(path)
        assert back["step"] == 3 and back["dit"]["x"].dtype == torch.bfloat16
        for k, v in ckpt["vae"].items():
            assert torch.equal(back["vae"][k], v), k


def test_pickled_objects_are_refused_in_one_line(tmp_path):
    cases = {
        "obj.pt": lambda p: torch.save({"w": torch.ones(1), "obj": Pickled()}, p),
        "legacy_obj.pt": lambda p: torch.save({"w": torch.ones(1), "obj": Pickled()}, p,
                                              _use_new_zipfile_serialization=False),
        "module.pth": lambda p: torch.save(nn.Linear(2, 2), p),
        "plain.pt": lambda p: p.write_bytes(pickle.dumps({"w": [1.0, 2.0]})),
    }
    for name, write in cases.items():
        path = tmp_path / name
        write(path)
        with pytest.raises(InputError) as e:
            W.read_state_dict(path)
        text = _one_line(e)
        assert name in text and "weights_only" not in text and "not unpickled" in text, text
    with pytest.raises(InputError, match=r"Python object \(.*Linear\)"):
        W.read_state_dict(tmp_path / "module.pth")


def test_non_checkpoints_are_one_line(tmp_path):
    save_file({"w": torch.ones(100)}, str(tmp_path / "good.safetensors"))
    data = (tmp_path / "good.safetensors").read_bytes()
    torch.save({"w": torch.ones(100)}, tmp_path / "good.pt")
    files = {
        "text.safetensors": b"hello, this is not a checkpoint\n",
        "text.pt": b"hello, this is not a checkpoint\n",
        "empty.safetensors": b"",
        "empty.pt": b"",
        "truncated.safetensors": data[: len(data) // 2],
        "truncated.pt": (tmp_path / "good.pt").read_bytes()[:200],
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match="cannot read checkpoint") as e:
            W.read_state_dict(tmp_path / name)
        text = _one_line(e)
        assert name in text and "weights_only" not in text, text
    with pytest.raises(InputError, match="corrupt"):
        W.read_state_dict(tmp_path / "truncated.safetensors")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(InputError, match="does not hold a state dict"):
        W.read_state_dict(tmp_path / "list.pt")
    with pytest.raises(WeightsNotFoundError, match="missing.pt"):
        W.read_state_dict(tmp_path / "missing.pt")


# --------------------------------------------------------------------------- load_into


def test_load_into_meta_model_assigns_declared_dtypes(tmp_path):
    sd = _state(2)
    with torch.device("meta"):
        model = Tiny()
    model.b.to(torch.bfloat16)  # declared layout: fp32 a, bf16 b
    model.a.weight.requires_grad_(False)
    out = W.load_into(model, sd)
    assert out is model and not model.training
    assert model.a.weight.dtype == torch.float32 and model.b.weight.dtype == torch.bfloat16
    assert model.a.weight.device.type == "cpu" and not model.a.weight.requires_grad and model.b.weight.requires_grad
    assert torch.equal(model.b.weight, sd["b.weight"].to(torch.bfloat16))
    assert torch.equal(model.scale, sd["scale"])
    with torch.device("meta"):
        model = Tiny()
    W.load_into(model, sd, dtype="fp16")
    assert all(t.dtype == torch.float16 for t in model.state_dict().values())


@pytest.mark.parametrize("dtype", [None, "bf16"])
def test_load_into_from_a_safetensors_path(tmp_path, dtype):
    sd = _state(3)
    save_file(sd, str(tmp_path / "m.safetensors"))
    with torch.device("meta"):
        model = Tiny()
    W.load_into(model, tmp_path / "m.safetensors", dtype=dtype)
    want = W.parse_dtype(dtype) or torch.float32
    for k, v in model.state_dict().items():
        assert v.dtype == want and torch.equal(v, sd[k].to(want)), k
    torch.save(sd, tmp_path / "m.pt")
    with torch.device("meta"):
        model = Tiny()
    W.load_into(model, tmp_path / "m.pt", dtype=dtype)
    assert torch.equal(model.a.weight, sd["a.weight"].to(want))


def test_load_into_strict_errors_are_one_line():
    sd = _state(4)

    def fresh():
        with torch.device("meta"):
            return Tiny()

    bad = dict(sd)
    bad.pop("b.bias")
    with pytest.raises(InputError, match=r"tiny: .*1 missing keys \['b.bias'\]") as e:
        W.load_into(fresh(), bad, name="tiny")
    _one_line(e)
    with pytest.raises(InputError, match=r"1 unexpected keys \['extra'\]") as e:
        W.load_into(fresh(), dict(sd, extra=torch.zeros(1)))
    _one_line(e)
    with pytest.raises(InputError, match=r"a.weight has shape \(3, 3\) in the checkpoint, the model expects \(4, 3\)"):
        W.load_into(fresh(), dict(sd, **{"a.weight": torch.zeros(3, 3)}))
    with pytest.raises(InputError, match="a.bias is not a tensor"):
        W.load_into(fresh(), dict(sd, **{"a.bias": [0.0] * 4}))
    # ignored prefixes are neither loaded nor unexpected
    W.load_into(fresh(), dict(sd, **{"track.x": torch.zeros(1)}), ignore=("track.",))
    # not strict: unexpected keys are dropped, missing ones keep their value (meta ones cannot)
    model = Tiny()
    before = model.b.weight.detach().clone()
    W.load_into(model, {"a.weight": sd["a.weight"], "extra": torch.zeros(1)}, strict=False)
    assert torch.equal(model.a.weight, sd["a.weight"]) and torch.equal(model.b.weight, before)
    with pytest.raises(InputError, match="stay uninitialised"):
        W.load_into(fresh(), {"a.weight": sd["a.weight"]}, strict=False)


# --------------------------------------------------------------------------- finding the files


def test_resolve_local_folder_file_and_alternatives(tmp_path):
    folder = tmp_path / "w"
    (folder / "v2").mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"x")
    (folder / "config.json").write_text("{}")
    entry = ("model.safetensors", "model.pt")
    files = W.resolve_source(folder, [entry], optional=["config.json", "absent.json"])
    assert files == {entry: folder / "model.pt", "config.json": folder / "config.json"}
    (folder / "model.safetensors").write_bytes(b"x")
    assert W.resolve_source(folder, [entry])[entry] == folder / "model.safetensors"  # the first alternative
    # a subfolder that exists is preferred
    (folder / "v2" / "model.pt").write_bytes(b"x")
    assert W.resolve_source(folder, [entry], subfolder="v2")[entry] == folder / "v2" / "model.pt"
    assert W.resolve_source(folder, [entry], subfolder="v3")[entry] == folder / "model.safetensors"
    # a file stands for the single required entry; optional files are looked up beside it
    files = W.resolve_source(folder / "model.pt", [entry], optional=["config.json"])
    assert files == {entry: folder / "model.pt", "config.json": folder / "config.json"}
    with pytest.raises(WeightsNotFoundError, match="is a file; give the folder holding a.yaml, b.ckpt") as e:
        W.resolve_source(folder / "model.pt", ["a.yaml", "b.ckpt"], what="X weights")
    _one_line(e)
    with pytest.raises(WeightsNotFoundError, match=r"X weights not found in folder .*w: b.ckpt, c.pt or d.pt") as e:
        W.resolve_source(folder, ["config.json", "b.ckpt", ("c.pt", "d.pt")], what="X weights")
    _one_line(e)
    for text in (tmp_path / "nowhere", "./rel/x", "a/b/c", "~x/y", "noslash"):
        with pytest.raises(WeightsNotFoundError, match="neither a file, a folder nor a hub id") as e:
            W.resolve_source(text, ["a"])
        _one_line(e)


def test_hub_id_recognition(tmp_path):
    assert W.is_hub_id("facebook/VGGT-1B") and W.is_hub_id("a/b")
    for text in ("a/b/c", "/a/b", "./a", "~/a", "a\\b/c", "a/", "/a", "ab"):
        assert not W.is_hub_id(text), text
    assert W.local_or_hub_id("facebook/VGGT-1B") == "facebook/VGGT-1B"
    assert W.local_or_hub_id(tmp_path) == tmp_path


def test_hub_cache_offline(tmp_path, offline_hub, hub_cache):
    hub_cache(tmp_path / "cache", "org/model", {"model.pt": b"pt", "config.json": b"{}"}, subfolder="v1")
    entry = ("model.safetensors", "model.pt")
    files = W.resolve_source("org/model", [entry], optional=["config.json", "extra.json"], subfolder="v1",
                             cache_dir=tmp_path / "cache")
    assert files[entry].name == "model.pt" and files[entry].read_bytes() == b"pt"
    assert set(files) == {entry, "config.json"}
    with pytest.raises(WeightsNotFoundError) as e:
        W.resolve_source("org/model", ["config.json", "weights.ckpt", "more.ckpt"], subfolder="v1",
                         cache_dir=tmp_path / "cache", what="X weights", hint="--x-weights DIR")
    text = _one_line(e)
    # every missing file at once, where they were looked for, and both ways to provide them
    assert text.startswith("X weights not found: org/model/v1/weights.ckpt, more.ckpt are not in the local hub cache "
                           f"{tmp_path / 'cache'} and HF_HUB_OFFLINE is set; give a local copy (--x-weights DIR)")
    assert "download org/model --include 'v1/*'` on a machine with network" in text
    with pytest.raises(WeightsNotFoundError, match="org/other/a.pt or b.pt is not in the local hub cache") as e:
        W.resolve_source("org/other", [("a.pt", "b.pt")], cache_dir=tmp_path / "cache")
    assert "pass a local file or folder" in _one_line(e)


@pytest.fixture
def hub_env(monkeypatch):
    """HF_HUB_OFFLINE unset and a fresh probe cache; returns the list of URLs the probe was asked about."""
    import huggingface_hub.constants as hfc

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(W, "_probed", {})
    return monkeypatch


def _probe_says(monkeypatch, reachable: bool) -> list[str]:
    asked: list[str] = []

    def answers(url, timeout):
        asked.append(url)
        return reachable

    monkeypatch.setattr(W, "_answers", answers)
    return asked


def test_unreachable_hub_is_probed_once_and_uses_the_cache(tmp_path, hub_env, hub_cache):
    """HF_HUB_OFFLINE unset, no hub: one probe per process, then cache-only lookups (hits and one-line misses)."""
    import huggingface_hub

    asked = _probe_says(hub_env, False)
    calls = []

    def download(*args, **kw):  # hf_hub_download reaches for the network even with local_files_only=True
        calls.append(kw)
        raise AssertionError("no download call when the hub is not reachable")

    hub_env.setattr(huggingface_hub, "hf_hub_download", download)
    cache = hub_cache(tmp_path / "cache", "org/model", {"model.pt": b"pt"})
    files = W.resolve_source("org/model", [("model.safetensors", "model.pt")], cache_dir=cache)
    assert files[("model.safetensors", "model.pt")].read_bytes() == b"pt"
    with pytest.raises(WeightsNotFoundError) as e:
        W.resolve_source("org/model", ["w.ckpt"], cache_dir=cache, what="X weights", hint="--x DIR")
    text = _one_line(e)
    assert f"X weights not found: org/model/w.ckpt is not in the local hub cache {cache} and the hub" in text
    assert "is not reachable (offline); give a local copy (--x DIR)" in text
    assert asked == [W._hub_endpoint() + "/"]  # one probe for both calls
    assert calls == []  # the cache folder only
    assert not W.hub_reachable() and len(asked) == 1


def test_reachable_hub_downloads_and_an_unreachable_one_is_not_waited_for_twice(tmp_path, hub_env):
    """The probe passed but a request then fails for want of a connection: the remaining files (and later
    resolves) come from the cache only."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    _probe_says(hub_env, True)
    calls = []

    def fake_download(repo_id, filename, local_files_only=False, **kw):
        calls.append((filename, local_files_only))
        if filename == "cached.json":
            return str(tmp_path / "cached.json")
        raise LocalEntryNotFoundError("connection error and not in the cache")

    hub_env.setattr(huggingface_hub, "hf_hub_download", fake_download)
    files = W.resolve_source("org/model", ["cached.json"], optional=["a.json", "b.json"])
    assert files == {"cached.json": tmp_path / "cached.json"}
    assert calls == [("cached.json", False), ("a.json", False)]  # then b.json: the cache folder only
    calls.clear()
    with pytest.raises(WeightsNotFoundError, match=r"x.ckpt, y.ckpt are not .* the hub \(.*\) is not reachable") as e:
        W.resolve_source("org/model", ["x.ckpt", "y.ckpt"])
    _one_line(e)
    assert calls == []  # marked unreachable for the rest of the process


def test_a_file_missing_on_a_reachable_hub_is_one_line(hub_env):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    _probe_says(hub_env, True)

    def fake_download(repo_id, filename, local_files_only=False, **kw):
        raise EntryNotFoundError(f"404 {filename}\nmore lines")

    hub_env.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(WeightsNotFoundError) as e:
        W.resolve_source("org/model", [("a.pt", "b.pt"), "c.pt"], what="X weights", hint="--x DIR")
    assert _one_line(e) == ("X weights not found on the hub: org/model/a.pt or b.pt (a.pt: EntryNotFoundError, "
                            "b.pt: EntryNotFoundError); check the name and your access to org/model, or give a "
                            "local copy (--x DIR)")


def test_probe_abandons_a_hanging_request(hub_env):
    """A hub that never answers (a name lookup or connection that hangs) costs the probe timeout, no more: the
    probe returns while the request still hangs, and is not repeated."""
    import threading

    import huggingface_hub.utils

    release = threading.Event()
    finished = threading.Event()

    class Hanging:
        def head(self, url, timeout):
            release.wait(60)
            finished.set()
            raise OSError("never answered")

    hub_env.setattr(huggingface_hub.utils, "get_session", lambda: Hanging())
    hub_env.setattr(W, "HUB_PROBE_TIMEOUT", 0.2)
    try:
        assert W.hub_reachable() is False
        # it returned while the request still hangs: the request was abandoned, not waited for
        assert not finished.is_set()
        assert W.hub_reachable() is False  # and it is not asked again
    finally:
        release.set()


def test_probe_answers(hub_env):
    import huggingface_hub.utils

    seen = []

    class Answering:
        def head(self, url, timeout):
            seen.append((url, timeout))
            return object()  # any HTTP answer, even an error status, means the hub is there

    hub_env.setattr(huggingface_hub.utils, "get_session", lambda: Answering())
    assert W.hub_reachable() is True
    assert seen == [(W._hub_endpoint() + "/", W.HUB_PROBE_TIMEOUT)]
    assert W.hub_reachable() is True and len(seen) == 1
    hub_env.setenv("HF_HUB_OFFLINE", "1")
    assert W.hub_reachable() is False and len(seen) == 1  # HF_HUB_OFFLINE: no probe at all
