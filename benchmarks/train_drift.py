"""How far do correct backends drift from float64 in training, next to the float32 PyTorch run?
(A measurement, not a test: it trains a few dozen runs.) It sets `dcnbench train`'s BOUND_FACTOR.

    .venv/bin/python benchmarks/train_drift.py [--seeds 0 1 2] [--dcn v1 v2] [--steps 30] [--backend B ...] [--impl SPEC ...]

For each seed, variant and backend it trains the net (dcnbench/train/) and prints the backend's
largest ratio, over the steps, of its drift from the float64 reference to the bound with factor 1
(the float32 yardstick's running drift, floored at one float32 epsilon): the loss and the weights
separately. A correct backend's ratio is what BOUND_FACTOR must exceed; a planted bug's shows the
margin. Backends that cannot train a variant (MXNet's DCNv2 backward is GPU-only) are skipped.
"""

from __future__ import annotations

import argparse

import torch

from dcnbench import backends as registry
from dcnbench.plugins import load_plugins
from dcnbench.status import Status
from dcnbench.train import parity


def ratios(result: parity.TrainResult) -> tuple[float, float]:
    """The largest loss and weights drift over the factor-1 bound."""
    f = parity.BOUND_FACTOR
    loss = max(d / (b / f) for d, b in zip(result.loss_diff, result.loss_bound))
    weights = max(d / (b / f) for d, b in zip(result.weight_diff, result.weight_bound))
    return loss, weights


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dcn", nargs="+", default=["v1", "v2"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--backend", nargs="+", default=["ext", "torchvision", "mxnet", "paddle"])
    parser.add_argument("--impl", nargs="*", default=[])
    args = parser.parse_args()
    torch.set_num_threads(1)
    plugins = load_plugins(args.impl, isolate=True)
    chosen, _ = registry.select(args.backend, plugins, kinds=("deformable",))
    print(f"{'seed':>4} {'dcn':>3} {'backend':<40} {'status':<11} {'loss ratio':>10} {'weights ratio':>13}  first step")
    worst = {}
    for seed in args.seeds:
        for dcn in args.dcn:
            settings = parity.TrainSettings(dcn=dcn, steps=args.steps, seed=seed)
            for r in parity.run_parity(backends=chosen, settings=settings):
                if r.role != "backend" or r.status == Status.UNSUPPORTED:
                    continue
                loss, weights = ratios(r)
                worst[r.backend] = max(worst.get(r.backend, 0.0), loss, weights)
                print(f"{seed:>4} {dcn:>3} {r.backend:<40} {r.status:<11} {loss:>10.2f} {weights:>13.2f}  "
                      f"{r.first_failing_step or '-'}", flush=True)
    print("largest ratio per backend:", ", ".join(f"{b} {v:.2f}" for b, v in worst.items()))


if __name__ == "__main__":
    main()
