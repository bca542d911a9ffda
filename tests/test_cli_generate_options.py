"""The command line: `generate` options map onto GenerationOptions (one baseline definition), `--help` is
light, and the names the parser offers are the package's."""

import argparse
import subprocess
import sys

import pytest

from consistent3dgen.cli import GUIDANCE_VARIANTS, TRAIN_STAGES, add_generation_arguments, generation_overrides
from consistent3dgen.options import BASELINE, GenerationOptions


def _parse(*argv):
    p = argparse.ArgumentParser()
    add_generation_arguments(p)
    return generation_overrides(p.parse_args(list(argv)))


def test_defaults_are_left_to_the_generator():
    assert _parse() == {"seed": 0, "progress": True}


@pytest.mark.parametrize(
    ("argv", "expected", "fusion"),
    [
        (["--guidance", "0"], {"guidance": 0.0}, False),  # the baseline: fusion follows λ
        (["--guidance", "0", "--fusion"], {"guidance": 0.0, "fusion": True}, True),
        (["--guidance", "4"], {"guidance": 4.0}, True),
        (["--no-front-cut", "--no-free-space"], {"front_cut": False, "free_space": False}, True),
        (["--free-space-dilation", "1"], {"free_space_dilation": 1}, True),
        (["--token-dilation", "2"], {"token_dilation": 2}, True),
        (["--sparse-start-sigma", "0.5"], {"sparse_start_sigma": 0.5}, True),
    ],
)
def test_overrides_and_the_one_baseline(argv, expected, fusion):
    over = _parse(*argv)
    assert {k: v for k, v in over.items() if k not in ("seed", "progress")} == expected
    defaults = {"band": 2.0, "shell": 1.0, "mc_level": 0.0, "guidance": 8.0, "guidance_variant": "paper",
                "cfg_scale": 1.0, "occupancy_threshold": 0.5, "dense_steps": 2, "sparse_steps": (2,),
                "seen_field": "signed"}
    assert GenerationOptions().with_changes(**over).resolve(defaults, 1).fusion is fusion
    if argv == ["--guidance", "0"]:  # the CLI's baseline is the API's and eval's
        assert GenerationOptions().with_changes(**BASELINE) == GenerationOptions().with_changes(**over)


def test_parser_names_match_the_package():
    from consistent3dgen.sampling.guidance import GUIDANCE_VARIANTS as REGISTERED
    from consistent3dgen.train.config import STAGES

    assert set(GUIDANCE_VARIANTS) == set(REGISTERED)
    assert tuple(TRAIN_STAGES) == tuple(STAGES)


def test_python_m_help_lists_the_subcommands_without_torch():
    out = subprocess.run([sys.executable, "-m", "consistent3dgen", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("demo", "generate", "foreground", "eval", "train"):
        assert name in out.stdout
    code = "import sys; from consistent3dgen.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    sub = subprocess.run([sys.executable, "-m", "consistent3dgen.cli", "generate", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert sub.returncode == 0 and "--guidance" in sub.stdout
