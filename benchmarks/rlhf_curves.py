"""The reward curve of a pipeline's PPO stage (and DPO's reward accuracy), from its TensorBoard logs, as a PNG.

    python benchmarks/rlhf_curves.py runs/rlhf-smollm2 docs/rlhf_reward_curve.png

Reads `<root>/<stage>/events.out.tfevents.*` of each `ppo` and `dpo` stage in `<root>/results.json`: PPO's
`env/reward_mean` (the reward model's score of each rollout) and `objective/kl`; DPO's `rewards/accuracies` and
`rewards/margins`. Prints the curves' first and last values.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

CURVES = {"ppo": ("env/reward_mean", "objective/kl"), "dpo": ("rewards/accuracies", "rewards/margins")}


def scalars(run: Path, tag: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one scalar tag in a run directory's TensorBoard logs."""
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return [], []
    points = events.Scalars(tag)
    return [p.step for p in points], [p.value for p in points]


def main(root: str, out: str) -> None:
    """Draw one panel per (stage, tag) of the pipeline's PPO and DPO stages."""
    records = json.loads((Path(root) / "results.json").read_text())
    panels = [(r["name"], tag) for r in records if r["kind"] in CURVES for tag in CURVES[r["kind"]]]
    if not panels:
        raise SystemExit(f"{root}/results.json has no ppo or dpo stage")
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for axis, (stage, tag) in zip(axes[0], panels, strict=True):
        steps, values = scalars(Path(root) / stage, tag)
        axis.plot(steps, values, marker=".", linewidth=1)
        axis.set_title(f"{stage}: {tag}", fontsize=9)
        axis.set_xlabel("optimizer step")
        axis.grid(alpha=0.3)
        if values:
            print(f"{stage} {tag}: {values[0]:.4f} (step {steps[0]}) -> {values[-1]:.4f} (step {steps[-1]}), "
                  f"{len(values)} points")  # fmt: skip
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
