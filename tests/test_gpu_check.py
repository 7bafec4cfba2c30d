"""scripts/gpu_check.sh --smoke: the GPU check's CPU mode runs every part and writes the one JSON, so the
script a GPU session runs after landing cannot rot unnoticed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tests.conftest import REPO


def test_gpu_check_smoke_writes_every_part(data_root, tmp_path, record_property):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "DISTKG_DATA": str(data_root),
           "DISTKG_TEST_SHARED_DATA": str(data_root)}
    t = time.perf_counter()
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--smoke"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(tmp_path / "gpu_check-smoke.json")
    result = json.loads((tmp_path / "gpu_check-smoke.json").read_text())
    parts = ("tests", "main_job", "teacher", "llm_encode", "qlora_step", "qlora_step_text", "precision", "sampled",
             "big_teacher")
    assert {"mode", "torch", "cuda", "wall_seconds", *parts} <= result.keys() and result["mode"] == "smoke"
    errors = {p: result[p]["error"] for p in parts if "error" in result[p]}
    assert not errors, errors
    assert result["tests"]["passed"] == result["tests"]["tests"] > 0
    assert {"mrr", "hits@10"} <= next(iter(result["main_job"]["parts"].values())).keys()
    assert result["teacher"]["matmul_probe"]["tflops"] > 0 and result["teacher"]["epoch_seconds"]
    assert result["llm_encode"]["texts_per_second"] > 0
    assert result["qlora_step"]["batches"][0]["seconds_per_step"] > 0
    assert result["qlora_step_text"]["query"] == "text" and result["qlora_step_text"]["batches"][0]["seconds_per_step"] > 0
    assert len(result["precision"]["test_mrr"]) == 2 and len(result["precision"]["bf16_change"]) == 1
    assert result["sampled"]["test_mrr"] > 0 and result["sampled"]["facts"].startswith("500 of ")
    big = result["big_teacher"]
    assert big["shape"] == "tiny" and big["lm_weight_bytes"] > 0 and big["steps"][0]["seconds_per_step"] > 0
    record_property("smoke_seconds", time.perf_counter() - t)  # budget two minutes; a number to read, not a bound
