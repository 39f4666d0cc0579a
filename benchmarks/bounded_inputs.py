"""Peak memory and time of ``mmpo train`` on records holding one huge input (issue #34).

    python benchmarks/bounded_inputs.py [--text-mb 50] [--image-side 12000] [--only text,image]

Each case is one ``mmpo train`` process (a tiny LLaVA, 8 records, 1 step), measured from outside
(its peak RSS from ``wait4``, its wall time). One of the 8 records holds the huge input:

* ``text``: a chosen response of ``--text-mb`` MB. "bounded" is the default ``max_text_chars``
  (200,000 characters: the text is cut before tokenising, with a warning naming the record);
  "unbounded" sets ``max_text_chars: null``, as every run was before the cap.
* ``image``: a legal ``--image-side`` x ``--image-side`` PNG (12000: 144 megapixels). "bounded" is
  the default pixel budget (40 Mpx: the image is read downscaled, with a warning naming the file);
  "unbounded" raises the budget past the image (``MMPO_MAX_IMAGE_PIXELS=10**9``), as before.

Prints one table and the warnings each bounded run logged (they must name the record or the file).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def build_model(folder: Path) -> Path:
    from mmpo.testing.families import build_family

    model, processor = build_family("llava")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_records(folder: Path, case: str, text_mb: int, image_side: int) -> Path:
    small = folder / "small.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(small)
    rows = [{"id": f"r{i}", "image": small.name, "prompt": "What is in the picture?",
             "chosen": "A red square.", "rejected": "A blue circle."} for i in range(8)]
    if case == "text":
        words = "a red square is at the top left . "
        rows[3]["chosen"] = words * (text_mb * 2**20 // len(words))
    else:
        big = folder / "big.png"
        # noise compresses poorly; a gradient keeps the file small while PIL still decodes every pixel
        ramp = np.linspace(0, 255, image_side, dtype=np.uint8)
        Image.fromarray(np.stack([np.tile(ramp, (image_side, 1))] * 3, axis=-1)).save(big, compress_level=1)
        rows[3]["image"] = big.name
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run_train(folder: Path, model: Path, records: Path, bounded: bool, case: str) -> dict:
    config = {"model_name_or_path": str(model), "train_file": str(records), "output_dir": str(folder / "out"),
              "max_steps": 1, "per_device_train_batch_size": 2, "report_to": "none", "max_length": 256,
              "save_strategy": "no", "use_cpu": True}
    env = dict(os.environ)
    if not bounded and case == "text":
        config["max_text_chars"] = None
    if not bounded and case == "image":
        env["MMPO_MAX_IMAGE_PIXELS"] = str(10**9)
    path = folder / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "mmpo.cli.main", "train", str(path)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    warnings = [line for line in output.splitlines() if "WARNING" in line and ("cut" in line or "pixel" in line
                                                                                or "downscal" in line)]
    return {"exit": process.returncode, "seconds": seconds, "peak_mb": usage.ru_maxrss / 1024,
            "warnings": warnings, "tail": output.splitlines()[-3:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-mb", type=int, default=50)
    parser.add_argument("--image-side", type=int, default=12000)
    parser.add_argument("--only", default="text,image")
    ns = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "model")
        for case in ns.only.split(","):
            data = Path(tmp) / case
            data.mkdir()
            records = write_records(data, case, ns.text_mb, ns.image_side)
            for bounded in (True, False):
                result = run_train(data, model, records, bounded, case)
                rows.append((case, "bounded" if bounded else "unbounded", result))
                print(f"{case} {'bounded' if bounded else 'unbounded'}: exit {result['exit']}, "
                      f"{result['seconds']:.1f} s, peak {result['peak_mb']:.0f} MB", flush=True)
                if result["exit"] != 0:
                    print("   " + "\n   ".join(result["tail"]))
    what = {"text": f"one {ns.text_mb} MB response", "image": f"one {ns.image_side}x{ns.image_side} PNG "
            f"({ns.image_side ** 2 / 1e6:.0f} Mpx)"}
    print("\n| input | limits | exit | s (whole run) | peak RSS MB |\n| --- | --- | ---: | ---: | ---: |")
    for case, limits, result in rows:
        print(f"| {what[case]} | {limits} | {result['exit']} | {result['seconds']:.1f} | {result['peak_mb']:.0f} |")
    for case, limits, result in rows:
        if limits == "bounded":
            print(f"\n{case}, bounded: warnings logged:\n  " + "\n  ".join(w[:300] for w in result["warnings"] or
                                                                          ["(none)"]))
    failed = [f"{case} {limits}" for case, limits, result in rows if limits == "bounded" and result["exit"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
