"""The science commands: ``rampctl train`` and ``rampctl eval`` (local runs, no service).

torch and the workers' science are imported inside the commands, so ``rampctl --help`` and the
service commands stay light. Bad input (an invalid spec, an unknown name, a missing checkpoint,
a bad ``.npz``) prints one ``error:`` line and exits non-zero (2 for invalid arguments, 1 for
failures while running), never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from rampctl.console import USAGE_ERROR, RichProgress, console, eval_progress, fail, print_results_table
from rampctl.options import parse_pairs
from workers.contract.catalog import DEFAULT_SUITE
from workers.contract.registry import UnknownNameError
from workers.contract.spec import EvalSpec, ResolvedSpec, TrainSpec

SUITE_HELP = ("standard (AutoAttack's APGD-CE + APGD-T, the default) | standard+ (then FAB-T and Square: "
              "full AutoAttack's composition) | monitor (an upper bound) | autoattack (pyautoattack) | "
              "unseen (JPEG, fog, snow, Gabor, elastic adversaries and their union, and the corruptions)")
CHECKS_HELP = ("points of the rigour checks' curves; 10x iterations and Square on up to 50 robust points "
               "(0: none)")
PRECISION_HELP = "auto | fp32 | bf16 (bf16: a bfloat16 screen first; float32 decides every robust verdict)"
TRAIN_PRECISION_HELP = ("training attacks: auto | fp32 | bf16 | fp16 (a reduced-precision copy of the model "
                        "for the inner maximisation; the update stays float32; default fp32)")


def format_validation_error(error: ValidationError) -> str:
    """One line per problem: ``field: message`` (pydantic's own text, without its URL noise)."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "spec"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "; ".join(lines)


@contextmanager
def clean_errors(*expected: type[BaseException]) -> Iterator[None]:
    """Turn the errors a user can cause into a one-line message and an exit code."""
    try:
        yield
    except ValidationError as e:
        fail(f"invalid input: {format_validation_error(e)}", USAGE_ERROR)
    except (UnknownNameError, FileNotFoundError, ValueError, *expected) as e:
        fail(str(e) or type(e).__name__)


def train(
    out: Annotated[Path, typer.Option("--out", help="output directory (checkpoint, metrics, history)")],
    method: Annotated[str, typer.Option(help="training method (catalog name)")] = "ramp",
    dataset: Annotated[str, typer.Option(help="dataset (catalog name)")] = "mnist-5k",
    model: Annotated[str | None, typer.Option(help="model (default: the dataset's)")] = None,
    epochs: Annotated[int | None, typer.Option(help="epochs (default: the dataset's)")] = None,
    max_steps: Annotated[int | None, typer.Option(help="cap on optimiser steps")] = None,
    batch_size: Annotated[int | None, typer.Option(help="batch size")] = None,
    lr: Annotated[float | None, typer.Option(help="peak learning rate")] = None,
    schedule: Annotated[str | None, typer.Option(help="LR schedule")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="weight decay")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd (default) | adam")] = None,
    eps_warmup: Annotated[float | None, typer.Option(help="share of the steps over which the training radii "
                                                         "grow from 0 (default 0)")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    train_n: Annotated[int | None, typer.Option(help="use only the first N training points")] = None,
    eval_n: Annotated[int | None, typer.Option(help="test points of the final evaluation (0: none)")] = None,
    checks_n: Annotated[int | None, typer.Option(help=CHECKS_HELP)] = None,
    precision: Annotated[str | None, typer.Option(help=PRECISION_HELP)] = None,
    monitor_n: Annotated[int | None, typer.Option(help="held-out points checked per epoch (0: none)")] = None,
    train_precision: Annotated[str | None, typer.Option(help=TRAIN_PRECISION_HELP)] = None,
    channels_last: Annotated[bool, typer.Option("--channels-last",
                                                help="train in channels-last layout")] = False,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model for training "
                                                            "(eager when compilation fails)")] = False,
    init_from: Annotated[Path | None, typer.Option(help="checkpoint to fine-tune from")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="method parameter KEY=VALUE")] = None,
    eps: Annotated[list[str] | None, typer.Option("--eps", help="radius NORM=VALUE")] = None,
    pair_model: Annotated[list[str] | None, typer.Option(
        "--pair-model", help="ramp.pair=auto: a single-norm AT checkpoint NORM=DIR (repeat; the others are "
                             "trained)")] = None,
    data_root: Annotated[Path | None, typer.Option(help="dataset directory")] = None,
    device: Annotated[str | None, typer.Option(help="torch device (default: cuda when present)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the checkpoint in --out")] = False,
) -> None:
    """Train (or fine-tune with --init-from) a model and evaluate it."""
    fields: dict[str, Any] = {
        "method": method, "dataset": dataset, "model": model, "epochs": epochs, "max_steps": max_steps,
        "batch_size": batch_size, "lr": lr, "schedule": schedule, "weight_decay": weight_decay,
        "optimizer": optimizer, "eps_warmup": eps_warmup,
        "seed": seed, "train_n": train_n, "eval_n": eval_n, "checks_n": checks_n, "precision": precision,
        "monitor_n": monitor_n, "train_precision": train_precision, "channels_last": channels_last,
        "compile": compile_,
        "init_from": str(init_from) if init_from else None,
        "data_root": str(data_root) if data_root else None,
        "pair_models": parse_pairs(pair_model or [], "--pair-model"),
        "params": parse_pairs(set_ or [], "--set"),
        "epsilons": parse_pairs(eps or [], "--eps", float),
    }
    with clean_errors():
        spec = TrainSpec(**{k: v for k, v in fields.items() if v is not None}).resolve()

    from workers.checkpoint import CheckpointError
    from workers.training import pair_selection
    from workers.training.loop import run_training

    def quiet(sub: ResolvedSpec, sub_out: Path, sub_resume: bool) -> dict[str, Any]:
        console.print(f"pair selection: training {sub.method} into {sub_out}", highlight=False)
        return run_training(sub, sub_out, resume=sub_resume, device=device)

    progress = RichProgress()
    with clean_errors(CheckpointError):
        spec, report = pair_selection.prepare(spec, out, train=quiet)
        if report is not None:
            console.print(f"pair selection: (q, r) = ({report['q']}, {report['r']}) from the cross-norm "
                          f"matrix {json.dumps(report['matrix'])}", highlight=False)
        try:
            metrics = run_training(spec, out, callbacks=[progress], resume=resume, device=device)
        finally:
            progress.stop()
        metrics = pair_selection.record(out, metrics, report)
    print_results_table([{"name": out.name, **metrics}], title=f"{spec.method} on {spec.dataset}")
    console.print(f"wrote {out}", highlight=False)


