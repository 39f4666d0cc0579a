"""The report page of a run: its size, the time to write it, and (with Chromium) the README's screenshots.

    .venv/bin/python benchmarks/report_page.py [RUN_DIR] [--repeats 5] [--screenshots docs/]

RUN_DIR defaults to ``runs/demo`` (``make demo``). The page is written ``--repeats`` times and the
size, the fastest and the median write time are printed. With ``--screenshots DIR`` and a Chromium
on the PATH, the page is loaded headless at 1280 px wide and two pictures are saved: the top of the
page (metrics, curves) as ``DIR/report.png`` and the start of the gallery as
``DIR/report-gallery.png``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from mmpo.report import write_report

WIDTH = 1280
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def screenshots(page: Path, folder: Path, height: int = 1240) -> list[Path]:
    """The top of the page (metrics, curves) and the gallery on its own (the other sections hidden
    by a style rule added to a copy of the page), each ``WIDTH`` x ``height``, as PNGs."""
    from PIL import Image

    browser = next((p for name in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(name))), None)
    if browser is None:
        raise SystemExit("no Chromium on the PATH (Debian: apt-get install chromium)")
    html = page.read_text(encoding="utf-8")
    hide_gallery = "<style>#gallery { display: none; }</style></head>"
    only_gallery = "<style>body > section:not(#gallery), body > header { display: none; }</style></head>"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, style in (("report.png", hide_gallery), ("report-gallery.png", only_gallery)):
            variant, shot = Path(tmp) / "page.html", Path(tmp) / "shot.png"
            variant.write_text(html.replace("</head>", style, 1), encoding="utf-8")
            subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp}/profile", f"--window-size={WIDTH},{height}",
                            f"--screenshot={shot}", variant.as_uri()], check=True, capture_output=True, timeout=180)
            with Image.open(shot) as image:
                image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(folder / name, optimize=True)
            out.append(folder / name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", default="runs/demo")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--screenshots", type=Path)
    ns = parser.parse_args()
    page = Path(ns.run_dir) / "report.html"
    seconds = []
    for _ in range(ns.repeats):
        start = time.perf_counter()
        written = write_report([ns.run_dir], page)
        seconds.append(time.perf_counter() - start)
    print(f"{page}: {written.bytes / 1e6:.2f} MB, {written.n_items} gallery items; written in "
          f"{min(seconds):.2f} s (fastest of {ns.repeats}), {statistics.median(seconds):.2f} s median")
    if ns.screenshots:
        for path in screenshots(page, ns.screenshots):
            print(f"screenshot: {path}")


if __name__ == "__main__":
    main()
