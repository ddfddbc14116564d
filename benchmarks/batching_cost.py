"""What batching could buy on this machine: one forward pass over several questions against
the same work done one question at a time, side by side in one run.

Measures, with the embedded Gemma-3-270M (dtype auto, the default threads), medians of
``--repeats`` runs each:

- prefill: one pass over a batch of ``b`` prompts of ``n`` tokens vs ``b`` passes of one;
- decoding: one step for a batch of ``b`` sequences vs ``b`` steps of one (the step where
  the 262k-row LM head is read once for the whole batch);
- two forward passes at once, each in its own thread with one intra-op thread, vs the same two
  passes one after the other with all threads.

    python benchmarks/batching_cost.py [--out benchmarks/results/batching_cost.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from guardrail.config import GuardrailConfig
from guardrail.hardware import usable_cpus
from guardrail.pipeline import local_backend


def median_seconds(run: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/batching_cost.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = GuardrailConfig()
    backend = local_backend(config, config.generator).load()
    model = backend._model  # the loaded transformers model
    threads = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)

    def tokens(batch: int, length: int) -> torch.Tensor:
        return torch.randint(10, 20000, (batch, length), generator=generator)

    def prefill(x: torch.Tensor) -> Any:
        with torch.inference_mode():  # per call: a new thread does not inherit the mode
            return model(x, use_cache=True, logits_to_keep=1)

    prefill(tokens(1, 64))  # warm up
    rows: dict[str, Any] = {"prefill": [], "decode": []}
    for batch, length in ((4, 128), (4, 512)):
        one = tokens(1, length)
        many = tokens(batch, length)
        single = median_seconds(lambda one=one: prefill(one), args.repeats)
        batched = median_seconds(lambda many=many: prefill(many), args.repeats)
        rows["prefill"].append(
            {
                "batch": batch,
                "tokens": length,
                "one_seconds": round(single, 3),
                "batch_seconds": round(batched, 3),
                "gain": round(batch * single / batched, 2),
            }
        )
    out = prefill(tokens(1, 256))
    layers = tuple(out.cache)
    for batch in (4, 8):

        def step(n: int) -> None:
            cache = DynamicCache(
                ddp_cache_data=tuple(
                    tuple(
                        t.expand(n, *t.shape[1:]).contiguous()
                        if isinstance(t, torch.Tensor) and t.dim() == 4
                        else t
                        for t in layer
                    )
                    for layer in layers
                ),
                config=model.config,
            )
            model(torch.full((n, 1), 5), cache=cache, use_cache=True, logits_to_keep=1)

        single = median_seconds(lambda: step(1), args.repeats)
        batched = median_seconds(lambda batch=batch: step(batch), args.repeats)
        rows["decode"].append(
            {
                "batch": batch,
                "one_seconds": round(single, 3),
                "batch_seconds": round(batched, 3),
                "gain": round(batch * single / batched, 2),
            }
        )
    x = tokens(1, 500)
    sequential = median_seconds(lambda: (prefill(x), prefill(x)), args.repeats)
    torch.set_num_threads(1)

    failures: list[BaseException] = []

    def pass_in_thread() -> None:
        try:
            prefill(x)
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    def parallel() -> None:
        workers = [threading.Thread(target=pass_in_thread) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    concurrent = median_seconds(parallel, args.repeats)
    if failures:
        raise RuntimeError(f"a parallel pass failed: {failures[0]!r}")
    torch.set_num_threads(threads)
    rows["two_passes_of_500_tokens"] = {
        "sequential_all_threads_seconds": round(sequential, 3),
        "parallel_one_thread_each_seconds": round(concurrent, 3),
        "gain": round(sequential / concurrent, 2),
    }
    result = {
        "setting": (
            f"{backend.name}, dtype {backend.dtype}, {threads} threads of {usable_cpus()} usable, "
            f"random token ids, medians of {args.repeats}; gain = work per second batched / "
            "one at a time (1.0: batching buys nothing)"
        ),
        **rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
