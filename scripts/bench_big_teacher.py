"""What a bigger LLM teacher needs: load time, weight bytes, peak memory, encoding rate and the
seconds of a LoRA step, for configs/llm/smollm2-1.7b-yago11k.yaml on a model of its shape with random
weights (scripts/shaped_model.py; the shape sets the cost, the weights do not). Writes JSON.

    .venv/bin/python scripts/bench_big_teacher.py --out docs/bench/bench_big_teacher_cpu.json   # CPU: small batches
scripts/gpu_check.py runs the same measurement on a GPU at the recipe's batch (part big_teacher).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import torch  # noqa: E402

RECIPE = REPO / "configs" / "llm" / "smollm2-1.7b-yago11k.yaml"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the LM's parameters and buffers as stored (4-bit weights packed two to a byte)."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def measure(folder: Path, shape: str, texts: int, batches: list[tuple[int, int]], steps: int, sets: list[str]) -> dict:
    import torch.nn.functional as F

    from distkg.config import load_config
    from distkg.data import load_dataset
    from distkg.llm.finetune import build_teacher
    from distkg.training.trainer import training_queries

    cfg = load_config(RECIPE, [f"llm.model={folder}", "llm.progress=false", *sets])
    ds = load_dataset(cfg.data)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    teacher = build_teacher(cfg, ds)
    sync()
    load_s = time.perf_counter() - t
    lm = teacher.lm_model
    row: dict = {"shape": shape, "device": str(teacher.device), "quantization": cfg.llm.quantization,
                 "layers": lm.config.num_hidden_layers, "load_seconds": round(load_s, 1),
                 "lm_weight_bytes": weight_bytes(lm),
                 "trainable_parameters": sum(p.numel() for p in teacher.parameters() if p.requires_grad)}
    teacher.eval()
    sample = teacher.texts["entity"][:texts]
    teacher.encoder.encode(sample[: max(1, texts // 8)])  # warm-up
    teacher.encoder.clear()
    sync()
    t = time.perf_counter()
    with torch.inference_mode():
        teacher.encoder.encode(sample)
    sync()
    row["encode"] = {"texts": len(sample), "texts_per_second": round(len(sample) / (time.perf_counter() - t), 1)}
    teacher.train()
    opt = torch.optim.AdamW([p for p in teacher.parameters() if p.requires_grad], lr=1e-4)
    queries, answers = training_queries(ds.splits["train"], ds.num_relations)
    row["steps"] = []
    for batch, negatives in batches:
        gen = torch.Generator().manual_seed(0)
        times = []
        for step in range(1 + steps):  # one warm-up step
            t = time.perf_counter()
            idx = torch.randint(0, len(queries), (batch,), generator=gen)
            neg = torch.randint(0, ds.num_entities, (negatives,), generator=gen)
            cands, inverse = torch.unique(torch.cat([answers[idx], neg]), return_inverse=True)
            loss = F.cross_entropy(teacher.score_sampled(queries[idx].to(teacher.device), cands.to(teacher.device)),
                                   inverse[:batch].to(teacher.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            teacher.mark_updated()
            sync()
            if step:
                times.append(time.perf_counter() - t)
        row["steps"].append({"queries": batch, "negatives": negatives, "steps": len(times),
                             "seconds_per_step": round(statistics.median(times), 3)})
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if torch.cuda.is_available():
        row["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return row


def run(shape: str, texts: int, batches: list[tuple[int, int]], steps: int, sets: list[str]) -> dict:
    """The shaped model written to a temporary folder by another process (its memory is not this
    one's peak), then measured."""
    import ast
    import subprocess

    with tempfile.TemporaryDirectory(prefix="shaped-") as tmp:
        done = subprocess.run([sys.executable, str(REPO / "scripts" / "shaped_model.py"), shape, str(Path(tmp) / shape)],
                              capture_output=True, text=True, check=True)
        made = ast.literal_eval(done.stdout.strip().splitlines()[-1])
        row = measure(Path(made["folder"]), shape, texts, batches, steps, sets)
    return {"parameters": made["parameters"], "make_seconds": made["seconds"], **row}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shape", default="smollm2-1.7b")
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--batch", action="append", default=None, help="QUERIES:NEGATIVES of a LoRA step (repeatable)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], dest="sets", help="config override")
    args = ap.parse_args(argv)
    batches = [tuple(int(x) for x in b.split(":")) for b in (args.batch or ["4:8"])]
    started = time.perf_counter()
    result = {"command": " ".join(["python", "scripts/bench_big_teacher.py", *(argv if argv is not None else sys.argv[1:])]),
              "threads": torch.get_num_threads(), **run(args.shape, args.texts, batches, args.steps, args.sets)}
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
