"""Do concurrent requests get the same greedy answers as one at a time, on this build?

The batching engine promises that batching never changes an answer: greedy output of a
request decoded beside others equals the single-stream engine's for the same prompt. On the
CPU the tests pin this exactly. A GPU build runs other kernels depending on how many rows a
matrix product has, so this checks the promise where it matters, with layers offloaded:

    python bench/greedy_equality.py [--model PATH] [--n-gpu-layers -1] [--requests 16]
        [--concurrency 1,8] [--max-tokens 64] [--json]

Reference: `LlamaEngine` (single stream), one request at a time. Then `BatchingEngine` with
as many slots as the largest level, at each concurrency level (1 = one at a time through
the batching engine). Per level it prints how many answers equal the reference and, for
each that does not, the character where it first differs. Exit status 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apps.inference.engine.base import ChatRequest, Engine, ModelSpec, SamplingParams
from apps.inference.engine.batching import BatchingEngine
from apps.inference.engine.llama import LlamaEngine, gpu_offload_supported
from bench.concurrency import DEFAULT_MODEL, conversation


def answers(engine: Engine, requests: list[ChatRequest], concurrency: int) -> list[str]:
    """Each request's full text, `concurrency` requests in flight at a time."""
    texts: list[str] = [""] * len(requests)
    next_index = 0
    lock = threading.Lock()

    def client() -> None:
        nonlocal next_index
        while True:
            with lock:
                if next_index >= len(requests):
                    return
                index = next_index
                next_index += 1
            texts[index] = "".join(engine.submit(requests[index]))

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return texts


def first_difference(a: str, b: str) -> int | None:
    for index, (left, right) in enumerate(zip(a, b, strict=False)):
        if left != right:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--n-gpu-layers", type=int, default=-1)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--flash-attn", action="store_true", help="in both engines")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    levels = [int(level) for level in args.concurrency.split(",")]
    spec = ModelSpec(
        path=args.model,
        n_ctx=args.n_ctx,
        n_gpu_layers=args.n_gpu_layers,
        flash_attn=args.flash_attn,
    )
    sampling = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, seed=0)
    requests = [
        ChatRequest(messages=conversation(index), sampling=sampling)
        for index in range(args.requests)
    ]
    with LlamaEngine(spec) as single:
        reference = answers(single, requests, 1)
    report: dict[str, object] = {
        "model": Path(args.model).name,
        "n_gpu_layers": args.n_gpu_layers,
        "flash_attn": args.flash_attn,
        "gpu_offload_supported": gpu_offload_supported(),
        "requests": len(requests),
        "max_tokens": args.max_tokens,
        "levels": {},
    }
    differs = False
    with BatchingEngine(spec, slots=max(levels), prefix_cache_size=2) as batching:
        for level in levels:
            texts = answers(batching, requests, level)
            mismatches = {
                index: first_difference(text, reference[index])
                for index, text in enumerate(texts)
                if text != reference[index]
            }
            differs = differs or bool(mismatches)
            report["levels"][str(level)] = {  # type: ignore[index]
                "same": len(texts) - len(mismatches),
                "first_difference_at_character": mismatches,
                "mean_characters": sum(map(len, texts)) / len(texts),
            }
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(
            f"{report['model']}, n_gpu_layers {args.n_gpu_layers} (GPU offload "
            f"{'supported' if report['gpu_offload_supported'] else 'NOT supported'}), "
            f"{len(requests)} requests, {args.max_tokens} tokens, greedy"
        )
        for level, row in report["levels"].items():  # type: ignore[attr-defined]
            print(
                f"batching engine at concurrency {level}: {row['same']}/{len(requests)} "
                f"equal to the single-stream engine one at a time; first differences at "
                f"{row['first_difference_at_character'] or 'none'}"
            )
    return 1 if differs else 0


if __name__ == "__main__":
    sys.exit(main())
