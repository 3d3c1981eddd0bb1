"""The Ray job entry point of a service job: ``python -m workers.jobs.driver --job-id ID``.

The dispatcher starts it with RAMP_SERVICE_URL, RAMP_JOB_TOKEN_FILE (a 0600 file holding the token
of this job's attempt: never the token itself, which Ray's Jobs API would show to anyone), RAMP_JOB_ATTEMPT
and RAMP_STORAGE_DIR in its environment (RAMP_JOB_TOKEN works too, for runs outside the service's
dispatcher). The driver

1. fetches its spec from ``GET /internal/jobs/{id}/spec`` (resolved spec, attempt, resume hint),
   stating its attempt on every call; it does not run when that attempt was superseded or the job
   already ended (a Ray job started late, after its cancel or retry),
2. reports ``running``, runs the job kind's step (train / finetune through
   ``workers.training.loop.run_training``, eval through ``run_evaluation``) while a callback
   streams progress, per-epoch metrics, log lines and artifacts as numbered events,
3. writes ``<storage>/jobs/<id>/result.json``, delivers the remaining events, and posts the final
   status (``succeeded`` with the metrics, or ``failed`` with the error).

If the service is unreachable at the end, result.json and the event spool stay on disk and the
service's reconciliation picks them up. Training checks the job's attempt marker before each
checkpoint write (``workers.contract.attempts``), so a trainer outliving a superseded attempt
never overwrites the checkpoint the next attempt resumes from. SIGTERM (a cancel: Ray stops the
job) ends the run quickly after flushing what can be flushed in a second or two.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from workers.contract import outbox
from workers.contract.attempts import AttemptFence, AttemptSuperseded, read_token_file
from workers.contract.jobs import StoredJob
from workers.contract.layout import JobLayout
from workers.contract.paths import recheck_paths
from workers.contract.registry import Registry
from workers.contract.spec import EvalSpec, ResolvedSpec
from workers.jobs.reporter import (
    ENV_JOB_ATTEMPT,
    ENV_JOB_TOKEN,
    ENV_JOB_TOKEN_FILE,
    ENV_SERVICE_URL,
    ENV_STORAGE_DIR,
    Rejected,
    Reporter,
    ReportError,
    ServiceClient,
)
from workers.jobs.sweep_job import sweep_kind  # torch- and Ray-free at import
from workers.training.callbacks import Callback, EpochReport, TrainInfo

log = logging.getLogger("workers.jobs.driver")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 143
FINAL_FLUSH_S = 30.0  # how long the driver waits to deliver its last events before leaving them spooled
STOP_FLUSH_S = 1.5
RUNNING_REPORT_S = 10.0  # after SIGTERM, Ray sends SIGKILL ~3 s later


class JobStopped(BaseException):
    """SIGTERM arrived (the job was cancelled); a BaseException so no `except Exception` eats it."""


@dataclass
class JobContext:
    job_id: int
    attempt: int
    job: StoredJob  # the stored spec, typed once; its work is resolved
    out_dir: Path
    resume: bool  # the service's decision: an earlier attempt left a training state to continue
    reporter: Reporter
    fence: AttemptFence | None = None  # checked before every checkpoint write

    @property
    def kind(self) -> str:
        return self.job.kind

    @property
    def resources(self) -> dict[str, Any]:
        return self.job.resources.model_dump(mode="json")



def job_device(resources: dict[str, Any]) -> str:
    # Only a job that reserved a GPU may use one: Ray gives the node's other GPUs to other jobs.
    return "cuda" if resources.get("use_gpu") else "cpu"


# ------------------------------------------------------------------------------ the reporting bridge


class ReportingCallback(Callback):
    """Training hooks -> service events (progress throttled by the reporter)."""

    def __init__(self, reporter: Reporter, out_dir: Path) -> None:
        self.reporter = reporter
        self.out_dir = out_dir
        self._epochs = 0
        self._total_steps = 0

    def on_train_start(self, info: TrainInfo) -> None:
        self._epochs = info.epochs
        self._total_steps = info.total_steps
        what = "starting"
        if info.start_step:
            what = f"resuming at epoch {info.start_epoch} (step {info.start_step})"
        self.reporter.log(
            f"training {what}: {info.epochs} epochs x {info.steps_per_epoch} steps on {info.device}",
            epochs=info.epochs, total_steps=info.total_steps, device=info.device,
        )
        self.reporter.progress(info.start_step, info.total_steps, force=True, epoch=info.start_epoch,
                               epochs=info.epochs, phase="train")

    def on_step(self, step: int, total_steps: int) -> None:
        self.reporter.progress(step, total_steps, epochs=self._epochs, phase="train")

    def on_epoch_end(self, report: EpochReport) -> None:
        self.reporter.metrics(report.to_dict())
        self.reporter.progress(report.step, report.total_steps, force=True, epoch=report.epoch,
                               epochs=report.epochs, phase="train")
        parts = " ".join(f"{k}={v:.4g}" for k, v in report.losses.items())
        self.reporter.log(f"epoch {report.epoch}/{report.epochs}: {parts} ({report.seconds:.1f} s)")

    def on_checkpoint(self, path: str) -> None:
        self.reporter.artifact(_relative(Path(path), self.out_dir), kind="checkpoint")

    def on_eval_progress(self, done: int, total: int) -> None:
        self.reporter.progress(done, total, epochs=self._epochs, phase="eval")

    def on_train_end(self, metrics: dict[str, Any]) -> None:
        total = self._total_steps
        self.reporter.progress(total, total, force=True, epochs=self._epochs, phase="done")


class ReporterLogHandler(logging.Handler):
    """Forwards the science's log records (``workers.*``) as ``log`` events."""

    def __init__(self, reporter: Reporter, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("workers.jobs"):
            return  # our own records are reported explicitly (and the reporter must not feed itself)
        try:
            self.reporter.log(record.getMessage(), level=record.levelname.lower(), logger=record.name)
        except Exception:  # logging must never break the job
            self.handleError(record)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------- job kinds


def run_train_job(spec: ResolvedSpec, out_dir: Path, reporter: Reporter | None, resume: bool, *,
                  resources: dict[str, Any] | None = None,
                  fence: AttemptFence | None = None) -> dict[str, Any]:
    """Train ``spec`` into ``out_dir`` as a Ray Train run, reporting through ``reporter`` (None: a
    quiet run, e.g. the pair selection's single-norm models).

    The TorchTrainer workers (``workers.ray_entry.train``) take the job's ``resources``
    (workers, CPUs each, GPU); this driver only relays their per-epoch events. A stop (SIGTERM
    from Ray's job stop) ends the run at the workers' next optimiser step, keeping the last
    checkpoint, and surfaces here as ``JobStopped``. ``fence``: rank 0 checks it before each
    checkpoint write (a superseded attempt's run fails instead of writing).
    """
    from workers.ray_entry.train import TrainingCancelled
    from workers.ray_entry.train import run_train_job as run_on_ray_train

    try:
        callbacks = [] if reporter is None else [ReportingCallback(reporter, out_dir)]
        return run_on_ray_train(spec, out_dir, callbacks=callbacks, resume=resume,
                                resources=resources or None, fence=fence)
    except TrainingCancelled as e:
        raise JobStopped(str(e)) from e


def run_eval_job(
    spec: EvalSpec, out_dir: Path, reporter: Reporter, *, device: str | None = None
) -> dict[str, Any]:
    from workers.training.evaluation import run_evaluation

    def progress(done: int, total: int) -> None:
        reporter.progress(done, total, phase="eval")

    reporter.log(f"evaluating {spec.checkpoint} with suite {spec.suite} on {spec.n} points")
    return run_evaluation(spec, out_dir, device=device, progress=progress)


def _train_kind(ctx: JobContext) -> dict[str, Any]:
    from workers.training import pair_selection

    spec = ctx.job.work
    assert isinstance(spec, ResolvedSpec)
    # Looked up at call time so tests can substitute an in-process runner.
    runner = globals()["run_train_job"]

    def train_quietly(sub: ResolvedSpec, out_dir: Path, resume: bool) -> dict[str, Any]:
        ctx.reporter.log(f"pair selection: training {sub.method} in {out_dir.name}")
        return runner(sub, out_dir, None, resume, resources=ctx.resources, fence=ctx.fence)

    spec, report = pair_selection.prepare(spec, ctx.out_dir, train=train_quietly)
    if report is not None:
        ctx.reporter.log(f"pair selection: (q, r) = ({report['q']}, {report['r']})", pair_selection=report)
    if ctx.resume:
        ctx.reporter.log(f"attempt {ctx.attempt}: resuming from the checkpoint in {ctx.out_dir}")
    metrics = runner(spec, ctx.out_dir, ctx.reporter, ctx.resume, resources=ctx.resources, fence=ctx.fence)
    return pair_selection.record(ctx.out_dir, metrics, report)


def _eval_kind(ctx: JobContext) -> dict[str, Any]:
    spec = ctx.job.work
    assert isinstance(spec, EvalSpec)
    return run_eval_job(spec, ctx.out_dir, ctx.reporter, device=job_device(ctx.resources))


JOB_KINDS: Registry[Callable[[JobContext], dict[str, Any]]] = Registry("job kind")
JOB_KINDS.add("train", _train_kind)
JOB_KINDS.add("finetune", _train_kind)
JOB_KINDS.add("eval", _eval_kind)
JOB_KINDS.add("sweep", sweep_kind)


# ------------------------------------------------------------------------------------------ main


def _report_artifacts(reporter: Reporter, out_dir: Path) -> None:
    for path in sorted(p for p in out_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
        reporter.artifact(_relative(path, out_dir), size=path.stat().st_size)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise JobStopped(f"signal {signum}")


def _configure_threads(resources: dict[str, Any]) -> None:
    # The driver trains in-process: use the CPUs the job reserved, not every core of the node.
    cpus = max(1, int(float(resources.get("cpus_per_worker") or 1)))
    os.environ.setdefault("OMP_NUM_THREADS", str(cpus))
    import torch

    torch.set_num_threads(cpus)


# Job statuses in which a driver that just started has nothing to do: the job was cancelled or
# ended while its Ray job waited to start (a cancel under way is finished by Ray's stop).
NOT_TO_RUN = frozenset({"cancelling", "cancelled", "succeeded", "failed"})
CANCEL_STOP_WAIT_S = 120.0
"""How long a driver that starts on a job being cancelled waits for Ray's stop (the dispatcher
re-asks every 10 s). Leaving first races it: Ray's supervisor sees the driver exit 143 before its
stop and records the cancelled job FAILED instead of STOPPED (the dispatcher marks a job running on
Ray's RUNNING, which can come seconds before the driver has read its spec)."""


def await_stop(timeout_s: float) -> None:
    """Sleep until SIGTERM (``JobStopped``, raised by the handler ``main`` installs) or ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))


def run_job(client: ServiceClient, storage_dir: Path | None) -> int:
    """Fetch, run and report one job; returns the process exit code."""
    info = client.get_spec()
    job_id, attempt, kind = int(info["job_id"]), int(info["attempt"]), str(info["kind"])
    layout = JobLayout.at(storage_dir if storage_dir is not None else JobLayout.storage_of(info["job_dir"]))
    fence = AttemptFence(str(layout.attempt_marker(job_id)), attempt)
    if info.get("status") in NOT_TO_RUN:
        print(f"job {job_id} is {info['status']}: attempt {attempt} does not run", file=sys.stderr)
        if info["status"] == "cancelling":
            await_stop(CANCEL_STOP_WAIT_S)
        return EXIT_STOPPED
    try:
        fence.check()
    except AttemptSuperseded as e:  # before touching any of the job's files
        print(f"job {job_id}: {e}", file=sys.stderr)
        return EXIT_STOPPED
    out_dir = layout.job_dir(job_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (previous := outbox.read_result(out_dir)) is not None and previous.get("attempt") != attempt:
        outbox.clear_result(out_dir)
    reporter = Reporter(client, attempt=attempt, spool_dir=layout.spool_dir(job_id)).start()
    handler = ReporterLogHandler(reporter)
    logging.getLogger("workers").addHandler(handler)
    started = time.monotonic()
    try:
        try:
            client.post_status("running", timeout_s=RUNNING_REPORT_S)
        except Rejected as e:
            if e.refusal in ("stale_attempt", "job_ended"):
                print(f"job {job_id} attempt {attempt}: the service refused 'running' ({e}); stopping",
                      file=sys.stderr)
                reporter.close(STOP_FLUSH_S)
                return EXIT_STOPPED
            # A cancel under way (Ray's stop follows), or a re-queued attempt the dispatcher will
            # adopt: keep going.
            log.warning("could not report 'running': %s", e)
        except ReportError as e:
            # Not fatal: the dispatcher sees RUNNING in Ray too; a service outage must not cost the job.
            log.warning("could not report 'running': %s", e)
        ctx = JobContext(job_id=job_id, attempt=attempt, job=StoredJob.from_stored(info["spec"]),
                         out_dir=out_dir, resume=bool(info["resume"]), reporter=reporter, fence=fence)
        reporter.log(f"job {job_id} attempt {attempt}: {kind} on {os.uname().nodename}, pid {os.getpid()}")
        # Before anything is opened: the paths are still the ones checked at submission.
        recheck_paths(info["spec"], info.get("path_roots"))
        _configure_threads(ctx.resources)
        metrics = JOB_KINDS.get(kind)(ctx)
        _report_artifacts(reporter, out_dir)
        outbox.write_result(out_dir, attempt=attempt, status="succeeded", metrics=metrics)
        reporter.log(f"job {job_id} finished in {time.monotonic() - started:.1f} s")
        # Events first, then the verdict: a client following the events sees everything before the end.
        reporter.close(FINAL_FLUSH_S)
        _final_status(client, "succeeded", metrics=metrics)
        return EXIT_OK
    except JobStopped:
        reporter.log("stopped (SIGTERM): the job was cancelled", level="warning")
        reporter.close(STOP_FLUSH_S)
        return EXIT_STOPPED
    except AttemptSuperseded as e:  # raised in-process; a Ray Train run fails with it instead
        print(f"job {job_id}: {e}", file=sys.stderr)
        reporter.close(STOP_FLUSH_S)
        return EXIT_STOPPED
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        detail = "".join(traceback.format_exception(e)[-20:])
        print(detail, file=sys.stderr)
        outbox.write_result(out_dir, attempt=attempt, status="failed", error=error)
        reporter.log(error, level="error", traceback=detail[-8000:])
        reporter.close(FINAL_FLUSH_S)
        _final_status(client, "failed", error=error)
        return EXIT_FAILED
    finally:
        logging.getLogger("workers").removeHandler(handler)


def _final_status(client: ServiceClient, status: str, **kwargs: Any) -> None:
    try:
        client.post_status(status, **kwargs)
    except Rejected as e:
        # The job already has its verdict (recorded from result.json, or this very report whose
        # answer was lost), or this attempt was superseded: nothing to add.
        print(f"the service did not take '{status}' ({e})", file=sys.stderr)
    except ReportError as e:  # result.json holds the verdict; the service reconciles from it
        print(f"could not report '{status}' to the service ({e}); left in result.json", file=sys.stderr)


def _job_token() -> str | None:
    """The attempt's token: from the file the dispatcher wrote (RAMP_JOB_TOKEN_FILE), else RAMP_JOB_TOKEN."""
    if path := os.environ.get(ENV_JOB_TOKEN_FILE):
        try:
            return read_token_file(path)
        except OSError as e:
            print(f"cannot read the job token file {path}: {e}", file=sys.stderr)
            return None
    return os.environ.get(ENV_JOB_TOKEN) or None


def _job_attempt() -> int | None:
    try:
        return int(os.environ[ENV_JOB_ATTEMPT])
    except (KeyError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.jobs.driver", description=__doc__.split("\n")[0])
    parser.add_argument("--job-id", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per report would drown the job log
    token = _job_token()
    missing = [k for k, v in ((ENV_SERVICE_URL, os.environ.get(ENV_SERVICE_URL)),
                              (f"{ENV_JOB_TOKEN_FILE} (or {ENV_JOB_TOKEN})", token)) if not v]
    if missing:
        print(f"driver for job {args.job_id}: {', '.join(missing)} not set", file=sys.stderr)
        return EXIT_USAGE
    signal.signal(signal.SIGTERM, _on_sigterm)
    assert token is not None
    client = ServiceClient(os.environ[ENV_SERVICE_URL], args.job_id, token, attempt=_job_attempt())
    storage = os.environ.get(ENV_STORAGE_DIR)
    try:
        return run_job(client, Path(storage) if storage else None)
    except JobStopped:
        return EXIT_STOPPED
    except ReportError as e:  # could not even fetch the spec
        print(f"driver for job {args.job_id}: {e}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
