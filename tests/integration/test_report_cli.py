"""``mmpo report`` on real runs: a tiny ``mmpo demo`` run writes its page by default; the page is
parsed with an HTML parser (every gallery image inlined, every verdict drawn, nothing fetched) and,
where Debian's Chromium is installed, loaded headless (a screenshot that is not blank, no console
error, the gallery filter working from the URL)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from mmpo.cli.main import main
from mmpo.evaluation.spans import VERDICTS

CHROMIUM = next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name))), None)
#: flags for a headless browser on a machine with a closed network (no background connections)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--enable-logging=stderr", "--v=0")
#: attributes through which a page could fetch something
URL_ATTRIBUTES = ("src", "href", "srcset", "poster", "action", "data", "background")


class Page(HTMLParser):
    """Every start tag with its attributes, and which gallery items and answers hold what."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.items: list[dict] = []
        self._in_answer = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        self.tags.append((tag, attrs))
        classes = attrs.get("class", "").split()
        if tag == "article" and "item" in classes:
            self.items.append({"status": attrs.get("data-status"), "images": [], "marks": [], "answers": 0})
        elif self.items and tag == "img":
            self.items[-1]["images"].append(attrs.get("src", ""))
        elif self.items and tag == "div" and "answer" in classes:
            self.items[-1]["answers"] += 1
        elif self.items and tag == "mark":
            self.items[-1]["marks"].extend(c for c in classes if c.startswith("v-"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """A tiny AdaViP demo on ground-truth pairs, with its SFT control: every section of the page."""
    root = tmp_path_factory.mktemp("report")
    out = root / "run"
    code = main(["demo", "--method", "adavip", "--data", "truth", "--output-dir", str(out), "--cache-dir",
                 str(root / "cache"), "--base-steps", "20", "--base-scenes", "64", "--clip-steps", "3",
                 "--n-pairs", "12", "--n-eval-scenes", "6", "--steps", "3", "--batch-size", "4", "--no-progress"])
    assert code == 0
    return out


def check_self_contained(page: Page) -> None:
    for tag, attrs in page.tags:
        for key in URL_ATTRIBUTES:
            value = attrs.get(key)
            assert value is None or value.startswith(("data:", "#")), (tag, key, value[:80])
        assert not (tag == "link" and "stylesheet" in attrs.get("rel", "")), attrs
    for item in page.items:
        assert item["images"] and all(src.startswith("data:image/") for src in item["images"]), item


def test_the_demo_writes_a_self_contained_report(demo_run):
    html = (demo_run / "report.html").read_text()
    page = Page(html)
    check_self_contained(page)
    assert not re.search(r"url\((?!['\"]?(data:|#))", html), "a url() that is not inline"
    metrics = json.loads((demo_run / "metrics.json").read_text())
    assert len(page.items) == metrics["before"]["n_scenes"] == 6
    assert all(item["answers"] == 3 for item in page.items)            # base, the SFT control, adavip
    assert {item["status"] for item in page.items} <= {"better", "worse", "same"}
    assert set(m for item in page.items for m in item["marks"]) <= {f"v-{v}" for v in VERDICTS}
    for section in ("metrics", "curves", "method", "gallery", "settings"):
        assert f"<section id='{section}'>" in html, section
    assert "id='curves-adavip'" in html and "AdaViP vision-rejected images" in html
    answers = json.loads((demo_run / "eval" / "answers.json").read_text())
    assert set(answers["models"]) == {"before", "after", "control"}
    for rows in answers["models"].values():          # the gallery shows what the scorer recorded
        for row in rows:
            for span in row["spans"]:
                assert span["verdict"] in VERDICTS
                assert span["start"] is None or row["response"][span["start"]:span["end"]] == span["text"]


def test_mmpo_report_puts_seeds_together(demo_run, tmp_path, capsys):
    """A copy of the run with another seed and other numbers: one column group with two seeds."""
    other = tmp_path / "seed1"
    shutil.copytree(demo_run, other)
    metrics = json.loads((other / "metrics.json").read_text())
    metrics["options"]["seed"] = 1
    metrics["after"]["chair_i"] = metrics["after"]["chair_i"] + 0.1
    (other / "metrics.json").write_text(json.dumps(metrics))
    assert main(["report", str(demo_run), str(other), "--output", str(tmp_path / "both.html")]) == 0
    assert "2 run(s)" in capsys.readouterr().out
    html = (tmp_path / "both.html").read_text()
    assert "adavip (2 seeds)" in html and "<span class='ci'>[" in html
    check_self_contained(Page(html))


def _chromium(page: Path, tmp_path: Path, *args: str, fragment: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args,
                           page.resolve().as_uri() + fragment], capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium; .ci/run installs "
                                              "it): the page is checked by the HTML parser only")
def test_the_page_renders_in_headless_chromium(demo_run, tmp_path):
    page = demo_run / "report.html"
    shot = tmp_path / "shot.png"
    run = _chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,1600")
    assert shot.exists(), run.stderr[-2000:]
    with Image.open(shot) as image:
        stat = ImageStat.Stat(image.convert("L"))
        assert stat.stddev[0] > 10, "the screenshot is blank"
        assert len(image.convert("RGB").getcolors(1 << 20) or []) > 50
    assert not [line for line in run.stderr.splitlines() if ":CONSOLE" in line], run.stderr[-2000:]

    dom = _chromium(page, tmp_path, "--dump-dom", "--virtual-time-budget=3000", fragment="#filter=worse")
    assert 'data-ready="1"' in dom.stdout and "data-errors" not in dom.stdout.split(">", 2)[1], dom.stdout[:500]
    shown = re.findall(r"<article class=\"item\" data-status=\"(\w+)\"(?! hidden)", dom.stdout)
    hidden = re.findall(r"<article class=\"item\" data-status=\"(\w+)\" hidden", dom.stdout)
    assert set(shown) <= {"worse"} and len(shown) + len(hidden) == 6 and "worse" not in hidden
    assert not [line for line in dom.stderr.splitlines() if ":CONSOLE" in line], dom.stderr[-2000:]
