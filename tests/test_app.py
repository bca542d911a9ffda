"""``consistent3dgen app``: the page's readers and helpers, then the page itself end to end in headless Chromium.

The browser tests start ``python -m consistent3dgen app`` on a free port, open it in Debian's ``chromium``
through Playwright (no browser download), run a bundled RGB-D example with the bundled mini prior and check the
metrics, the downloads and that the 3D viewers draw something; a text file named ``.npz`` must give one error line.
They skip, with the reason, when gradio, playwright or chromium is missing (CI installs all three).
``C3DG_WRITE_SCREENSHOT=1`` also writes the page's screenshot to ``docs/images/app.png`` (the README's).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from consistent3dgen.app import (
    PageOptions,
    PipelineCache,
    ViewFiles,
    WorkFolders,
    page_error,
    parse_file_size,
    parse_intrinsics,
    point_set_mesh,
    read_view,
    to_viewer,
)
from consistent3dgen.demo import EXAMPLES_DIR
from consistent3dgen.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "images" / "app.png"
MAX_UPLOAD_KB = 100  # the test server's upload limit (the bundled examples come from its own cache, not uploads)


def spot_files(**changes) -> ViewFiles:
    files = ViewFiles("RGB-D", depth=str(EXAMPLES_DIR / "spot_depth.png"),
                      rgbd_image=str(EXAMPLES_DIR / "spot_rgba.png"),
                      intrinsics_file=str(EXAMPLES_DIR / "spot_intrinsics.txt"))
    for k, v in changes.items():
        setattr(files, k, v)
    return files


# ----------------------------------------------------------------------------------------------- helpers


def test_intrinsics_text_four_or_nine_numbers():
    assert parse_intrinsics(" 220, 220.5, 79.5 79.5 ") == [220.0, 220.5, 79.5, 79.5]
    assert parse_intrinsics("[[1, 0, 2]; [0, 1, 3]; [0, 0, 1]]") == [1, 0, 2, 0, 1, 3, 0, 0, 1]
    assert parse_intrinsics("") is None and parse_intrinsics(None) is None
    with pytest.raises(InputError, match="4 numbers"):
        parse_intrinsics("1, 2, 3")
    with pytest.raises(InputError, match="must be numbers"):
        parse_intrinsics("fx=220")


def test_page_options_become_validated_generation_options():
    from consistent3dgen.options import GenerationOptions

    over = PageOptions("mini", 3.0, " 4.5 ", "x0", 0, 6, "off", False).overrides()
    assert over == {"seed": 3, "free_space": False, "progress": False, "guidance": 4.5, "guidance_variant": "x0",
                    "sparse_steps": 6, "fusion": False}  # dense steps 0 = the generator's default
    assert "guidance" not in PageOptions(guidance="").overrides()  # empty = the generator's λ
    assert PageOptions(guidance="0").overrides()["guidance"] == 0.0  # 0 = the unguided baseline
    with pytest.raises(InputError, match="whole number"):
        PageOptions(seed=1.5).overrides()
    with pytest.raises(InputError, match="λ guidance must be a number"):
        PageOptions(guidance="strong").overrides()
    with pytest.raises(InputError, match="guidance must lie in"):
        GenerationOptions().with_changes(**PageOptions(guidance="-1").overrides())


def test_read_view_reads_an_rgbd_example_as_generate_does():
    from consistent3dgen.demo import load_example

    pm, ref = read_view(spot_files()), load_example("spot")
    np.testing.assert_array_equal(pm.mask, ref.mask)
    np.testing.assert_allclose(pm.intrinsics, ref.intrinsics)
    numbers = read_view(spot_files(intrinsics_file=None, intrinsics="219.798194, 219.798194, 79.5, 79.5"))
    np.testing.assert_allclose(numbers.points[numbers.mask], ref.points[ref.mask], rtol=1e-6)
    k = np.loadtxt(EXAMPLES_DIR / "spot_intrinsics.txt")  # the nine numbers of the 3x3 matrix, row by row
    matrix = read_view(spot_files(intrinsics_file=None, intrinsics=" ".join(f"{x:.9g}" for x in k.ravel())))
    np.testing.assert_allclose(matrix.intrinsics, ref.intrinsics)
    by_fov = read_view(spot_files(intrinsics_file=None, fov=40.0))
    assert by_fov.mask.sum() == ref.mask.sum()


def test_read_view_refuses_bad_inputs_in_one_line(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_text("this is not a zip archive\n")
    cases = [
        (ViewFiles("Point map", pointmap=str(bad)), "bad.npz"),
        (ViewFiles("Point map"), "no point map"),
        (ViewFiles("Point map", pointmap=str(EXAMPLES_DIR / "spot_depth.png")), "extension"),
        (spot_files(intrinsics_file=None), "field of view"),
        (spot_files(fov=50.0), "not both"),
        (spot_files(intrinsics="1, 2, 3, 4"), "numbers or as a file, not both"),
        (ViewFiles("Image"), "no image"),
        (ViewFiles("Image", image=str(EXAMPLES_DIR / "spot_rgba.png")), "VGGT"),  # started without a reconstructor
        (ViewFiles("Video"), "unknown input kind"),
    ]
    for files, expected in cases:
        with pytest.raises(InputError) as err:
            read_view(files)
        assert expected in str(err.value) and "\n" not in str(err.value), (files, str(err.value))


def test_rgb_and_mask_make_one_rgba_view_for_vggt(tmp_path):
    from PIL import Image

    rgb = np.zeros((8, 10, 3), np.uint8)
    mask = np.zeros((8, 10), np.uint8)
    mask[2:6, 3:7] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(mask[:4]).save(tmp_path / "small.png")
    seen = []

    def vggt():  # a stand-in reconstructor: what VGGT would be given
        return lambda source: seen.append(source) or [None]

    read_view(ViewFiles("Image", image=str(tmp_path / "rgb.png"), image_mask=str(tmp_path / "mask.png")), vggt=vggt)
    assert seen[0].shape == (8, 10, 4) and (seen[0][..., 3] > 0).sum() == 16
    with pytest.raises(InputError, match="same size"):
        read_view(ViewFiles("Image", image=str(tmp_path / "rgb.png"), image_mask=str(tmp_path / "small.png")),
                  vggt=vggt)


def test_point_set_and_viewer_frame():
    pts = np.array([[0.0, 0.0, 1.0], [0.1, 0.2, 1.5]], np.float32)
    v, f, c = point_set_mesh(pts, np.array([[255, 0, 0], [0, 255, 0]], np.uint8), 0.01)
    assert v.shape == (12, 3) and f.shape == (16, 3) and c.shape == (12, 3) and f.max() == 11
    np.testing.assert_allclose(v[:6].mean(0), pts[0], atol=1e-7)  # each octahedron centred on its point
    # OpenCV camera → viewer: y up, the camera on +z (a point farther away is further along −z)
    view = to_viewer(pts, np.array([0.0, 0.0, 1.0]))
    np.testing.assert_allclose(view, [[0, 0, 0], [0.1, -0.2, -0.5]], atol=1e-6)


def test_errors_name_uploads_by_file_name_and_bugs_by_type():
    upload = "/tmp/gradio/0123abcd/my scan.npz"
    msg = page_error(InputError(f"cannot read point map {upload}:\nnot a zip"), [upload])
    assert msg == "cannot read point map my scan.npz: not a zip"
    assert page_error(KeyError("x")) == "internal error (KeyError): 'x'"
    assert parse_file_size("50mb") == 50 * 1024**2 and parse_file_size(1000) == 1000
    with pytest.raises(InputError, match="max-file-size"):
        parse_file_size("lots")


def test_pipeline_cache_loads_each_generator_once(monkeypatch):
    from consistent3dgen.pipeline import Pipeline

    loads = []

    class FakePipe:
        def set_progress_bar_config(self, **kw):
            pass

    def fake(cls, name, **kw):
        loads.append(name)
        return FakePipe()

    monkeypatch.setattr(Pipeline, "from_pretrained", classmethod(fake))
    cache = PipelineCache()
    assert cache.get("mini") is cache.get("mini") and cache.get("other") is not cache.get("mini")
    assert loads == ["mini", "other"]


def test_work_folders_are_removed(tmp_path):
    folders = WorkFolders(tmp_path / "root", max_age_s=0.0)
    a = folders.new()
    (a / "x.glb").write_bytes(b"x")
    folders.remove(tmp_path)  # not one of ours: left alone
    assert tmp_path.is_dir()
    time.sleep(0.01)
    b = folders.new()  # a folder older than max_age_s goes with the next request
    assert not a.exists() and b.is_dir()
    folders.remove(b)
    assert not b.exists()
    folders.close()
    assert not folders.root.exists()


def test_app_help_is_light():
    code = ("import sys; from consistent3dgen.cli import build_parser; a = build_parser().parse_args(['app', "
            "'--port', '9000', '--generator', 'mini', '--generator', 'x']); "
            "print(a.port, a.generator, 'torch' in sys.modules, 'gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["9000", "['mini',", "'x']", "False", "False"]


@pytest.mark.parametrize("args, expected", [(["--port", "70000"], "--port must be between"),
                                            (["--max-file-size", "lots"], "--max-file-size must be"),
                                            (["--queue-size", "0"], "--queue-size must be")])
def test_app_arguments_are_checked_first(args, expected, capsys):
    from consistent3dgen.cli import main

    assert main(["app", *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------- the page


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The app in a subprocess on a free port, its temp folders under a test folder; SIGTERM at the end."""
    pytest.importorskip("gradio", reason="gradio not installed (pip install '.[app]')")
    base = tmp_path_factory.mktemp("app")
    tmp = base / "tmp"
    tmp.mkdir()
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(tmp), "GRADIO_TEMP_DIR": str(base / "gradio"),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    log = open(base / "server.log", "w+")  # noqa: SIM115 - read back at the end
    proc = subprocess.Popen([sys.executable, "-m", "consistent3dgen", "app", "--port", str(port), "--generator",
                             "mini", "--max-file-size", f"{MAX_UPLOAD_KB}kb"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=base)
    url = f"http://127.0.0.1:{port}/"
    info = {"url": url, "tmp": tmp, "proc": proc, "log": base / "server.log"}
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode}: {(base / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer on {url}: {(base / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield info
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        log.close()
    # a clean stop: the exit code of an interrupted command, and no work folder left behind
    assert code == 143, (base / "server.log").read_text()[-2000:]
    assert not list(tmp.glob("consistent3dgen-app-*"))


@pytest.fixture(scope="module")
def browser() -> Iterator:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian's chromium not found (apt-get install chromium); Playwright's own browsers are not used")
    with sync_api.sync_playwright() as p:
        # WebGL through SwiftShader: the 3D viewers draw without a GPU
        b = p.chromium.launch(executable_path=exe, args=["--enable-unsafe-swiftshader", "--use-gl=angle",
                                                          "--use-angle=swiftshader", "--ignore-gpu-blocklist"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server: dict) -> Iterator:  # the browser first: no server started when it is missing
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(60_000)
    pg.goto(server["url"], wait_until="domcontentloaded")
    pg.locator("#c3dg-run").wait_for()
    try:
        yield pg
    finally:
        pg.close()


def _image(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float64)


def _drawn_fraction(img: np.ndarray) -> float:
    """Share of pixels clearly away from the viewer's white background."""
    return float((np.abs(img - 255.0).max(axis=2) > 40).mean())


@pytest.mark.slow
def test_bad_upload_shows_one_error_line(page, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_text("a text file, not a point map\n")
    page.locator("#c3dg-kind").get_by_text("Point map").click()
    page.locator("#c3dg-npz input[type=file]").set_input_files(str(bad))
    page.locator("#c3dg-npz [aria-label='bad.npz']").wait_for()  # uploaded
    page.locator("#c3dg-run").click()
    toast = page.locator("[data-testid=toast-text]")
    toast.first.wait_for()
    texts = toast.all_inner_texts()
    assert len(texts) == 1, texts
    line = texts[0].strip()
    assert "\n" not in line and "bad.npz" in line and "not a valid .npz" in line, line
    assert "Traceback" not in page.content() and "/gradio/" not in line


@pytest.mark.slow
def test_uploads_above_the_limit_are_refused(page, server, tmp_path):
    big = tmp_path / "big.npz"
    big.write_bytes(os.urandom(3 * MAX_UPLOAD_KB * 1024))
    page.locator("#c3dg-kind").get_by_text("Point map").click()
    page.locator("#c3dg-npz input[type=file]").set_input_files(str(big))
    toast = page.locator("[data-testid=toast-text]")
    toast.first.wait_for()
    assert "exceed the maximum allowed size" in toast.first.inner_text()
    # the server refuses it too, whatever the page does
    response = page.request.post(server["url"] + "gradio_api/upload",
                                 multipart={"files": {"name": "big.npz", "mimeType": "application/octet-stream",
                                                      "buffer": big.read_bytes()}})
    assert response.status == 413, (response.status, response.text()[:200])


@pytest.mark.slow
def test_example_runs_end_to_end_in_the_browser(page, server):
    mesh_box = page.locator("#c3dg-mesh")
    blank = _image(mesh_box.screenshot())
    page.locator("#c3dg-examples").get_by_text("spot", exact=True).click()
    from playwright.sync_api import expect

    page.locator("#c3dg-depth [aria-label='spot_depth.png']").wait_for()
    page.locator("#c3dg-rgbd-image [aria-label='spot_rgba.png']").wait_for()
    expect(page.locator("#c3dg-intrinsics textarea")).to_have_value(re.compile(r"219\.798.*79\.5"))
    for field in ("#c3dg-dense-steps", "#c3dg-sparse-steps"):  # a short run: 2 steps per stage
        page.locator(f"{field} input").fill("2")
    page.locator("#c3dg-run").click()
    # live progress: the sampler's steps appear while it runs
    page.get_by_text(re.compile(r"(dense|sparse128): step \d+ of 2")).first.wait_for(timeout=240_000)
    metrics = page.locator("#c3dg-metrics")
    metrics.get_by_text("silhouette IoU").wait_for(timeout=240_000)
    text = metrics.inner_text()
    iou = float(re.search(r"silhouette IoU (\d\.\d+)", text).group(1))
    depth = float(re.search(r"depth error mean (\d\.\d+)", text).group(1))
    assert iou >= 0.9 and depth < 0.05, text
    assert page.locator("[data-testid=toast-text]").count() == 0

    # downloads: the mesh as GLB / OBJ / PLY and the seen points; the GLB is a real mesh
    links = {a.get_attribute("download"): a.get_attribute("href")
             for a in page.locator("#c3dg-downloads a[download]").all()}
    assert {"spot.glb", "spot.obj", "spot.ply", "spot_seen_points.ply"} <= set(links), links
    glb = page.request.get(links["spot.glb"]).body()
    assert glb[:4] == b"glTF"
    import io

    import trimesh

    mesh = trimesh.load(io.BytesIO(glb), file_type="glb", force="mesh")
    assert len(mesh.faces) > 1000

    # both viewers draw (WebGL): their boxes differ from the empty one
    for box in (mesh_box, page.locator("#c3dg-seen")):
        box.locator("canvas").wait_for()
        deadline = time.monotonic() + 60
        while True:
            shot = _image(box.screenshot())
            if _drawn_fraction(shot) > _drawn_fraction(blank) + 0.03 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert shot.shape == blank.shape
        assert _drawn_fraction(shot) > _drawn_fraction(blank) + 0.03
        assert shot.std() > blank.std() + 5

    # the request's folder is gone once Gradio holds its files
    root = next(server["tmp"].glob("consistent3dgen-app-*"))
    deadline = time.monotonic() + 20
    while list(root.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not list(root.iterdir())
    if os.environ.get("C3DG_WRITE_SCREENSHOT") == "1":
        _save_screenshot(page.screenshot(full_page=True), SCREENSHOT)


def _save_screenshot(png: bytes, path: Path, max_bytes: int = 300_000) -> None:
    """The page's screenshot as a palette PNG (the README's image stays small)."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    for colors in (128, 64, 32):
        data = io.BytesIO()
        img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            data, format="PNG", optimize=True)
        if data.tell() <= max_bytes:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.getvalue())
