"""``derain seams``: seam error against warm-up length on held-out rainy footage."""

from __future__ import annotations

import argparse

from pipeline.cli.exit_codes import EXIT_OK


def seams_command(args: argparse.Namespace) -> int:
    import json

    from j4r.evaluate import build_eval_set
    from pipeline.registry.checkpoints import load_model
    from pipeline.stage.segments import seam_error

    model, info = load_model(args.checkpoint)
    warmups = [0, 1, 2, 4, 8, 16, 32]
    seam = max(warmups) + 8
    table = {}
    for preset in ("light", "heavy"):
        clip = next(
            c
            for c in build_eval_set(preset, frames=seam + 8, crop=args.crop)
            if c.name.startswith("bikes")
        )
        table[preset] = seam_error(model, clip.rainy, seam=seam, warmup_values=warmups)
    print(
        f"seam at frame {seam} of real footage (bikes.mp4) with synthetic rain; "
        f"{info.name} {info.version}"
    )
    print(
        "| rain | warm-up frames | PSNR first frame (dB) | PSNR 8 frames (dB) | max diff (levels) |"
    )
    print("|---|---:|---:|---:|---:|")
    for preset, rows in table.items():
        for r in rows:
            print(
                f"| {preset} | {r['warmup']} | {r['psnr_first_db']:.1f} | "
                f"{r['psnr_window_db']:.1f} | {r['max_abs_levels']:.0f} |"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": info.version, "seam": seam, **table}, indent=2))
    return EXIT_OK
