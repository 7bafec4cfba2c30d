"""Benchmark: the LoRA loop's throughput (texts/s forward+backward) next to the forward-only rate
of the same model and layers, measured alternately in one process so shared-machine load hits both.

- forward: the step's texts encoded without gradients, length-bucketed, ``--encode-batch`` per call
  (what scripts/bench_llm.py reports as encode_bucketed);
- lora_fb_one: the same texts in one padded call with gradients through the LoRA adapters, then
  backward (the LLM part of an InfoNCE step with ``llm.step_calls: one``, distkg.llm.contrastive);
- lora_fb_lengths: the same with one call per token length (``llm.step_calls: lengths``);
- step: whole InfoNCE steps (``--step-calls``) (encode, head over the entity cache, scoring against every entity,
  masking, backward, optimiser), texts/s counting the texts the step runs through the LLM.

    python scripts/bench_lora.py --out runs/bench_lora.json [--dataset yago11k] [--layers 8]
        [--quantization nf4] [--batch-size 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchlib import bench_data_root, machine, write_result
from distkg.config import load_config
from distkg.data import load_dataset
from distkg.evaluation import FilterIndex, QuerySet, build_queries
from distkg.llm.contrastive import full_cache, infonce_loss, step_texts
from distkg.llm.finetune import build_teacher


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data-root")
    ap.add_argument("--dataset", default="yago11k")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--quantization", default="nf4", choices=["nf4", "none"])
    ap.add_argument("--layers", type=int, help="keep only the first N transformer layers (llm.layers)")
    ap.add_argument("--max-tokens", type=int, default=32, help="llm.max_tokens")
    ap.add_argument("--encode-batch", type=int, default=512, help="texts per forward-only call (llm.texts_per_forward)")
    ap.add_argument("--batch-size", type=int, default=256, help="training queries per step (llm.queries_per_step)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--step-calls", default="lengths", choices=["one", "lengths"], help="llm.step_calls of the whole steps")
    args = ap.parse_args(argv)
    ds = load_dataset(load_config(None, [f"data.dataset={args.dataset}"]).data, bench_data_root(args.data_root))
    cfg = load_config(None, [f"llm.model={args.model}", f"llm.quantization={args.quantization}", "llm.progress=false",
                             f"llm.layers={args.layers if args.layers else 'null'}", f"llm.max_tokens={args.max_tokens}",
                             f"llm.texts_per_forward={args.texts_per_forward}", "llm.objective=infonce"])
    teacher = build_teacher(cfg, ds)
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
    result = {"dataset": args.dataset, "model": args.model, "quantization": args.quantization, "layers": args.layers,
              "max_tokens": args.max_tokens, "batch_size": args.batch_size, "texts_per_step": len(texts),
              "entity_cache_seconds": round(cache_s, 1), "entities": ds.num_entities,
              "texts_per_second_median": med, "texts_per_second_all": {k: [round(x, 1) for x in v] for k, v in rates.items()},
              "step_calls": args.step_calls, "forward_over": {k: round(med["forward"] / med[k], 2) for k in med if k != "forward"},
              "machine": machine()}
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
