"""``mmpo evaluate`` end to end: an untrained tiny LLaVA saved to disk, every benchmark read from
the files the synthetic world writes, MMHal-Bench judged by a local fake server; then --compare."""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from mmpo.cli.evaluate import BENCHMARKS, build_parser, main
from mmpo.evaluation.report import scalar_metrics
from mmpo.toyworld.benchmarks import write_toy_benchmarks
from mmpo.toyworld.scenes import WorldConfig, sample_scenes


class RateFour(BaseHTTPRequestHandler):
    """Answers every chat completion with "Rating: 4" and records the Authorization header."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.auth.append(self.headers.get("Authorization"))
        data = json.dumps({"choices": [{"message": {"content": "Fine.\nRating: 4"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url(monkeypatch):
    """The fake judge on 127.0.0.1, announced through MMPO_JUDGE_URL / MMPO_JUDGE_API_KEY. Bounded:
    its thread serves at most 3 requests (MMHal's 3 questions here) or until 120 s have passed,
    then stops by itself."""
    server = HTTPServer(("127.0.0.1", 0), RateFour)
    server.timeout, server.auth = 0.5, []
    deadline = time.monotonic() + 120

    def serve():
        while len(server.auth) < 3 and time.monotonic() < deadline:
            server.handle_request()        # returns after one request or server.timeout

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    monkeypatch.setenv("MMPO_JUDGE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    monkeypatch.setenv("MMPO_JUDGE_API_KEY", "sk-local")
    yield server
    thread.join(timeout=5)
    server.server_close()


def test_usage_errors():
    build_parser()                                          # importing and building has no side effects
    with pytest.raises(SystemExit):
        main([])
    with pytest.raises(SystemExit):
        main(["--model", "m", "--benchmark", "pope", "--output-dir", "o", "--pope-images", "i"])   # no questions
    with pytest.raises(SystemExit):
        main(["--model", "m", "--benchmark", "chair", "--output-dir", "o"])                          # no COCO files
    with pytest.raises(SystemExit):
        main(["--pope-file", "train=x.json", "--compare", "a"])                                     # unknown split


def test_evaluate_every_benchmark_then_compare(tiny_checkpoint, tmp_path, judge_url, capsys):
    scenes = sample_scenes(WorldConfig(seed=21).held_out(), 3, prefix="e")
    files = write_toy_benchmarks(tmp_path / "bench", scenes)
    run = tmp_path / "runs" / "untrained"
    argv = [
        "--model", str(tiny_checkpoint), "--output-dir", str(run), "--batch-size", "16",
        "--max-new-tokens", "4", "--yes-no-max-new-tokens", "2", "--synthetic-scenes", "3", "--limit", "8",
        *[arg for bench in BENCHMARKS for arg in ("--benchmark", bench)],
        "--coco-instances", str(files.instances), "--coco-captions", str(files.captions),
        "--coco-images", str(files.images), "--chair-questions", str(files.chair_questions),
        "--pope-dir", str(files.pope_dir), "--pope-images", str(files.images),
        "--amber-queries", str(files.amber_queries), "--amber-annotations", str(files.amber_annotations),
        "--amber-images", str(files.images),
        "--mmhal-template", str(files.mmhal_template), "--mmhal-images", str(files.images),
    ]
    assert main(argv) == 0

    results = json.loads((run / "results.json").read_text())
    assert results["run"] == "untrained" and list(results["benchmarks"]) == list(BENCHMARKS)
    b = results["benchmarks"]
    expected = {"chair": ("CHAIRs", "CHAIRi", "Recall"),
                "object_halbench": ("response_hallucination_rate", "mention_hallucination_rate", "object_recall"),
                "pope": ("random", "popular", "adversarial", "mean"),
                "amber": ("CHAIR", "Cover", "Hal", "Cog", "Accuracy", "Precision", "Recall", "F1", "Existence",
                          "Attribute", "Relation", "AMBER_score"),
                "mmhal": ("average_score", "hallucination_rate", "score_per_type"),
                "synthetic": ("chair_i", "pope_f1")}
    for bench, keys in expected.items():
        assert set(keys) <= set(b[bench]), bench
        assert b[bench]["parsing"] == ("exact" if bench == "synthetic" else "reference"), bench
        values = [v for (name, _), v in scalar_metrics(results).items() if name == bench]
        assert values and all(math.isfinite(v) for v in values), bench
        assert (run / "predictions" / f"{bench}.json").exists()
    assert set(b["pope"]["random"]) >= {"accuracy", "precision", "recall", "f1", "yes_ratio"}
    assert b["pope"]["random"]["n"] > 0
    assert b["mmhal"] == {**b["mmhal"], "average_score": 4.0, "hallucination_rate": 0.0, "n_replies": 3}
    assert judge_url.auth == ["Bearer sk-local"] * 3
    assert "predictions" not in b["amber"] and "reviews" not in b["mmhal"]
    assert "| amber | reference | AMBER_score |" in (run / "results.md").read_text()
    assert "| pope | reference | mean/f1 |" in capsys.readouterr().out

    other = tmp_path / "runs" / "copy"
    shutil.copytree(run, other)
    copied = json.loads((other / "results.json").read_text())
    copied["run"], copied["benchmarks"]["pope"]["mean"]["f1"] = "copy", 0.25
    (other / "results.json").write_text(json.dumps(copied))
    assert main(["--compare", str(run), str(other), "--output-dir", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert table.splitlines()[0] == "| benchmark | metric | untrained | copy |"
    assert "| pope | mean/f1 | " in table and table.count("0.2500") >= 1
