"""No compute on padding: length-bucketed batches (what mgnp-lens does) vs right-padded batches.

    python benchmarks/padding.py [--rounds 3] [--steps 8] [--device cpu] [--out results.json]

The IOI default (all 30 templates, 200 training pairs) tokenizes to 7 lengths (14-20 tokens on
SmolLM2). mgnp-lens groups pairs by length and draws each step's batch from one bucket, so no
position is padding. The "before" side is the usual alternative: every pair right-padded to the
longest prompt, batches of 32 drawn from all of them, the answer read at each pair's own last real
position. With causal attention right-padding is exact at the answer position (the script checks
the full model's answer logits of both layouts against each other), so the two layouts train the
same objective and differ only in the compute spent on pad positions.

Buckets smaller than the batch size give some bucketed steps fewer pairs, so the comparison is per
training pair: the summed step time over the summed pairs of the timed steps (fixed per-step costs
count against the smaller bucketed steps). Both sides run the default training step (cache mode,
bfloat16 autocast where the CPU has it, eager blocks), alternating by round.
"""

from __future__ import annotations

import statistics

from harness import ab_speedup, parser, print_table, write


def right_padded(pairs, pad_id: int):
    """One bucket holding every pair of ``pairs`` right-padded to the longest (answer positions kept)."""
    import torch
    from mgnp_lens.tasks import PairBatch, PairSet

    length = max(b.clean.shape[1] for b in pairs.buckets)

    def pad(t):
        return torch.nn.functional.pad(t, (0, length - t.shape[1]), value=pad_id)

    bs = pairs.buckets
    meta = {k: torch.cat([b.meta[k] for b in bs]) for k in bs[0].meta}
    return PairSet([PairBatch(torch.cat([pad(b.clean) for b in bs]), torch.cat([pad(b.corrupted) for b in bs]),
                              torch.cat([b.correct for b in bs]), torch.cat([b.incorrect for b in bs]),
                              torch.cat([b.answer_pos for b in bs]), meta)])


def max_answer_logit_diff(model, bucketed, padded) -> float:
    """Largest |difference| of the full model's float32 answer logits between the two layouts."""
    import torch
    from mgnp_lens.hooks import logits_at

    device = next(model.parameters()).device
    with torch.inference_mode():
        a = torch.cat([logits_at(model, b.clean.to(device), b.answer_pos, len(b)) for b in bucketed.buckets])
        p = padded.buckets[0]
        rows = [logits_at(model, p.clean[i:i + 32].to(device), p.answer_pos[i:i + 32], len(p.clean[i:i + 32]))
                for i in range(0, len(p), 32)]
        return float((a - torch.cat(rows)).abs().max())


def timed_run(model, task, steps: int, seed: int) -> dict:
    """``steps`` timed training steps (after one warm-up step): seconds, pairs and tokens of each."""
    import mgnp_lens as mg

    train = task.split("train")
    drawn = []
    sample = train.sample

    def recording(batch_size, generator=None):
        b = sample(batch_size, generator=generator)
        drawn.append((len(b), b.clean.shape[1]))
        return b

    train.sample = recording
    try:
        r = mg.discover(model, task, steps=steps + 1, seed=seed, compile=False, eval_split=None, progress=False)
    finally:
        del train.sample  # back to the class's method
    secs = r.history["seconds"].tolist()[1:]
    pairs = [n for n, _ in drawn[1:]]
    tokens = [n * length for n, length in drawn[1:]]
    return {"seconds": secs, "pairs": pairs, "tokens": tokens}


def main() -> None:
    ap = parser(__doc__, "padding", device=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    import mgnp_lens as mg

    model = mg.load_model(device=args.device)
    task = mg.tasks.IOI(model, n_validation=1, n_test=1)
    train = task.split("train")
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    padded_task = mg.PromptPairTask({"train": right_padded(train, pad_id)}, name="ioi-right-padded")
    layouts = {"bucketed": task, "right-padded": padded_task}
    runs = {name: [] for name in layouts}
    for r in range(args.rounds):
        for name, t in layouts.items():
            runs[name].append(timed_run(model, t, args.steps, seed=r))
    rows = []
    for name, rs in runs.items():
        secs = [s for run in rs for s in run["seconds"]]
        pairs = [n for run in rs for n in run["pairs"]]
        tokens = [n for run in rs for n in run["tokens"]]
        rows.append({"layout": name, "median_step_s": statistics.median(secs),
                     "pairs_per_step": sum(pairs) / len(pairs), "tokens_per_step": sum(tokens) / len(tokens),
                     "ms_per_pair": 1000 * sum(secs) / sum(pairs),
                     # per round, so that the speed-up below is a median of like-for-like ratios
                     "ms_per_pair_rounds": [1000 * sum(run["seconds"]) / sum(run["pairs"]) for run in rs]})
    by = {row["layout"]: row for row in rows}
    before, after = by["right-padded"]["ms_per_pair_rounds"], by["bucketed"]["ms_per_pair_rounds"]
    ratios = [b / a for b, a in zip(before, after)]
    speedup = ab_speedup(before, after)
    summary = {"speedup_per_pair": speedup["median"], "speedup_per_pair_best_rounds": speedup["best_rounds"],
               "speedup_per_pair_rounds": ratios,
               "token_ratio": (by["right-padded"]["tokens_per_step"] / by["right-padded"]["pairs_per_step"])
               / (by["bucketed"]["tokens_per_step"] / by["bucketed"]["pairs_per_step"]),
               "max_answer_logit_diff": max_answer_logit_diff(model, train, padded_task.split("train")),
               "bucket_lengths": {int(b.clean.shape[1]): len(b) for b in train.buckets}}
    print_table(rows, ["layout", "median_step_s", "pairs_per_step", "tokens_per_step", "ms_per_pair"])
    print(f"bucketed is {summary['speedup_per_pair']:.2f}x faster per training pair (rounds "
          f"{', '.join(f'{x:.2f}' for x in ratios)}); padding adds {summary['token_ratio']:.2f}x the tokens per pair; "
          f"answer logits of the two layouts differ by at most {summary['max_answer_logit_diff']:.2e}")
    write("padding", {"model": "default (SmolLM2-135M)", "task": "IOI, all 30 templates, 200 training pairs",
                      "rounds": args.rounds, "steps_per_round": args.steps, "results": rows, **summary}, args.out, args.tag)


if __name__ == "__main__":
    main()
