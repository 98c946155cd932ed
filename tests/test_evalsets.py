"""The generalisation sets: foreign rain, rain-free provoking clips, and their isolation.

Evaluation content and the evaluation-only renderer must never reach training: a net trained
on them would make the ``foreign`` and ``clean`` numbers meaningless.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from j4r.config import net_config
from j4r.evaluate import (
    build_clean_set,
    build_eval_set,
    build_foreign_set,
    evaluate,
    markdown_table,
)
from j4r.metrics import psnr
from j4r.model import build_model
from j4r.rain import add_rain, random_rain_config

ROOT = Path(__file__).resolve().parent.parent
TRAINING_MODULES = ("data", "train", "scenes", "rain", "sources", "losses", "model", "motion")


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_training_code_never_imports_evaluation_content_or_renderers():
    for name in TRAINING_MODULES:
        imports = imported_modules(ROOT / "j4r" / f"{name}.py")
        leaked = {m for m in imports if m.startswith(("j4r.evalsets", "j4r.evaluate"))}
        assert not leaked, (name, leaked)
    code = (
        "import sys, j4r.train, j4r.data, j4r.scenes; "
        "bad = [m for m in sys.modules if m.startswith(('j4r.evalsets', 'j4r.evaluate'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_training_photos_exclude_the_evaluation_photos_and_videos():
    from j4r.sources import EVAL_PHOTOS, EVAL_VIDEOS, training_photo_paths

    names = {p.name for p in training_photo_paths()}
    assert not names & set(EVAL_PHOTOS + EVAL_VIDEOS)


@pytest.fixture(scope="module")
def foreign():
    return {p: build_foreign_set(p, frames=4, crop=64) for p in ("light", "heavy")}


def test_foreign_rain_is_deterministic_calibrated_and_not_the_training_renderer(foreign):
    again = build_foreign_set("light", frames=4, crop=64)
    for a, b in zip(foreign["light"], again, strict=True):
        torch.testing.assert_close(a.rainy, b.rainy, rtol=0, atol=0)
    standard = build_eval_set("light", frames=4, crop=64)
    assert len(foreign["light"]) == len(standard) + 5  # + the 5 drawn provoking scenes
    assert [c.name for c in foreign["light"][: len(standard)]] == [c.name for c in standard]
    light = np.mean([psnr(c.rainy, c.clean) for c in foreign["light"]])
    heavy = np.mean([psnr(c.rainy, c.clean) for c in foreign["heavy"]])
    assert 22.0 < light < 31.0 and 13.0 < heavy < 21.0, (light, heavy)
    # Photometric streaks are not grey additions: the rain changes chroma, the training
    # renderer's does not (where nothing clips).
    clip = foreign["light"][0]
    delta = clip.rainy - clip.clean
    assert float((delta[:, 0] - delta[:, 2]).abs().max()) > 0.02
    own = add_rain(clip.clean, random_rain_config(np.random.default_rng(0)), seed=0)
    own_delta = (own.rainy - clip.clean)[own.alpha.expand_as(clip.clean) == 0]
    assert float(own_delta.view(-1).std()) > 0  # sanity: it rained
    # Foreign drops persist and fall: consecutive frames' rain layers correlate.
    layer = (clip.rainy - clip.clean).abs().sum(dim=1)
    assert not torch.equal(layer[0], layer[1])


def test_clean_set_scores_output_against_input_and_provokes_a_naive_filter():
    torch.manual_seed(0)
    tiny = build_model(net_config("tiny")).eval()
    clips = build_clean_set(frames=6, crop=64)
    assert {c.name for c in clips} >= {"night windows (china)", "car+walker crossing (china)"}
    assert all(torch.equal(c.rainy, c.clean) for c in clips)
    results = evaluate(tiny, None, frames=6, crop=64, sets=("clean",))
    clean = results["clean"]
    assert "rainy input" not in clean
    # A temporal median smears what moves (objects, pans): the set provokes it.
    assert clean["temporal median"]["worst_clip"] in {c.name for c in clips}
    assert clean["temporal median"]["worst_psnr_rgb"] < 35.0
    assert "| clean | J4R-Net |" in markdown_table(results)


def test_rainy_sets_report_gains_over_the_input(foreign):
    torch.manual_seed(0)
    tiny = build_model(net_config("tiny")).eval()
    results = evaluate(tiny, None, frames=4, crop=64, sets=("foreign-heavy",))
    median = results["foreign-heavy"]["temporal median"]
    per_clip = [
        median["clips"][c]["psnr_y"] - results["foreign-heavy"]["rainy input"]["clips"][c]["psnr_y"]
        for c in median["clips"]
    ]
    assert median["worst_gain_y"] == pytest.approx(min(per_clip))
    assert median["gain_y"] == pytest.approx(
        median["psnr_y"] - results["foreign-heavy"]["rainy input"]["psnr_y"]
    )
