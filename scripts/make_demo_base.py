"""Train the demo's starting model: an l_inf-AT ``small-cnn`` on the embedded mnist-5k.

    .venv/bin/python scripts/make_demo_base.py                 # writes demo/base-linf-at/ (~3.3 MB)
    .venv/bin/python scripts/make_demo_base.py --out /tmp/base # elsewhere

``scripts/demo.sh`` fine-tunes this model through the service (the RAMP paper's Figure 1: l_1-only
fine-tuning of an l_inf-robust model destroys its l_inf robustness, RAMP keeps it). Shipping it
keeps the demo short (no base training); this script is how it was made, from the repository's own data
and recipe, so anyone can rebuild it and check it.

The recipe is the catalog's MNIST one for AT-l_inf (SGD momentum 0.9, LR 0.05 piecewise, weight
decay 5e-4, batch 128, 10-step APGD at eps_inf 0.3) with the training radius grown linearly over the
first 30 % of the steps: ``docs/results-mnist.md`` found plain AT-l_inf at eps 0.3 stuck near chance
for hundreds of steps on 4,000 digits without that curriculum. One torch thread, seed 0, so a rerun
on the same torch build gives the same weights. Only the weights and ``meta.json`` are kept (no
optimiser state: nobody resumes it), with the recipe (the resolved spec) in the metadata.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "demo" / "base-linf-at"
EPOCHS = 6
EPS_WARMUP = 0.3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint directory to write")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    import torch

    from workers import checkpoint
    from workers.contract.spec import TrainSpec
    from workers.training.loop import run_training

    torch.set_num_threads(args.threads)
    spec = TrainSpec(method="at-linf", dataset="mnist-5k", model="small-cnn", epochs=args.epochs,
                     eps_warmup=EPS_WARMUP, seed=args.seed, monitor_n=200, eval_n=0, checks_n=0)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="demo-base-") as tmp:
        run_training(spec.resolve(), tmp)
        source = checkpoint.resolve_dir(tmp)
        if args.out.exists():
            shutil.rmtree(args.out)
        args.out.mkdir(parents=True)
        shutil.copy2(source / checkpoint.WEIGHTS_FILE, args.out / checkpoint.WEIGHTS_FILE)
        meta = json.loads((source / checkpoint.META_FILE).read_text())
        # The run's final "metrics" name its temporary directory and hold no evaluation (eval_n = 0):
        # the demo evaluates this model itself, with the default suite, on the points it compares.
        meta["metrics"] = {}
        meta["made_by"] = f"scripts/make_demo_base.py --epochs {args.epochs} --seed {args.seed}"
        (args.out / checkpoint.META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    checkpoint.load(args.out)  # it must rebuild, or the demo would fail later
    size = sum(p.stat().st_size for p in args.out.iterdir()) / 1e6
    print(f"wrote {args.out} ({size:.1f} MB) in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
