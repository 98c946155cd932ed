"""Segment planning and the seam measurement."""

from __future__ import annotations

import torch

from j4r.checkpoint import load_checkpoint
from pipeline.stage.segments import Segment, plan_segments, seam_error


def test_segments_cover_every_frame_once_with_warmup():
    segments = plan_segments(250, segment_frames=100, warmup_frames=16)
    assert segments == [
        Segment(0, 0, 100, 0),
        Segment(1, 100, 200, 84),
        Segment(2, 200, None, 184),  # the last runs to whatever decodes
    ]
    covered = [f for s in segments for f in range(s.start, s.stop or 250)]
    assert covered == list(range(250))
    assert plan_segments(50, segment_frames=100, warmup_frames=16) == [Segment(0, 0, None, 0)]
    assert plan_segments(120, segment_frames=100, warmup_frames=500)[1].warm_start == 0


def test_seam_error_shrinks_with_warmup_and_vanishes_with_full_history(tiny_checkpoint):
    model, _ = load_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        for p in model.fnet.parameters():
            p.mul_(3.0)  # make the memory matter so the seam is visible
    frames = torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    rows = seam_error(model, frames, seam=12, warmup_values=[0, 4, 12])
    assert rows[-1]["max_abs_levels"] == 0  # warm-up from frame 0 is the continuous run
    assert rows[0]["psnr_window_db"] <= rows[1]["psnr_window_db"]
