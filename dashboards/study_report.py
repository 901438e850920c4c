"""A study's part of a report: optimization history, parameter importances, intermediate values (pruning),
the Pareto front for several objectives, and the trials table. Plots come from optuna.visualization
(Plotly, for the page) and optuna.visualization.matplotlib (the PNGs)."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from dashboards.html import Page


def _figures(study: optuna.Study, names: list[str]) -> list[tuple[str, object, object]]:
    """(name, plotly figure maker, matplotlib maker) for the plots this study has data for."""
    v, vm = optuna.visualization, optuna.visualization.matplotlib
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    multi = len(study.directions) > 1
    plots = []
    if multi:
        plots.append(("pareto_front", lambda: v.plot_pareto_front(study, target_names=names),
                      lambda: vm.plot_pareto_front(study, target_names=names)))
        for i, name in enumerate(names):
            plots.append((f"history_{name}", lambda i=i, n=name: v.plot_optimization_history(study, target=lambda t: t.values[i], target_name=n),
                          lambda i=i, n=name: vm.plot_optimization_history(study, target=lambda t: t.values[i], target_name=n)))
    else:
        plots.append(("optimization_history", lambda: v.plot_optimization_history(study, target_name=names[0]),
                      lambda: vm.plot_optimization_history(study, target_name=names[0])))
    varied = {k for t in complete for k in t.params if len({str(u.params.get(k)) for u in complete}) > 1}
    if len(complete) >= 2 and varied:
        target = (lambda t: t.values[0]) if multi else None
        plots.append(("param_importances", lambda: v.plot_param_importances(study, target=target, target_name=names[0]),
                      lambda: vm.plot_param_importances(study, target=target, target_name=names[0])))
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)) and not multi:
        plots.append(("intermediate_values", lambda: v.plot_intermediate_values(study),
                      lambda: vm.plot_intermediate_values(study)))
    return plots


def add_study_section(page: Page, study: optuna.Study, objective_names: list[str], png_dir: Path) -> list[Path]:
    png_dir.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    states = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    page.heading(f"Study {study.study_name}")
    page.note(f"trials by state: {states}; objectives: {', '.join(f'{n} ({d.name.lower()})' for n, d in zip(objective_names, study.directions))}")
    if len(study.directions) == 1:
        page.note("intermediate values: mean training loss of the last steps, the value the pruner compares")
    else:
        page.note("Optuna's pruners do not support multi-objective studies: no trial of this study was pruned")
    params = sorted({k for t in trials for k in t.params})
    rows = [[t.number, t.state.name, *(t.values or [""] * len(objective_names)), *[t.params.get(k, "") for k in params],
             t.user_attrs.get("mlflow_run_id", "")] for t in trials]
    page.table(["trial", "state", *objective_names, *params, "pipeline run"], rows)
    pngs = []
    with warnings.catch_warnings():  # the matplotlib backend and some plots are experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plotly_figure, matplotlib_axes in _figures(study, objective_names):
            page.plotly(plotly_figure())
            axes = matplotlib_axes()
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(7, 4)
            figure.tight_layout()
            figure.savefig(png_dir / f"{name}.png", dpi=120)
            import matplotlib.pyplot as plt

            plt.close(figure)
            pngs.append(png_dir / f"{name}.png")
    for path in pngs:
        page.png(path, path.stem)
    return pngs
