"""`generate` options map onto GenerationOptions; --guidance 0 is the baseline (the prior alone)."""

import argparse

import pytest

from consistent3dgen.commands import add_generation_arguments, generation_overrides


def _parse(*argv):
    p = argparse.ArgumentParser()
    add_generation_arguments(p)
    return generation_overrides(p.parse_args(list(argv)))


def test_defaults_are_left_to_the_pipeline():
    assert _parse() == {"seed": 0, "progress": True}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--guidance", "0"], {"guidance": 0.0, "fusion": False}),
        (["--guidance", "0", "--fusion"], {"guidance": 0.0, "fusion": True}),
        (["--guidance", "4"], {"guidance": 4.0}),
        (["--no-front-cut", "--no-free-space"], {"front_cut": False, "free_space": False}),
    ],
)
def test_overrides(argv, expected):
    over = _parse(*argv)
    assert {k: v for k, v in over.items() if k not in ("seed", "progress")} == expected
