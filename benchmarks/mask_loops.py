"""Broadcast gate application (what mgnp-lens does) vs Python loops over heads and over neurons.

    python benchmarks/mask_loops.py [--models default,gpt2-small] [--steps 2] [--rounds 3] [--device cpu]
                                    [--out results.json]

At every gated hook point mgnp-lens mixes ``corrupted + M·(clean − corrupted)`` with one broadcast
op over the whole activation (``M`` per example and unit, broadcast over positions). The "before"
sides patch that one function (``mgnp_lens.hooks._mix``) with the loops a hand-written version
would use: ``heads`` loops over the heads of ``hook_z`` (each head's ``d_head`` dimensions still
broadcast; MLP sites as before), ``units`` loops over every gated unit (each attention neuron,
MLP hidden neuron and MLP output neuron its own slice and op). Everything else is the default
training step (cache mode, per-example gate samples, eager blocks) in float32, like ``hook_overhead.py``.
Broadcast and per-head loops alternate over ``--rounds`` rounds (median of the per-round ratios); the
per-unit loops take tens of seconds a step and are timed once, in the first round. The first step's
KL of each side is recorded: the loops compute the same thing.
Models: ``default`` (SmolLM2-135M, IOI on one template, 32 × 14 tokens) and ``gpt2-small`` (GPT-2
small's shape, random weights, 32 × 32 random tokens).
"""

from __future__ import annotations


from harness import ab_speedup, parser, print_table, step_seconds, write
from hook_overhead import setup


def looped_mix(unit: str):
    """A drop-in for ``hooks._mix`` (cache mode) that loops in Python over heads or over every unit."""
    import torch

    def mix_slice(clean, corrupted, m):
        return corrupted + m * (clean - corrupted)

    def mix(act, mode, m, corrupted, dead=False):
        if mode != "cache":
            raise ValueError("the looped mixes are written for cache mode")
        m = m.to(act.dtype)
        corrupted = corrupted.to(act.dtype)
        if dead:
            return corrupted
        if act.dim() == 4:  # hook_z [B, pos, H, d_head], m [B, 1, H, d_head]
            heads = []
            for h in range(act.shape[2]):
                c, x, mh = act[:, :, h], corrupted[:, :, h], m[..., h, :]
                if unit == "heads":
                    heads.append(mix_slice(c, x, mh))
                else:
                    heads.append(torch.stack([mix_slice(c[..., d], x[..., d], mh[..., d])
                                              for d in range(act.shape[3])], dim=-1))
            return torch.stack(heads, dim=2)
        if unit == "heads" or m.shape[-1] == 1:  # MLP sites under "heads", and the one embedding gate
            return mix_slice(act, corrupted, m)
        return torch.stack([mix_slice(act[..., i], corrupted[..., i], m[..., i]) for i in range(act.shape[-1])],
                           dim=-1)

    return mix


def measure(name: str, device: str, steps: int, rounds: int) -> dict:
    import statistics

    from mgnp_lens import hooks

    model, task = setup(name, device)
    B = 32
    row = {"model": name, "batch": B, "seq": int(task.split("train").buckets[0].clean.shape[1])}
    broadcast = hooks._mix
    times: dict[str, list[float]] = {"broadcast": [], "heads": [], "units": []}
    for r in range(rounds):  # alternating, so a slow spell of the machine does not land on one side only
        for side in times:
            if side == "units" and r:  # tens of seconds a step: timed in the first round only
                continue
            hooks._mix = broadcast if side == "broadcast" else looped_mix(side)
            try:
                t = step_seconds(model, task, warmup=1, steps=1 if side == "units" else steps, batch_size=B,
                                 corruption="cache", compile=False, seed=0)
            finally:
                hooks._mix = broadcast
            times[side].append(t["median_s"])
            row[f"{side}_first_kl"] = t["first_kl"]
    for side, ts in times.items():
        row[f"{side}_step_s"] = statistics.median(ts)
        row[f"{side}_step_s_rounds"] = ts
    heads = ab_speedup(times["heads"], times["broadcast"])  # "speed-up" of broadcast over the loops
    row["heads_loop_slowdown"], row["heads_loop_slowdown_best_rounds"] = heads["median"], heads["best_rounds"]
    row["units_loop_slowdown"] = times["units"][0] / times["broadcast"][0]
    for side in ("heads", "units"):
        row[f"{side}_kl_abs_diff"] = abs(row[f"{side}_first_kl"] - row["broadcast_first_kl"])
    return row


def main() -> None:
    ap = parser(__doc__, "mask_loops", device=True)
    ap.add_argument("--models", default="default,gpt2-small")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rows = [measure(m, args.device, args.steps, args.rounds) for m in args.models.split(",")]
    print_table(rows, ["model", "batch", "seq", "broadcast_step_s", "heads_step_s", "units_step_s",
                       "heads_loop_slowdown", "units_loop_slowdown"])
    print_table(rows, ["model", "broadcast_first_kl", "heads_kl_abs_diff", "units_kl_abs_diff"])
    write("mask_loops", {"precision": "float32", "corruption": "cache", "results": rows}, args.out, args.tag)


if __name__ == "__main__":
    main()
