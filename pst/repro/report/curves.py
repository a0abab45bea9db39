"""Training curves from the records: how each kept run got to its result.

A table shows where a run ended; the curves show the way there, against the optimizer step
and beside the sparsity schedule: whether the dev metric fell while the schedule pruned and
recovered in the cool-down, whether the loss still fell at the end. Each panel holds, per
method, the run the grid search kept (:func:`best_runs`), read from the record only: the GLUE
runner's per-epoch ``evaluations`` and both runners' ``training_log`` (the Trainer's loss,
logged ~20 times a run, each point with the sparsity ``pst.SparsityCallback`` had set).
"""
from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from ...methods import METHODS
from ..glue_tasks import get_task
from .columns import main_label, method_name, method_style, ordered_methods, task_name, task_sort_key
from .files import panel_grid
from .noise import majority_share
from .records import Records, best_runs, describe, get, glue_records, group_sizes, is_number, load

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SCHEDULE_COLOR = "0.6"  # grey: the schedule is the backdrop, the methods are the lines


class MissingCurveError(ValueError):
    """A kept run's record holds no points for the curve asked for (it names the run)."""


def glue_curves(results_dir: Records, experiment: str, tasks: Sequence[str] | None = None) -> "Figure":
    """Dev main metric (primary dev split, percent) against the optimizer step, one panel per task.

    One line per method for the run its grid search kept, a dotted vertical line (and a hollow
    ring) at the evaluation that run selected, the dev set's majority class as a dotted black
    line (classification), and the sparsity schedule in grey on a twin axis; one legend below
    the panels. ``tasks``:
    the tasks to draw (default: every task with records, in the paper's order).
    Raises :class:`MissingCurveError` when a kept run has no ``evaluations``.
    """
    records = glue_records(results_dir, experiment)
    chosen = _kept_runs(records, experiment, results_dir, tasks)

    def draw(ax: "Axes", task: str, method: str, record: dict) -> None:
        split, metric = get_task(task).eval_splits[0], record.get("main_metric") or get_task(task).main_metric
        majority = majority_share(record) if method == next(iter(chosen[task])) else None
        if majority is not None:  # chance for accuracy: always answering the commonest label
            ax.axhline(majority, color="black", linestyle=":", linewidth=1.0, label="majority class", gid="majority")
        points = [(e["step"], _percent(get(e, f"metrics.{split}.{metric}"))) for e in _points(record, "evaluations")]
        ax.plot(*zip(*points), label=method_name(method), linewidth=1.5, markersize=4, **method_style(method))
        selected = get(record, "selected.step")
        if is_number(selected):
            color = method_style(method).get("color")
            ax.axvline(selected, color=color, linestyle=":", linewidth=1.0, gid=f"selected:{method}")
            ax.plot([selected], [_percent(get(record, "selected.value"))], linestyle="none", marker="o",
                    markersize=10, markerfacecolor="none", markeredgecolor=color or "black")

    def ylabel(task: str) -> str:
        return f"dev {main_label(task)} (%)"

    title = f"{experiment}: dev metric against training step (dotted line and ring: the selected evaluation)"
    return _curves(chosen, draw, ylabel, title, grid=_has_grid(records))


def training_loss_curves(results_dir: Records, experiment: str, tasks: Sequence[str] | None = None) -> "Figure":
    """Training loss against the optimizer step, one panel per task, one line per method.

    Works for GLUE and NLG experiments alike (the kept run of each grid, as in the tables), with
    the sparsity schedule in grey on a twin axis. The loss is the Trainer's mean over the steps
    since its previous log (NLG runs: with label smoothing). Raises :class:`MissingCurveError`
    when a kept run has no ``training_log`` (records made before runners wrote one).
    """
    records = [r for r in load(results_dir, experiment) if isinstance(r.get("selected"), Mapping)
               or isinstance(r.get("metrics"), Mapping)]
    chosen = _kept_runs(records, experiment, results_dir, tasks)

    def draw(ax: "Axes", task: str, method: str, record: dict) -> None:
        points = [(p["step"], p["loss"] if is_number(p.get("loss")) else math.nan)
                  for p in _points(record, "training_log")]
        ax.plot(*zip(*points), label=method_name(method), linewidth=1.5, markersize=3, **method_style(method))

    title = f"{experiment}: training loss against training step"
    return _curves(chosen, draw, lambda task: "training loss", title, grid=_has_grid(records))


