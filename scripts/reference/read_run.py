#!/usr/bin/env python3
"""Independent oracle for a run directory's TensorBoard events and a plot: TensorBoard's own
reader (EventAccumulator) loads the scalars of RUN_DIR, and Pillow opens PNG; prints one JSON
line {"scalars": {tag: [[step, value], ...]}, "png": {"size": [w, h], "colors": n}}.

usage: read_run.py RUN_DIR [PNG]
"""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
scalars = {
    tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
}
result = {"scalars": scalars}
if len(sys.argv) > 2:
    from PIL import Image

    with Image.open(sys.argv[2]) as img:
        img.load()  # decodes every scanline: fails on a damaged file
        rgb = img.convert("RGB")
        result["png"] = {
            "size": list(img.size),
            "mode": img.mode,
            "colors": len(rgb.getcolors(maxcolors=1 << 24)),
        }
print(json.dumps(result))
