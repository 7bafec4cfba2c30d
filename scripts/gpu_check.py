"""One GPU check of distkg, written as ONE JSON (run through scripts/gpu_check.sh).

Parts, each timed and each recorded even when it fails (its error is kept, the next part runs):
  tests       the test suite on this machine's device (tests/runtime excluded: Ray), as counts and
              the ids of failed tests
  main_job    `distkg run configs/quickstart.yaml`: wall time and every part's test metrics
  teacher     the main job's teacher epoch times beside a square matmul probe in the dtype the
              teacher trains in (bf16 autocast on CUDA, fp32 on CPU), and the share of the probe's
              FLOP/s the epoch reached (1-vs-all: ~6 D E FLOPs per training query)
  llm_encode  entity-text encoding with the LLM (all layers, NF4): texts/s, forward calls, padding
  qlora_step  seconds per QLoRA step at the quickstart's batch (16 queries + 64 sampled entities,
              8 layers) and at a 10x larger batch
  qlora_step_text  the same for the teacher that reads each query as one text (llm.query: text)
  precision   the quickstart's teacher trained with bf16 autocast and without, two seeds each: the
              test MRR change from bf16 beside the change from the seed
  big_teacher configs/llm/smollm2-1.7b-yago11k.yaml on a model of its shape with random weights
              (scripts/bench_llm.py big_teacher): load time, NF4 weight bytes, peak CUDA memory, encoding
              texts/s and seconds per LoRA step at the recipe's batch (64 queries + 256 entities)

``--smoke``: the same parts at tiny sizes on the CPU (under two minutes), so the script itself is
tested (tests/test_gpu_check.py) and cannot rot.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import yaml  # noqa: E402

# (full GPU run, CPU smoke) sizes of every part
SIZES = {
    # the suite runs in the time given, so the directories whose device paths changed last come first
    "full": {"tests": ["tests/kernels", "tests/serving", "tests/training", "tests/distill", "tests/models", "tests/llm",
                       "tests", "--ignore=tests/runtime", "--ignore=tests/test_gpu_check.py"], "tests_timeout": 170,
             "precision_sets": [], "precision_seeds": [0, 1], "sampled_sets": [],
             "main_job": [], "main_timeout": 150, "probe_n": 8192, "texts": 8192, "encode_layers": None,
             "qlora_layers": 8, "qlora_batches": [(16, 64), (160, 640)], "qlora_steps": 10,
             "big_shape": "smollm2-1.7b", "big_texts": 512, "big_batches": [(64, 256)], "big_steps": 5},
    "smoke": {"tests": ["tests/test_device.py", "-k", "rules or only_the_owner"], "tests_timeout": 60,
              "precision_sets": ["train.epochs=1", "model.args.dim=16", "train.loss=sampled_softmax"], "precision_seeds": [0],
              "sampled_sets": ["train.epochs=1", "model.args.dim=16"],
              "main_job": ["--set", "train.epochs=1", "--set", "model.args.dim=16", "--set", "pipeline.llm=false",
                           "--set", "pipeline.students={}", "--set", "eval.splits=[test]", "--set", "eval.progress=false",
                           "--set", "train.progress=false"],  # the teacher alone
              "main_timeout": 60, "probe_n": 512, "texts": 64, "encode_layers": 1, "qlora_layers": 1,
              "qlora_batches": [(4, 8)], "qlora_steps": 2,
              "big_shape": "tiny", "big_texts": 8, "big_batches": [(2, 4)], "big_steps": 1},
}


def run_part(result: dict, name: str, fn, *args) -> None:
    """result[name] = fn(*args), or the error it raised (the other parts still run)."""
    t = time.perf_counter()
    try:
        result[name] = fn(*args)
    except Exception as e:  # a broken part must not lose the others' numbers
        result[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
    result[name]["part_seconds"] = round(time.perf_counter() - t, 1)
    print(f"[gpu_check] {name}: {json.dumps(result[name])[:400]}", file=sys.stderr, flush=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def tests(size: dict, work: Path) -> dict:
    """The suite, interrupted (SIGINT: pytest still writes its report) when its time is up."""
    xml = work / "tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *size["tests"]]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        rc: int | str = proc.wait(timeout=size["tests_timeout"])
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        rc = f"interrupted after {size['tests_timeout']} s"
    out = {"command": " ".join(cmd[1:]), "rc": rc, "seconds": round(time.perf_counter() - t, 1)}
    if not xml.is_file():
        return {**out, "error": "pytest wrote no report (timed out before the end?)"}
    suite = ET.parse(xml).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {**out, **counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failed_ids": failed[:50]}


def main_job(size: dict, work: Path) -> dict:
    out = work / "main"
    cmd = [sys.executable, "-m", "distkg", "run", "configs/quickstart.yaml", "--out", str(out), *size["main_job"]]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, timeout=size["main_timeout"], capture_output=True, text=True)
    result = {"command": " ".join(["distkg", *cmd[3:]]).replace(str(out), "OUT"), "rc": proc.returncode,
              "seconds": round(time.perf_counter() - t, 1)}
    if proc.returncode != 0:
        return {**result, "error": proc.stderr[-2000:]}
    summary = json.loads((out / "metrics.json").read_text())
    parts = summary.get("parts") or {"teacher": summary}  # a run without students is its teacher alone
    result["parts"] = {name: {k: m[k] for k in METRICS if m.get(k) is not None} for name, m in parts.items()}
    teacher_dir = out / "teacher" if (out / "teacher").is_dir() else out
    result["teacher_log"] = [json.loads(line) for line in (teacher_dir / "log.jsonl").read_text().splitlines()]
    result["teacher_dim"] = yaml.safe_load((teacher_dir / "config.yaml").read_text())["model"]["args"]["dim"]
    return result


METRICS = ("mrr", "mr", "hits@1", "hits@3", "hits@10", "parameters", "train_seconds", "finetune_seconds",
           "eval_seconds")


def matmul_probe(n: int, dtype: torch.dtype, device: torch.device, repeats: int = 20) -> dict:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync()
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    secs = time.perf_counter() - t
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "tflops": round(2 * n**3 * repeats / secs / 1e12, 3)}


def teacher(size: dict, main: dict) -> dict:
    from distkg.config import load_config
    from distkg.data import load_dataset
    from distkg.device import placement

    cfg = load_config(REPO / "configs" / "quickstart.yaml")
    where = placement(cfg)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(where.mixed_precision, torch.float32)
    probe = matmul_probe(size["probe_n"], dtype, where.device)
    out: dict = {"device": str(where.device), "mixed_precision": where.mixed_precision, "matmul_probe": probe}
    log = main.get("teacher_log")
    if not log:
        return {**out, "error": "the main job gave no teacher log"}
    ds = load_dataset(cfg.data)
    dim = main["teacher_dim"]
    queries = 2 * len(ds.splits["train"])
    flops = 6 * dim * ds.num_entities * queries  # forward match 2 D E per query, backward twice that
    seconds = [r["seconds"] for r in log]
    best = min(seconds)
    return {**out, "epoch_seconds": seconds, "dim": dim, "entities": ds.num_entities, "training_queries": queries,
            "epoch_tflops_estimate": round(flops / best / 1e12, 4),
            "share_of_probe": round(flops / best / 1e12 / probe["tflops"], 4)}


TEXT_QUERY = ["llm.query=text", "llm.query_facts=6", "llm.query_tokens=48"]  # the llm-text recipe's query


def _teacher_for(size: dict, layers: int | None, lora: bool, texts_per_forward: str = "auto", extra: tuple[str, ...] = ()):
    from distkg.config import load_config
    from distkg.data import load_dataset
    from distkg.llm.train import build_teacher

    sets = ["llm.quantization=nf4", f"llm.layers={layers if layers else 'null'}", f"llm.texts_per_forward={texts_per_forward}",
            "llm.progress=false", *extra]
    cfg = load_config(REPO / "configs" / "quickstart.yaml", sets)
    ds = load_dataset(cfg.data)
    return cfg, ds, build_teacher(cfg, ds, lora=lora)


def llm_encode(size: dict) -> dict:
    cfg, ds, teacher = _teacher_for(size, size["encode_layers"], lora=False)
    teacher.eval()
    enc = teacher.encoder
    texts = teacher.texts["entity"][: size["texts"]]
    enc.encode(texts[:256])  # warm-up: CUDA context, kernels, tokenizer
    enc.clear()
    enc.stats.__init__()
    sync()
    t = time.perf_counter()
    enc.encode(texts)
    sync()
    secs = time.perf_counter() - t
    return {"model": cfg.llm.model, "quantization": "nf4", "layers": teacher.lm_model.config.num_hidden_layers,
            "device": str(teacher.device), "texts_per_forward": enc.batch_size, "texts": len(texts),
            "seconds": round(secs, 3), "texts_per_second": round(len(texts) / secs, 1),
            "forward_calls": enc.stats.forward_calls, "padding_share": round(enc.stats.padding_share, 4)}


def qlora_step(size: dict, query: str = "composed") -> dict:
    """Median seconds of a LoRA step (forward, backward, AdamW) over a sampled softmax; ``query: text``:
    the teacher that reads each query as one text (llm.query=text), its batch sent with its rows."""
    import torch.nn.functional as F

    from distkg.training.trainer import training_queries

    cfg, ds, teacher = _teacher_for(size, size["qlora_layers"], lora=True, extra=tuple(TEXT_QUERY) if query == "text" else ())
    teacher.train()
    params = [p for p in teacher.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    queries, answers = training_queries(ds.splits["train"], ds.num_relations)
    rows = []
    for batch, negatives in size["qlora_batches"]:
        gen = torch.Generator().manual_seed(0)
        times = []
        for step in range(2 + size["qlora_steps"]):  # two warm-up steps
            t = time.perf_counter()
            idx = torch.randint(0, len(queries), (batch,), generator=gen)
            neg = torch.randint(0, ds.num_entities, (negatives,), generator=gen)
            cands, inverse = torch.unique(torch.cat([answers[idx], neg]), return_inverse=True)
            q = teacher.with_rows(queries[idx], idx) if query == "text" else queries[idx]
            loss = F.cross_entropy(teacher.score_sampled(q.to(teacher.device), cands.to(teacher.device)),
                                   inverse[:batch].to(teacher.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            teacher.mark_updated()
            loss.item()
            sync()
            if step >= 2:
                times.append(time.perf_counter() - t)
        rows.append({"batch_size": batch, "negatives": negatives, "steps": len(times),
                     "seconds_per_step": round(statistics.median(times), 4), "loss": round(loss.item(), 4)})
    return {"layers": teacher.lm_model.config.num_hidden_layers, "device": str(teacher.device), "query": query,
            "batches": rows}


def precision(size: dict, work: Path) -> dict:
    """`distkg train` of the quickstart's teacher per (precision, seed), each in its own process
    (Accelerate fixes mixed precision once per process)."""
    seeds = size["precision_seeds"]
    sets = ["train.progress=false", "eval.progress=false", *size["precision_sets"]]
    mrr: dict = {}
    for mp in ("no", "bf16"):
        for seed in seeds:
            out = work / f"precision-{mp}-{seed}"
            cmd = [sys.executable, "-m", "distkg", "train", "--config", "configs/quickstart.yaml", "--out", str(out)]
            for item in [*sets, f"train.mixed_precision='{mp}'", f"seed={seed}"]:
                cmd += ["--set", item]
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd[3:])} failed: {proc.stderr[-1500:]}")
            mrr[f"{mp}/seed{seed}"] = json.loads((out / "metrics.json").read_text())["mrr"]
    return {"test_mrr": mrr,
            "bf16_change": [round(mrr[f"bf16/seed{s}"] - mrr[f"no/seed{s}"], 5) for s in seeds],
            "seed_change": [round(mrr[f"{mp}/seed{seeds[-1]}"] - mrr[f"{mp}/seed{seeds[0]}"], 5) for mp in ("no", "bf16")]}


def sampled(size: dict, work: Path) -> dict:
    """`distkg train` of the quickstart's teacher with the sampled softmax (sparse entity rows, the logQ
    correction) and eval.max_facts, on this device; and what eval.memory_budget auto resolves to here."""
    from distkg.evaluation import budget_bytes

    out = work / "sampled"
    cmd = [sys.executable, "-m", "distkg", "train", "--config", "configs/quickstart.yaml", "--out", str(out)]
    for item in ["train.loss=sampled_softmax", "train.negatives=256", "eval.max_facts=500", "train.progress=false",
                 "eval.progress=false", *size["sampled_sets"]]:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=150)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[3:])} failed: {proc.stderr[-1500:]}")
    m = json.loads((out / "metrics.json").read_text())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {"test_mrr": m["mrr"], "train_seconds": m["train_seconds"], "facts": m["protocol"].get("facts"),
            "memory_budget_auto_bytes": budget_bytes("auto", device), "device": device}


def big_teacher(size: dict) -> dict:
    sys.path.insert(0, str(REPO / "scripts"))
    import bench_llm

    return bench_llm.run(size["big_shape"], size["big_texts"], size["big_batches"], size["big_steps"], [])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the JSON file to write")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, CPU (CI)")
    args = ap.parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    size = SIZES[mode]
    started = time.perf_counter()
    result: dict = {"mode": mode, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "torch": torch.__version__, "cuda": torch.cuda.is_available(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                             text=True).stdout.strip() or None}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        """After every part, so a run cut short by the device's time limit still returns what it measured."""
        result["wall_seconds"] = round(time.perf_counter() - started, 1)
        out.write_text(json.dumps(result, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        run_part(result, "tests", tests, size, work)
        write()
        run_part(result, "main_job", main_job, size, work)
        run_part(result, "teacher", teacher, size, result["main_job"])
        for key in ("teacher_log", "teacher_dim"):
            result["main_job"].pop(key, None)
        write()
        for name, fn, *args in (("llm_encode", llm_encode), ("qlora_step", qlora_step), ("qlora_step_text", qlora_step, "text"),
                                ("precision", precision, work), ("sampled", sampled, work), ("big_teacher", big_teacher)):
            run_part(result, name, fn, size, *args)
            write()
    result["complete"] = True
    write()
    print(str(out))
    return result


if __name__ == "__main__":
    main()
