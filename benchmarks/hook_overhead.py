"""Hook overhead: one masked discovery step ÷ a bare forward+backward of the same model and batch.

    python benchmarks/hook_overhead.py [--models gpt2-small,default] [--device cpu] [--out results.json]

Models: ``gpt2-small`` (GPT-2 small's shape, random weights, batch 32 × 32 random tokens) and
``default`` (embedded SmolLM2-135M, IOI on one template, batch 32 × 15 tokens). Also measured,
each as before/after of one optimisation: logits only at the answer position vs full logits;
cut-off of certainly-dead sites (half the attention and MLP blocks pruned) off vs on; corrupted
activations precomputed under inference_mode vs no_grad; 1 thread vs all threads.
The physical floor of the ratio is about 1.0 (the masked step runs the same model once in cache mode).
The ratio is the median over 5 rounds that each time the bare pass and then the masked step, so a
slow spell of the shared machine does not land on one side only.
"""

from __future__ import annotations

import time

from harness import bare_step_seconds, parser, print_table, random_task, shaped_model, step_seconds, write

GUIDE = "When [A] and [B] went to the [PLACE], [B] gave a [OBJECT] to [A]"


def setup(name: str, device: str):
    import mgnp_lens as mg

    if name == "gpt2-small":
        model = shaped_model("gpt2-small", device)
        return model, random_task(model, 64, 32)
    model = mg.load_model(device=device)
    return model, mg.tasks.IOI(model, n_train=64, n_validation=1, n_test=1, templates=[GUIDE])


def precompute_seconds(model, task, mode_ctx) -> float:
    from mgnp_lens.granularity import ModelDims
    from mgnp_lens.hooks import corrupted_activations

    dims = ModelDims.from_model(model)
    batch = task.split("train").buckets[0]
    fn = corrupted_activations.__wrapped__ if hasattr(corrupted_activations, "__wrapped__") else corrupted_activations
    times = []
    for i in range(3):
        t = time.perf_counter()
        with mode_ctx():
            fn(model, dims, batch.corrupted[:32].to(next(model.parameters()).device))
        if i:
            times.append(time.perf_counter() - t)
    return min(times)


def measure(name: str, device: str) -> dict:
    import torch

    model, task = setup(name, device)
    B = 32
    r = {"model": name, "batch": B, "seq": int(task.split("train").buckets[0].clean.shape[1])}
    r.update(interleaved_overhead(model, task, B))
    r["bare_fwd_bwd_full_logits_s"] = bare_step_seconds(model, task, B, answer_only=False)
    r["masked_step_batch_s"] = step_seconds(model, task, batch_size=B, corruption="batch")["median_s"]
    r["overhead_batch_vs_one_pass"] = r["masked_step_batch_s"] / r["bare_fwd_bwd_s"]
    r["answer_only_speedup"] = r["bare_fwd_bwd_full_logits_s"] / r["bare_fwd_bwd_s"]
    # half the blocks certainly off: cut-off on vs off
    half = {skip: _half_dead_step(model, task, B, skip) for skip in (False, True)}
    r["half_dead_step_no_cutoff_s"], r["half_dead_step_cutoff_s"] = half[False], half[True]
    r["dead_cutoff_speedup"] = half[False] / half[True]
    r["precompute_no_grad_s"] = precompute_seconds(model, task, torch.no_grad)
    r["precompute_inference_mode_s"] = precompute_seconds(model, task, torch.inference_mode)
    threads = torch.get_num_threads()
    if device == "cpu" and threads > 1:
        torch.set_num_threads(1)
        r["masked_step_cache_1_thread_s"] = step_seconds(model, task, batch_size=B, corruption="cache", steps=2)[
            "median_s"]
        torch.set_num_threads(threads)
        r["threads"] = threads
    return r


def interleaved_overhead(model, task, B: int, rounds: int = 5) -> dict:
    """The overhead ratio from ``rounds`` alternating measurements (bare, then masked, 2 timed steps each).

    Taking the two sides back to back and the median of the per-round ratios keeps a slow spell of a
    shared machine from landing on one side only.
    """
    import statistics

    bare, masked = [], []
    for _ in range(rounds):
        bare.append(bare_step_seconds(model, task, B, warmup=1, steps=2))
        masked.append(step_seconds(model, task, batch_size=B, corruption="cache", warmup=1, steps=2)["median_s"])
    ratios = [m / b for m, b in zip(masked, bare)]
    return {"bare_fwd_bwd_s": statistics.median(bare), "masked_step_cache_s": statistics.median(masked),
            "overhead_cache": statistics.median(ratios), "overhead_cache_rounds": ratios,
            "overhead_cache_range": [min(ratios), max(ratios)]}


def _half_dead_step(model, task, B, skip: bool) -> float:
    """Median step time with the attention and MLP blocks of every other layer certainly pruned."""
    import statistics

    import mgnp_lens as mg
    from mgnp_lens.gates import HardConcreteGates

    orig = HardConcreteGates.__init__

    def init(self, *a, **k):
        orig(self, *a, **k)
        import torch

        with torch.no_grad():
            for g in ("attn_block", "mlp_block"):
                if g in self.log_alpha:
                    self.log_alpha[g][::2] = -50.0

    HardConcreteGates.__init__ = init
    try:
        r = mg.discover(model, task, steps=4, batch_size=B, lr=1e-6, progress=False, eval_split=None,
                        skip_dead_sites=skip, autocast="float32")
    finally:
        HardConcreteGates.__init__ = orig
    return statistics.median(r.history["seconds"].tolist()[1:])


def main() -> None:
    ap = parser(__doc__, "hook_overhead", device=True)
    ap.add_argument("--models", default="gpt2-small,default")
    args = ap.parse_args()
    rows = [measure(m, args.device) for m in args.models.split(",")]
    print_table(rows, ["model", "batch", "seq", "bare_fwd_bwd_s", "masked_step_cache_s", "overhead_cache",
                       "masked_step_batch_s", "answer_only_speedup", "dead_cutoff_speedup"])
    print_table(rows, ["model", "precompute_no_grad_s", "precompute_inference_mode_s", "masked_step_cache_1_thread_s"])
    write("hook_overhead", {"target": "masked step <= 1.2x bare forward+backward", "results": rows}, args.out, args.tag)


if __name__ == "__main__":
    main()
