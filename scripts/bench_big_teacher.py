"""What a bigger LLM teacher needs: load time, weight bytes, peak memory, encoding rate and the
seconds of a LoRA step, for configs/llm/smollm2-1.7b-yago11k.yaml on a model of its shape with random
weights (scripts/shaped_model.py; the shape sets the cost, the weights do not). Writes JSON.

    .venv/bin/python scripts/bench_big_teacher.py --out docs/bench/bench_big_teacher_cpu.json   # CPU: small batches
    # the unquantized base sharded by ZeRO-3 over 2 processes (gloo on 127.0.0.1), against one process
    # loading it whole (both returning freed memory: distkg.allocator.return_freed_memory): what each
    # process holds and peaks at while loading and stepping
    .venv/bin/python scripts/bench_big_teacher.py --zero3 2 --out docs/bench/bench_big_teacher_zero3_cpu.json
scripts/gpu_check.py runs the same measurement on a GPU at the recipe's batch (part big_teacher).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
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


class AnonPeak:
    """The peak of this process's anonymous resident memory (RssAnon: what it allocated, not the
    page cache of files it maps), sampled every 20 ms on Linux; None elsewhere."""

    def __init__(self) -> None:
        self.peak, self._stop = self.now(), threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    @staticmethod
    def now() -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            now = self.now()
            if now is not None:
                self.peak = max(self.peak or 0, now)

    def take(self) -> int | None:
        """The peak so far; sampling restarts from the present."""
        now = self.now()
        result = None if self.peak is None else max(self.peak, now or 0)
        self.peak = now
        return result


def measure(folder: Path, shape: str, texts: int, batches: list[tuple[int, int]], steps: int, sets: list[str],
            rank: int = 0, world: int = 1, policy: bool = False) -> dict:
    """One process's figures; with ``world`` > 1 it is rank ``rank`` of a ZeRO-3 group (a process group
    is initialized), whose LM is loaded as partitions and stepped by DeepSpeed's engine."""
    import torch.nn.functional as F

    from distkg.config import load_config
    from distkg.data import load_dataset
    from distkg.llm.finetune import build_teacher
    from distkg.llm.rounds import head_params, lm_bytes, step_replicated, zero_config, zero_engine
    from distkg.training.trainer import training_queries

    sharded = world > 1
    if policy:  # both sides of a --zero3 comparison free memory back (distkg.allocator), as a ZeRO-3 worker does
        from distkg.allocator import return_freed_memory

        return_freed_memory()
    cfg = load_config(RECIPE, [f"llm.model={folder}", "llm.progress=false", *sets,
                               *(["llm.quantization=none", "runtime.zero_stage=3"] if sharded else [])])
    ds = load_dataset(cfg.data)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    anon = AnonPeak()
    t = time.perf_counter()
    teacher = build_teacher(cfg, ds, zero3=zero_config(cfg) if sharded else None)
    sync()
    load_s = time.perf_counter() - t
    lm = teacher.lm_model
    row: dict = {"shape": shape, "device": str(teacher.device), "quantization": cfg.llm.quantization,
                 "layers": lm.config.num_hidden_layers, "load_seconds": round(load_s, 1),
                 "lm_weight_bytes": weight_bytes(lm), "lm_bytes_whole": lm_bytes(lm, whole=True),
                 "lm_bytes_held": lm_bytes(lm), "peak_anon_bytes_load": anon.take(),
                 "trainable_parameters": sum(p.numel() for p in teacher.parameters() if p.requires_grad)}
    opt = torch.optim.AdamW([{"params": [p for p in lm.parameters() if p.requires_grad], "lr": 1e-4},
                             {"params": head_params(teacher), "lr": 1e-4}])
    engine = heads_opt = None
    if sharded:
        row["rank"], row["world"] = rank, world
        engine, heads_opt = zero_engine(teacher, opt, cfg)
        row["lm_bytes_held_engine"] = lm_bytes(lm)
    if policy:  # one padded call per batch, as every ZeRO-3 rank must (distkg.llm.rounds) and a GPU does,
        teacher.encoder.exact_lengths = False  # on both sides: a step's activations then compare
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
    queries, answers = training_queries(ds.splits["train"], ds.num_relations)
    row["steps"] = []
    for batch, negatives in batches:
        gen = torch.Generator().manual_seed(rank)  # a batch per rank, as in fine-tuning
        times = []
        for step in range(1 + steps):  # one warm-up step
            t = time.perf_counter()
            idx = torch.randint(0, len(queries), (batch,), generator=gen)
            neg = torch.randint(0, ds.num_entities, (negatives,), generator=gen)
            cands, inverse = torch.unique(torch.cat([answers[idx], neg]), return_inverse=True)
            loss = F.cross_entropy(teacher.score_sampled(queries[idx].to(teacher.device), cands.to(teacher.device)),
                                   inverse[:batch].to(teacher.device))
            if engine is not None:
                engine.backward(loss)
                engine.step()
                step_replicated(heads_opt, world)
            else:
                opt.zero_grad()
                loss.backward()
                opt.step()
            teacher.mark_updated()
            sync()
            if step:
                times.append(time.perf_counter() - t)
        row["steps"].append({"queries": batch, "negatives": negatives, "steps": len(times),
                             "seconds_per_step": round(statistics.median(times), 3)})
    row["peak_anon_bytes"] = max(row["peak_anon_bytes_load"] or 0, anon.take() or 0) or None
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if torch.cuda.is_available():
        row["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return row


def _rank(rank: int, world: int, port: int, args: tuple, rows) -> None:
    """Rank ``rank`` of a ZeRO-3 group on this machine, as torchrun would start it."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_SIZE=str(world))  # DeepSpeed's CPU all-reduce reads LOCAL_SIZE
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rows[rank] = measure(*args, rank=rank, world=world, policy=True)
    finally:
        dist.destroy_process_group()


def measure_group(world: int, *args) -> list[dict]:
    """``measure`` in ``world`` processes of one ZeRO-3 group; their rows by rank."""
    import torch.multiprocessing as mp

    from distkg.runtime.cluster import free_port

    with mp.Manager() as manager:
        rows = manager.dict()
        mp.spawn(_rank, args=(world, free_port(), args, rows), nprocs=world, join=True)
        return [rows[r] for r in range(world)]


def _apart(i: int, args: tuple, rows) -> None:
    rows[0] = measure(*args, policy=True)


def measure_apart(*args) -> dict:
    """``measure`` in a process of its own (its peak memory is then only its own)."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        rows = manager.dict()
        mp.spawn(_apart, args=(args, rows), nprocs=1, join=True)
        return rows[0]


def run(shape: str, texts: int, batches: list[tuple[int, int]], steps: int, sets: list[str], zero3: int = 0) -> dict:
    """The shaped model written to a temporary folder by another process (its memory is not this
    one's peak), then measured: in this process; or with ``zero3`` N, unquantized, once whole in a
    process of its own and once as N ZeRO-3 ranks, with each rank's share of the whole's figures."""
    import ast
    import subprocess

    with tempfile.TemporaryDirectory(prefix="shaped-") as tmp:
        done = subprocess.run([sys.executable, str(REPO / "scripts" / "shaped_model.py"), shape, str(Path(tmp) / shape)],
                              capture_output=True, text=True, check=True)
        made = ast.literal_eval(done.stdout.strip().splitlines()[-1])
        args = (Path(made["folder"]), shape, texts, batches, steps, sets)
        if not zero3:
            return {"parameters": made["parameters"], "make_seconds": made["seconds"], **measure(*args)}
        whole = measure_apart(*args[:5], [*sets, "llm.quantization=none"])
        ranks = measure_group(zero3, *args)
    share = {key: [round(r[key] / whole[key], 3) for r in ranks]
             for key in ("lm_bytes_held", "peak_anon_bytes_load", "peak_anon_bytes") if whole.get(key)}
    share["seconds_per_step"] = [round(r["steps"][0]["seconds_per_step"] / whole["steps"][0]["seconds_per_step"], 3)
                                 for r in ranks]
    return {"parameters": made["parameters"], "make_seconds": made["seconds"], "whole": whole, "zero3": ranks,
            "share_of_whole": share}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shape", default="smollm2-1.7b")
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--batch", action="append", default=None, help="QUERIES:NEGATIVES of a LoRA step (repeatable)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], dest="sets", help="config override")
    ap.add_argument("--zero3", type=int, default=0, metavar="N", help="also as N ZeRO-3 processes, unquantized")
    args = ap.parse_args(argv)
    batches = [tuple(int(x) for x in b.split(":")) for b in (args.batch or ["4:8"])]
    started = time.perf_counter()
    result = {"command": " ".join(["python", "scripts/bench_big_teacher.py", *(argv if argv is not None else sys.argv[1:])]),
              "threads": torch.get_num_threads(), **run(args.shape, args.texts, batches, args.steps, args.sets, args.zero3)}
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
