"""Every scripts/bench_*.py in its smoke mode (``--smoke``: every part at tiny sizes, what CI runs), so no
benchmark behind a figure in docs can rot unnoticed: each runs end to end and its JSON holds every part's
figures. Also: cluster/SCALING.md's sizing table and curves come from the committed JSONs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

# script -> part -> what its JSON must say (a check of the figures, not just of the keys)
PARTS = {
    "bench_losses": {
        "kd": lambda r: set(r["seconds_per_step"]) == {"kl_div", "scores", "tempered"},
        "kernels": lambda r: {(x["pass"], x["kernels"]) for x in r["results"]}
        == {(p, k) for p in ("ce", "bkd", "ours-2", "ttranse") for k in ("off", "on")},
        "paths": lambda r: {(x["method"], x["form"]) for x in r["results"]}
        == {(m, f) for m in ("bkd", "ours-2") for f in ("unfused", "kernel", "compiled", "plain")} and all(x["ms_min"] > 0 for x in r["results"]),
        "precision": lambda r: len(r["rows"]) == 8
        and all(e < 1e-2 for row in r["rows"] for e in row["combine, float32 (now)"]["grad_rel_l2"].values()),
    },
    "bench_train": {
        "backbones": lambda r: [x["backbone"] for x in r["results"]] == ["ttranse", "tadistmult", "tntcomplex"]
        and all(x["queries_per_second"] > 0 for x in r["results"]),
        "students": lambda r: [(x["cell"], x["kernels"]) for x in r["results"]]
        == [("plain", "off"), ("plain", "on"), ("ours-2", "off"), ("ours-2", "on")] and r["valid_eval_seconds"],
        "startup": lambda r: r["import_torch_seconds"] > 0 and r["dynamo_imported"] is False,
        "scale": lambda r: [(x["part"], x["entities"]) for x in r["results"]]
        == [(p, n) for n in (300, 600) for p in ("student", "eval", "teacher")]
        and all("failed" not in x and x["peak_rss_gb"] > 0 for x in r["results"])
        and len(r["exponents"]["teacher"]["step_seconds"]) == 1,
    },
    "bench_eval": {
        "eval": lambda r: r["ratio"] > 0 and "mrr" in r["metrics"],
        "predict": lambda r: r["student"]["onnx_same_top10_lists"] is not None
        and r["student"]["pytorch"]["single_query_top10"]["queries"] == 20 and "student_onnx_file_mb" in r["goals"],
    },
    "bench_llm": {
        "encode": lambda r: r["encode_bucketed"]["texts_per_second"] > 0 and r["scoring"]["queries_per_second"] > 0,
        "lora": lambda r: set(r["texts_per_second_median"]) == {"forward", "lora_fb_one", "lora_fb_lengths", "step"},
        "big_teacher": lambda r: r["lm_weight_bytes"] > 0 and r["steps"][0]["seconds_per_step"] > 0,
    },
    "bench_runtime": {
        "throughput": lambda r: r["throughput"]["pool_seconds"] > 0 and r["throughput"]["warm_pool_queries_per_s"] > 0,
        "prefetch": lambda r: set(r["prefetch"]) == {"prefetch_0", "prefetch_1"},
        "topk": lambda r: r["topk_effect"]["topk"]["mrr"] > 0,  # full targets: the prefetch part's path
        "scale": lambda r: r["scale"]["student"]["test_mrr"] > 0,
    },
}
DATA = {"bench_train", "bench_eval", "bench_llm"}  # read the benchmark files (the others: random or tiny graphs)
NEEDS = {"bench_losses": [], "bench_train": [pytest.mark.slow], "bench_eval": [pytest.mark.slow],
         "bench_llm": [pytest.mark.slow, pytest.mark.llm], "bench_runtime": [pytest.mark.slow, pytest.mark.llm, pytest.mark.ray]}
NEEDS = {s: [*marks, *([pytest.mark.data] if s in DATA else [])] for s, marks in NEEDS.items()}  # the lanes (conftest)


def test_every_bench_script_is_smoke_tested():
    assert {p.stem for p in (REPO / "scripts").glob("bench_*.py")} == set(PARTS)


@pytest.mark.parametrize("script", [pytest.param(s, marks=NEEDS[s]) for s in PARTS])
def test_bench_smoke_writes_every_part(script, request, tmp_path, record_property):
    env = {**os.environ, "OMP_NUM_THREADS": "1", 
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if script != "bench_runtime":  # its Ray's socket paths under pytest's tmp_path pass 107 bytes; it cleans up itself
        env["TMPDIR"] = str(tmp_path)
    if script in DATA:
        env["DISTKG_DATA"] = str(request.getfixturevalue("data_root"))
    out = tmp_path / f"{script}.json"
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, f"scripts/{script}.py", "--smoke", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    record_property("smoke_seconds", time.perf_counter() - t)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["smoke"] is True and result["command"].startswith(f"python scripts/{script}.py --smoke")
    assert {"commit", "utc", "machine"} <= result.keys()
    assert list(result["parts"]) == list(PARTS[script])
    wrong = [part for part, check in PARTS[script].items() if not check(result["parts"][part])]
    assert not wrong, {p: result["parts"][p] for p in wrong}


def test_sizing_model_is_what_its_script_computes_from_the_committed_benchmarks(tmp_path):
    """cluster/SCALING.md's sizing table comes from scripts/sizing.py over the committed JSONs: running it
    again gives docs/bench/sizing.json, and the curves' script draws from the same files."""
    out = tmp_path / "sizing.json"
    proc = subprocess.run([sys.executable, "scripts/sizing.py", "--steps", "docs/bench/bench_scale_sparse_cpu.json",
                           "--pool", "docs/bench/bench_runtime_pool_1m.json", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text()) == json.loads((REPO / "docs" / "bench" / "sizing.json").read_text())
    png = tmp_path / "curves.png"
    proc = subprocess.run([sys.executable, "scripts/plot_scale.py", "--out", str(png),
                           "1-vs-all=docs/bench/bench_scale_cpu.json", "sampled=docs/bench/bench_scale_sparse_cpu.json"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert png.stat().st_size > 10_000
