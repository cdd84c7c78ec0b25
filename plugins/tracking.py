"""Experiment tracking through the run-observer hooks: a TensorBoard writer and a CSV logger.

Chosen per run with ``--set run.track=tensorboard,csv`` (the run option ``track``; ``metareg
compare`` passes it to each of its runs) or, where that is empty, ``METAREG_TRACK=tensorboard,csv``.
Tracking is not part of a comparison's run key: a finished run is reused as it is.  Each writes into the run folder, next to
``metrics.jsonl``, on the steps that file gets a line (every ``log_every`` steps, the last step,
and steps with a periodic evaluation):

* ``tensorboard``: event files in ``RUN/tensorboard/`` (``tensorboard --logdir RUN`` or the
  comparison's folder opens them): ``train/<name>`` and ``val/<name>`` scalars against the step,
  the final scores and costs as ``summary/<name>`` at the last step, the resolved configuration as
  text.  Needs the ``tensorboard`` package (``pip install metareg[tensorboard]``), imported only
  when a run asks for it.
* ``csv``: ``RUN/track.csv`` in long form, one ``step,name,value`` row per scalar (the metrics
  that appear differ between steps, so a wide table would need its columns known in advance),
  the summary's numbers as ``summary/<name>`` rows at the last step.

A run without an output folder (``--no-save``) tracks nothing and says so once in the log.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os

import metareg

log = logging.getLogger("metareg.tracking")

TRACKERS = ("tensorboard", "csv")
ENV = "METAREG_TRACK"


def selected(run) -> tuple[str, ...]:
    """The trackers of this plugin a run asked for: the run option ``track``, or ``$METAREG_TRACK``
    where that is empty.  A name no tracker here knows is said once (another plugin may add it:
    the option is shared), never silently dropped."""
    raw = getattr(run.config, "track", None)
    if not raw:
        raw = os.environ.get(ENV, "")
    names = [raw] if isinstance(raw, str) else list(raw)
    out: list[str] = []
    for item in names:
        for n in str(item).split(","):
            n = n.strip().lower()
            if n and n not in ("none", "off") and n not in out:
                out.append(n)
    unknown = [n for n in out if n not in TRACKERS]
    if unknown:
        log.warning("track: %s is not a built-in tracker (%s); unless a plugin provides it, nothing records it",
                    ", ".join(map(repr, unknown)), ", ".join(TRACKERS))
    return tuple(n for n in out if n in TRACKERS)


def _scalars(metrics):
    """(name, float) pairs of the plain numbers in ``metrics``; 1-D lists of numbers (per-task
    combiner state) as ``name/i``; nested lists (the [T, T] gradient cosine) are left out."""
    for k, v in metrics.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            yield k, float(v)
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            for i, x in enumerate(v):
                yield f"{k}/{i}", float(x)


class _TensorBoard:
    def __init__(self, folder):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise metareg.errors.ConfigError(
                "run.track=tensorboard needs the tensorboard package: pip install 'metareg[tensorboard]' "
                "(or pip install tensorboard).") from None
        self.writer = SummaryWriter(log_dir=str(folder / "tensorboard"))

    def config(self, cfg):
        self.writer.add_text("config", "```\n" + json.dumps(cfg, indent=2, default=str) + "\n```", 0)

    def log(self, step, prefix, pairs):
        for k, v in pairs:
            if math.isfinite(v):
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def close(self):
        self.writer.flush()
        self.writer.close()


class _CSV:
    def __init__(self, folder):
        # never through a symlink planted in the run folder (as metareg's own files)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        self.fh = os.fdopen(os.open(folder / "track.csv", flags, 0o644), "a", newline="")
        self.w = csv.writer(self.fh)
        if self.fh.tell() == 0:
            self.w.writerow(("step", "name", "value"))

    def config(self, cfg):
        pass

    def log(self, step, prefix, pairs):
        self.w.writerows((step, f"{prefix}/{k}", repr(v)) for k, v in pairs)
        self.fh.flush()  # a line per logged step: the file is readable while the run trains

    def close(self):
        self.fh.close()


_open: dict[int, list] = {}


@metareg.hookimpl
def on_run_start(run):
    names = selected(run)
    if not names:
        return
    if run.out is None:
        log.info("run.track=%s: this run saves nothing (--no-save), so nothing is tracked", ",".join(names))
        return
    writers = [(_TensorBoard if n == "tensorboard" else _CSV)(run.out) for n in names]
    try:
        cfg = run.resolved_config()
    except Exception:  # noqa: BLE001 - the configuration is a nicety, never a reason to fail a run
        cfg = {}
    for w in writers:
        w.config(cfg)
    _open[id(run)] = writers


@metareg.hookimpl
def on_step_end(run, step, metrics):
    writers = _open.get(id(run))
    if not writers:
        return
    every = getattr(run.config, "log_every", 1) or 1
    metric = run.bench.info.metric  # a periodic evaluation's scores: mse_before, accuracy_ci95, ...
    val = {k: v for k, v in metrics.items() if k.startswith(metric) or k == "eval_tasks"}
    if step % every and step != run.config.steps and not val:
        return
    train = [(k, v) for k, v in _scalars(metrics) if k.partition("/")[0] not in val]
    for w in writers:
        w.log(step, "train", train)
        if val:
            w.log(step, "val", list(_scalars(val)))


@metareg.hookimpl
def on_run_end(run, summary):
    writers = _open.pop(id(run), None)
    if not writers:
        return
    step = int(summary.get("steps", 0) or 0)
    nums = [(k, v) for k, v in _scalars(summary) if not k.endswith("_per_task") and "/" not in k]
    for w in writers:
        w.log(step, "summary", nums)
        w.close()