def eval_(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="checkpoint (or training output) dir")],
    out: Annotated[Path, typer.Option("--out", help="output directory for metrics.json")],
    suite: Annotated[str, typer.Option(help=SUITE_HELP)] = DEFAULT_SUITE,
    n: Annotated[int, typer.Option(help="number of test points")] = 1000,
    checks_n: Annotated[int, typer.Option(help=CHECKS_HELP)] = 100,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    attacks: Annotated[str | None, typer.Option(help="custom suite: comma-separated attacks")] = None,
    eps: Annotated[list[str] | None, typer.Option("--eps", help="radius NORM=VALUE")] = None,
    data_file: Annotated[Path | None, typer.Option(help=".npz with x (N,C,H,W) in [0,1] and y")] = None,
    corruptions: Annotated[bool, typer.Option("--corruptions", help="also corruption accuracy")] = False,
    batch_size: Annotated[int, typer.Option(help="evaluation batch size")] = 256,
    seed: Annotated[int, typer.Option(help="random seed of the attacks")] = 0,
    data_root: Annotated[Path | None, typer.Option(help="dataset directory")] = None,
    device: Annotated[str | None, typer.Option(help="torch device (default: cuda when present)")] = None,
) -> None:
    """Evaluate a checkpoint: clean, per-norm and union robust accuracy."""
    chosen: str | list[str] = suite
    if attacks is not None:
        chosen = [a.strip() for a in attacks.split(",") if a.strip()]
    with clean_errors():
        spec = EvalSpec(
            checkpoint=str(checkpoint), suite=chosen, n=n, epsilons=parse_pairs(eps or [], "--eps", float),
            data_file=str(data_file) if data_file else None, batch_size=batch_size, seed=seed,
            corruptions=corruptions, checks_n=checks_n, precision=precision,
        )

    from workers.checkpoint import CheckpointError
    from workers.training.evaluation import run_evaluation

    with clean_errors(CheckpointError), eval_progress() as advance:
        metrics = run_evaluation(spec, out, device=device, data_root=data_root, progress=advance)
    print_results_table([{"name": checkpoint.name, **metrics}], title="evaluation")
    console.print(f"wrote {out / 'metrics.json'}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("eval")(eval_)
