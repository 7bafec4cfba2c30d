"""Benchmark: the LLM teacher on this machine: encoding and scoring, the LoRA loop, and a bigger teacher's needs.

Parts (``python scripts/bench_llm.py PART --out FILE``; ``--smoke`` runs them all at tiny sizes, on a
random model of the "tiny" shape, scripts/shaped_model.py):
  encode       the entity texts of a dataset (first --texts) encoded with SmolLM2 (or --model, or a
               random model of --shape), length-bucketed (what distkg does) and in file order (the
               naive way): texts/s, tokens/s, the share of positions lost to padding, achieved FLOP/s
               (2 x non-embedding parameters x positions run) as a fraction of this machine's fp32
               matmul FLOP/s measured in the same run; then test queries scored against the cached
               entity table (queries/s)
  lora         the LoRA loop's throughput (texts/s forward + backward) next to the forward-only rate
               of the same model and layers, alternately in one process: forward (length-bucketed,
               no gradients), lora_fb_one (one padded call with gradients, then backward:
               llm.step_calls one), lora_fb_lengths (one call per token length: llm.step_calls
               lengths), step (whole InfoNCE steps of --step-calls, texts/s of the texts run)
  big_teacher  what a bigger LLM teacher needs: load time, weight bytes, peak memory, encoding rate
               and the seconds of a LoRA step, for configs/llm/smollm2-1.7b-yago11k.yaml on a model
               of its shape with random weights (the shape sets the cost, the weights do not); with
               --zero3 N, the unquantized base sharded by ZeRO-3 over N processes (gloo on 127.0.0.1)
               against one process loading it whole. scripts/gpu_check.py runs it on a GPU.

    python scripts/bench_llm.py encode --out runs/bench_llm.json [--dataset yago11k] [--texts 512] [--quantization nf4]
        [--layers 8] [--encode-batch 256]
    python scripts/bench_llm.py lora --out runs/bench_lora.json [--dataset yago11k] [--layers 8] [--quantization nf4]
        [--batch-size 256] [--repeats 3]
    python scripts/bench_llm.py big_teacher --out docs/bench/bench_big_teacher_cpu.json   # CPU: small batches
    python scripts/bench_llm.py big_teacher --zero3 2 --out docs/bench/bench_big_teacher_zero3_cpu.json
"""

from __future__ import annotations

import atexit
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from benchlib import REPO, Part, bench_data_root, main

RECIPE = REPO / "configs" / "llm" / "smollm2-1.7b-yago11k.yaml"


def model_options(ap, encode_batch: int) -> None:
    """The LLM and data options encode and lora share."""
    ap.add_argument("--data-root")
    ap.add_argument("--dataset", default="yago11k")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--shape", help="instead of --model: a random model of this shape (scripts/shaped_model.py)")
    ap.add_argument("--quantization", default="nf4", choices=["nf4", "none"])
    ap.add_argument("--layers", type=int, help="keep only the first N transformer layers (llm.layers)")
    ap.add_argument("--encode-batch", type=int, default=encode_batch, dest="texts_per_forward",
                    help="texts per forward-only call (llm.texts_per_forward)")


def teacher_of(args, sets: list[str], **kw):
    """(dataset, the LLM teacher of args.model, or of a random args.shape model written to a temporary folder)."""
    from distkg.config import load_config
    from distkg.data import load_dataset
    from distkg.llm.train import build_teacher

    model = args.model
    if args.shape:
        from shaped_model import make

        tmp = tempfile.mkdtemp(prefix="shaped-")
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        model = make(args.shape, Path(tmp) / args.shape)["folder"]
    ds = load_dataset(load_config(None, [f"data.dataset={args.dataset}"]).data, bench_data_root(args.data_root))
    cfg = load_config(None, [f"llm.model={model}", f"llm.quantization={args.quantization}", "llm.progress=false",
                             f"llm.layers={args.layers if args.layers else 'null'}",
                             f"llm.texts_per_forward={args.texts_per_forward}", *sets])
    return ds, build_teacher(cfg, ds, **kw)


def matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t)


def encode_run(enc, texts: list[str], bucketed: bool, body_params: int) -> dict:
    enc.clear()
    enc.stats.__init__()
    t = time.perf_counter()
    if bucketed:
        enc.encode(texts)
    else:
        with torch.inference_mode():
            for b in range(0, len(texts), enc.batch_size):
                enc._run(texts[b : b + enc.batch_size])  # padded batches in file order
    secs = time.perf_counter() - t
    st = enc.stats
    return {"seconds": round(secs, 2), "texts_per_second": round(len(texts) / secs, 1),
            "tokens_per_second": round(st.tokens / secs, 1), "padding_share": round(st.padding_share, 4),
            "flops_per_second": 2 * body_params * st.padded_tokens / secs}


def encode_options(ap) -> None:
    model_options(ap, 64)
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--queries", type=int, default=2000)


