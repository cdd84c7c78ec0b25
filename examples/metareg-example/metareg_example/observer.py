"""A run observer: the training loss of every step, written to loss_curve.csv in the run folder."""

import csv

import metareg

_curves = {}


@metareg.hookimpl
def on_run_start(run):
    _curves[id(run)] = []


@metareg.hookimpl
def on_step_end(run, step, metrics):
    _curves[id(run)].append((step, metrics["loss"]))


@metareg.hookimpl
def on_run_end(run, summary):
    rows = _curves.pop(id(run), [])
    if run.out is None:  # --no-save: nothing to write
        return
    with open(run.out / "loss_curve.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("step", "loss"), *rows])
