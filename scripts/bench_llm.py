"""Benchmark: the LLM teacher's text encoding and scoring throughput on this machine.

Encodes the entity texts of a dataset (first --texts of them) with SmolLM2 (or --model), both
length-bucketed (what distkg does) and in file order (the naive way), and reports texts/s,
tokens/s, the share of LM positions lost to padding, and achieved FLOP/s (2 x non-embedding
parameters x positions run) as a fraction of this machine's fp32 matmul FLOP/s, measured in the
same run. Then scores test queries against the cached entity table (queries/s).

    python scripts/bench_llm.py --out runs/bench_llm.json [--dataset yago11k] [--texts 512] [--quantization nf4]
        [--layers 8] [--encode-batch 256]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchlib import bench_data_root, machine, write_result
from distkg.config import load_config
from distkg.data import load_dataset
from distkg.evaluation import build_queries
from distkg.llm.encoder import TextEncoder
from distkg.llm.finetune import build_teacher
from distkg.llm.loading import logical_numel


def matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t)


def encode_run(enc: TextEncoder, texts: list[str], bucketed: bool, body_params: int) -> dict:
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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data-root")
    ap.add_argument("--dataset", default="yago11k")
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--quantization", default="nf4", choices=["nf4", "none"])
    ap.add_argument("--layers", type=int, help="keep only the first N transformer layers (llm.layers)")
    ap.add_argument("--encode-batch", type=int, default=64, help="texts per LLM forward call (llm.texts_per_forward)")
    args = ap.parse_args(argv)
    ds = load_dataset(load_config(None, [f"data.dataset={args.dataset}"]).data, bench_data_root(args.data_root))
    cfg = load_config(None, [f"llm.model={args.model}", f"llm.quantization={args.quantization}", "llm.progress=false",
                             f"llm.layers={args.layers if args.layers else 'null'}", f"llm.texts_per_forward={args.texts_per_forward}"])
    teacher = build_teacher(cfg, ds, lora=False).eval()
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
    result = {"dataset": args.dataset, "model": args.model, "quantization": args.quantization, "layers": args.layers,
              "texts_per_forward": args.texts_per_forward, "texts": len(texts),
              "body_parameters": body, "matmul_flops_per_second": peak, "encode_naive": naive,
              "encode_bucketed": bucketed, "scoring": {"queries": len(q), "candidates": n_ent,
                                                       "queries_per_second": round(len(q) / score_s, 1)},
              "machine": machine()}
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