def encode(args) -> dict:
    from distkg.evaluation import build_queries
    from distkg.llm.loading import logical_numel

    ds, teacher = teacher_of(args, [], lora=False)
    teacher = teacher.eval()
    enc = teacher.encoder
    body = sum(logical_numel(p) for n, p in teacher.lm_model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    texts = teacher.texts["entity"][: args.texts]
    peak = matmul_flops()
    naive = encode_run(enc, texts, bucketed=False, body_params=body)
    bucketed = encode_run(enc, texts, bucketed=True, body_params=body)
    for r in (naive, bucketed):
        r["flops_share_of_matmul"] = round(r["flops_per_second"] / peak, 3)
    # scoring against a cached table: encode the table once, then time score_candidates alone
    n_ent = min(args.texts, ds.num_entities)
    qs = build_queries(ds.splits["test"], ds.num_relations)
    q = torch.from_numpy(qs.queries[: args.queries])
    q[:, 0] %= n_ent
    teacher.candidate_table(0, n_ent)
    teacher.query_repr(q)  # warm: query-side texts into the cache
    t = time.perf_counter()
    with torch.inference_mode():
        teacher.score_candidates(q, 0, n_ent)
    score_s = time.perf_counter() - t
    return {"dataset": args.dataset, "model": args.model, "quantization": args.quantization, "layers": args.layers,
              "texts_per_forward": args.texts_per_forward, "texts": len(texts),
              "body_parameters": body, "matmul_flops_per_second": peak, "encode_naive": naive,
              "encode_bucketed": bucketed, "scoring": {"queries": len(q), "candidates": n_ent,
                                                       "queries_per_second": round(len(q) / score_s, 1)}}


def lora_options(ap) -> None:
    model_options(ap, 512)
    ap.add_argument("--max-tokens", type=int, default=32, help="llm.max_tokens")
    ap.add_argument("--batch-size", type=int, default=256, help="training queries per step (llm.queries_per_step)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--step-calls", default="lengths", choices=["one", "lengths"], help="llm.step_calls of the whole steps")


def lora(args) -> dict:
    from distkg.evaluation import FilterIndex, QuerySet, build_queries
    from distkg.llm.contrastive import full_cache, infonce_loss, step_texts

    ds, teacher = teacher_of(args, [f"llm.max_tokens={args.max_tokens}", "llm.objective=infonce"])
    enc = teacher.encoder
    qs = build_queries(ds.splits["train"], ds.num_relations)
    index = FilterIndex(ds.splits["train"], ds.num_relations, "time")
    opt = torch.optim.AdamW([p for p in teacher.parameters() if p.requires_grad], lr=1e-4)
    t = time.perf_counter()
    cache = full_cache(teacher.eval())["entity"]
    cache_s = time.perf_counter() - t
    rates: dict[str, list[float]] = {"forward": [], "lora_fb_one": [], "lora_fb_lengths": [], "step": []}
    for rep in range(args.repeats):
        idx = torch.randint(0, len(qs), (args.batch_size,), generator=torch.Generator().manual_seed(rep)).numpy()
        batch = QuerySet(qs.queries[idx], qs.answers[idx], qs.keys[idx], num_tail=0)
        texts, _ = step_texts(teacher, torch.from_numpy(batch.queries))
        enc.clear()
        teacher.eval()
        t = time.perf_counter()
        enc.encode(texts)
        rates["forward"].append(len(texts) / (time.perf_counter() - t))
        teacher.train()
        t = time.perf_counter()
        enc.encode_padded(texts).sum().backward()
        rates["lora_fb_one"].append(len(texts) / (time.perf_counter() - t))
        t = time.perf_counter()
        enc.encode(texts, grad=True).sum().backward()
        rates["lora_fb_lengths"].append(len(texts) / (time.perf_counter() - t))
        opt.zero_grad()
        t = time.perf_counter()
        loss, n = infonce_loss(teacher, cache, batch, index, args.step_calls)
        loss.backward()
        opt.step()
        opt.zero_grad()
        rates["step"].append(n / (time.perf_counter() - t))
    med = {k: round(statistics.median(v), 1) for k, v in rates.items()}
    return {"dataset": args.dataset, "model": args.model, "quantization": args.quantization, "layers": args.layers,
              "max_tokens": args.max_tokens, "batch_size": args.batch_size, "texts_per_step": len(texts),
              "entity_cache_seconds": round(cache_s, 1), "entities": ds.num_entities,
              "texts_per_second_median": med, "texts_per_second_all": {k: [round(x, 1) for x in v] for k, v in rates.items()},
              "step_calls": args.step_calls, "forward_over": {k: round(med["forward"] / med[k], 2) for k in med if k != "forward"}}


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
    from distkg.llm.train import build_teacher
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


def big_options(ap) -> None:
    ap.add_argument("--shape", default="smollm2-1.7b")
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--batch", action="append", default=None, help="QUERIES:NEGATIVES of a LoRA step (repeatable)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], dest="sets", help="config override")
    ap.add_argument("--zero3", type=int, default=0, metavar="N", help="also as N ZeRO-3 processes, unquantized")


def big_teacher(args) -> dict:
    batches = [tuple(int(x) for x in b.split(":")) for b in (args.batch or ["4:8"])]
    started = time.perf_counter()
    result = {"threads": torch.get_num_threads(), **run(args.shape, args.texts, batches, args.steps, args.sets, args.zero3)}
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    return result


TINY = ("--shape", "tiny", "--quantization", "none", "--layers", "1")
PARTS = {
    "encode": Part(encode, encode_options, (*TINY, "--texts", "16", "--queries", "20", "--encode-batch", "8"),
                   "encoding and scoring rates"),
    "lora": Part(lora, lora_options, (*TINY, "--batch-size", "4", "--repeats", "1", "--max-tokens", "16"),
                 "LoRA forward + backward against forward only"),
    "big_teacher": Part(big_teacher, big_options, ("--shape", "tiny", "--texts", "8", "--batch", "2:4", "--steps", "1"),
                        "a bigger teacher's load, memory and step"),
}

if __name__ == "__main__":
    main(__doc__, PARTS)
