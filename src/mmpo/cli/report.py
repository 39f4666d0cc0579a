"""``mmpo report``: one self-contained HTML page of one or more runs.

The page holds the before/after metric table (runs side by side; runs that differ only in their
seed are averaged, with a 95% interval), the training curves, the method's own plots (AdaViP's
vision-rejected images, the self-generated pairs' statistics) and a gallery of the evaluated
images with each model's answer, every object mention coloured by the scorer's verdict (correct /
hallucinated / wrong attribute) and the missed objects listed, filtered by got better / got worse.
It inlines everything (images, plots, style, script) and fetches nothing.

Run directories: an ``mmpo demo`` run (metrics.json, eval/answers.json), an ``mmpo evaluate`` run
(results.json, predictions/) or an ``mmpo train`` output directory (log_history.json, or the newest
checkpoint's trainer_state.json while it trains: the curves only). ``mmpo demo`` and ``mmpo
evaluate`` write RUN_DIR/report.html themselves; this command rebuilds it, or puts several runs on
one page.

A run's files are read from inside its directory only (symlinks resolved). An image that a run's
files name outside it is left out, with a warning naming the run, the answer and the path: an
evaluation run names the benchmark's own images (COCO, AMBER) where they are, so give their folder
with --image-dir to show them. A run file of the wrong shape is one error line naming the file.

examples:
  mmpo report runs/demo                                   # -> runs/demo/report.html
  mmpo report runs/dpo-s0 runs/dpo-s1 runs/aspo-s0 --output runs/compare.html
  mmpo report runs/eval-base runs/eval-dpo --output runs/eval.html   # the first run is the reference
  mmpo report out/llava-aspo runs/eval-aspo --output aspo.html       # training curves + its evaluation
  mmpo report runs/eval-base --image-dir data/coco/val2014           # with the COCO images it answered
"""

from __future__ import annotations

import argparse
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmpo report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="demo or evaluation run directories")
    p.add_argument("--output", help="the HTML file (default: RUN_DIR/report.html for one run, report.html for several)")
    p.add_argument("--max-items", type=int, default=200, help="most gallery items per benchmark")
    p.add_argument("--title", help="page title (default: the run names)")
    p.add_argument("--image-dir", action="append", default=[], metavar="DIR",
                   help="a folder outside the run directories whose images the page may show (repeatable)")
    return p


def main(argv: list[str]) -> int:
    from ..report import write_report

    ns = build_parser().parse_args(argv)
    output = ns.output or (Path(ns.run_dirs[0]) / "report.html" if len(ns.run_dirs) == 1 else "report.html")
    written = write_report(ns.run_dirs, output, max_items=ns.max_items, title=ns.title, image_dirs=ns.image_dir)
    print(written.summary())
    return 0