# --------------------------------------------------------------------------- shared


def _kept_runs(records: list[dict], experiment: str, source: Records, tasks: Sequence[str] | None,
               ) -> dict[str, dict[str, dict]]:
    """``{task: {method: kept record}}``, tasks in the paper's order, methods in METHODS order."""
    if not records:
        raise ValueError(f"no records of experiment {experiment!r} in {describe(source)}")
    best = best_runs(records)
    present = sorted({task for task, _ in best}, key=task_sort_key)
    if tasks is not None:
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        missing = [t for t in tasks if t not in present]
        if missing:
            raise ValueError(f"experiment {experiment!r} has no records of task(s) {missing}; it has {present}")
        present = [t for t in present if t in tasks]
    return {task: {m: best[(task, m)] for m in ordered_methods(m for t, m in best if t == task)} for task in present}


def _has_grid(records: list[dict]) -> bool:
    """Whether any task and method ran more than one configuration (a grid to choose from)."""
    return bool(records) and max(group_sizes(records, ("task", "method")).values()) > 1


def _points(record: dict, field: str) -> list[dict]:
    points = record.get(field)
    if not isinstance(points, list) or not points:
        raise MissingCurveError(f"run {record.get('run_id', '?')!r} has no {field!r} to draw"
                                + (" (its record was made before the runners kept the training log; rerun it)"
                                   if field == "training_log" else ""))
    return sorted(points, key=lambda p: p["step"])


def _percent(value) -> float:
    return 100.0 * float(value) if is_number(value) else math.nan


def _schedule(record: dict) -> tuple[tuple, tuple] | None:
    """(steps, sparsity in percent) the run's callback logged; the training log is the denser source."""
    method = record.get("method")
    if method in METHODS and not METHODS[method].prunes:
        return None
    for field in ("training_log", "evaluations"):
        points = [(p["step"], 100.0 * p["sparsity"]) for p in record.get(field) or () if is_number(p.get("sparsity"))]
        if points:
            return tuple(zip(*sorted(points)))
    return None


def _curves(chosen: dict[str, dict[str, dict]], draw: Callable, ylabel: Callable[[str], str], title: str,
            grid: bool = True) -> "Figure":
    figure, axes = panel_grid(len(chosen), 4.2, 3.2, extra_height=0.9)
    legend: dict[str, object] = {}  # one legend for the figure: label -> handle
    for ax, (task, runs) in zip(axes, chosen.items()):
        twin = ax.twinx()
        schedules = {s for s in map(_schedule, runs.values()) if s is not None}
        for steps, sparsity in sorted(schedules):
            twin.plot(steps, sparsity, color=SCHEDULE_COLOR, linewidth=1.0, linestyle="--", gid="schedule")
        twin.set_ylim(-3, 103)  # the dense warm-up at 0 stays visible above the axis
        twin.set_ylabel("sparsity (%)", color=SCHEDULE_COLOR)
        twin.tick_params(axis="y", colors=SCHEDULE_COLOR)
        ax.set_zorder(twin.get_zorder() + 1)  # the methods' lines above the schedule
        ax.patch.set_visible(False)
        for method, record in runs.items():
            draw(ax, task, method, record)
        ax.set_title(task_name(task), fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel(task))
        ax.grid(True, linewidth=0.4, alpha=0.5)
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
        if schedules:
            legend.setdefault("sparsity schedule (right axis)", twin.get_lines()[0])
    if "majority class" in legend:  # the reference last, after the methods and the schedule
        legend["majority class"] = legend.pop("majority class")
    models = sorted({str(get(r, "config.model", r.get("model_name", "?"))) for runs in chosen.values()
                     for r in runs.values()})
    kept = "the best run of its grid" if grid else "its run (no grid)"
    text = f"{title}. Per method {kept}; model: {', '.join(models)}"
    figure.suptitle(textwrap.fill(text, width=int(11 * figure.get_figwidth())), fontsize=10)  # ~11 characters an inch
    figure.legend(list(legend.values()), list(legend), loc="outside lower center", ncol=len(legend), fontsize=8,
                  frameon=False)
    return figure
