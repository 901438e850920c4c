"""What a pipeline shows a person: the summary table (terminal and CSV) and the rank-vs-metric plot."""

from __future__ import annotations

import csv
from pathlib import Path

from dashboards.fidelity_table import fidelity_text
from trainers.costs import COST_KEYS
from trainers.methods import display_name

COLUMNS = ("eval_loss", "eval_perplexity", "eval_exact_match")


def summary_table(ranks: list[dict], baselines: list[dict], selected_rank: int, metric: str = "eval_loss",
                  method: str = "qdylora") -> str:
    """Rank, eval loss and task metric per QDyLoRA rank, the selected one marked, baselines (any method) below."""
    head = f"{'':2}{'method':<11}{'rank':>5}  {'eval_loss':>10}  {'perplexity':>11}  {'exact_match':>11}"
    lines = [head, "-" * len(head)]

    def line(mark: str, method: str, row: dict) -> str:
        return (f"{mark:2}{method:<11}{row['rank']:>5}  {row['eval_loss']:>10.4f}  {row['eval_perplexity']:>11.3f}  "
                f"{row.get('eval_exact_match', float('nan')):>11.3f}")

    for row in sorted(ranks, key=lambda r: r["rank"]):
        lines.append(line("*" if row["rank"] == selected_rank else "", method, row))
    if baselines:
        lines.append("-" * len(head))
        for row in sorted(baselines, key=lambda r: (r["method"], r["rank"])):
            lines.append(line("", row["method"], row))
    lines.append(f"* selected rank {selected_rank} (on validation {metric})")
    return "\n".join(lines)


def cost_table(jobs: list[dict]) -> str:
    """What each training job cost, one row per job (`method`, `rank` and the COST_KEYS metrics)."""
    head = (f"{'method':<11}{'rank':>5}  {'trainable':>10}  {'saved KiB':>10}  {'peak MiB':>9}  {'s/step':>7}  "
            f"{'train s':>8}")
    lines = [head, "-" * len(head)]
    for job in jobs:
        lines.append(f"{job['method']:<11}{job['rank']:>5}  {int(job.get('trainable_params', 0)):>10}  "
                     f"{job.get('adapter_bytes', float('nan')) / 1024:>10.1f}  "
                     f"{job.get('peak_memory_bytes', float('nan')) / 2**20:>9.1f}  "
                     f"{job.get('step_seconds', float('nan')):>7.3f}  {job.get('device_seconds', float('nan')):>8.1f}")
    return "\n".join(lines)


def write_rank_csv(ranks: list[dict], baselines: list[dict], path: Path, method: str = "qdylora") -> Path:
    """One row per swept rank of the main method and per baseline job (each under its own method)."""
    rows = [{"method": method, **r} for r in ranks] + list(baselines)
    keys = ["method", "rank", *COLUMNS, *COST_KEYS]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r["method"], r["rank"])))
    return path


def plot_ranks(ranks: list[dict], baselines: list[dict], selected_rank: int, path: Path,
               metric: str = "eval_loss", zeroshot: dict | None = None, method: str = "qdylora") -> Path:
    """The main method's metric at every rank, baselines (each labelled by its method) as horizontal lines,
    the selected rank marked.
    Figure, not pyplot: a study's pipelines draw from several threads, and pyplot's state is global."""
    from matplotlib.figure import Figure

    rows = sorted(ranks, key=lambda r: r["rank"])
    fig = Figure(figsize=(7, 4), dpi=120)
    ax = fig.subplots()
    label = display_name(method)
    ax.plot([r["rank"] for r in rows], [r[metric] for r in rows], marker="o", ms=3, label=f"{label} (one adapter)")
    for i, base in enumerate(sorted(baselines, key=lambda r: r["rank"])):
        ax.axhline(base[metric], ls="--", color=f"C{(i + 1) % 10}", label=f"{display_name(base['method'])} r={base['rank']}")
    values = [r[metric] for r in rows] + [b[metric] for b in baselines]
    low, high = min(values), max(values)
    if zeroshot and metric in zeroshot:
        base = zeroshot[metric]
        if base <= high + (high - low):  # on the chart without flattening the curve
            ax.axhline(base, ls=":", color="grey", label="base model (zero-shot)")
        else:  # far off: say it instead of drawing it
            ax.plot([], [], ls=":", color="grey", label=f"base model (zero-shot): {base:.3g}, off the chart")
    chosen = next(r for r in rows if r["rank"] == selected_rank)
    ax.scatter([selected_rank], [chosen[metric]], s=120, facecolors="none", edgecolors="red", zorder=5,
               label=f"selected rank {selected_rank}")
    ax.set_xlabel("rank")
    ax.set_ylabel(f"{metric} (validation)")
    ax.set_title(f"{label}: every rank from one training run")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_pipeline_outputs(result, folder: Path) -> str:
    """A finished pipeline's table (summary.txt), CSV and plot in `folder`; returns the table. The CLI hands this
    to the pipeline, which logs the folder under the parent run's report/."""
    folder = Path(folder)
    plot_ranks(result.ranks, result.baselines, result.selected_rank, folder / "rank_vs_metric.png", result.metric,
               result.zeroshot, result.method)
    write_rank_csv(result.ranks, result.baselines, folder / "ranks.csv", result.method)
    table = (summary_table(result.ranks, result.baselines, result.selected_rank, result.metric, result.method)
             + "\n\n" + cost_table([result.trained, *result.baselines]))
    if result.selection:  # smallest-not-worse: the interval the choice rests on
        e = result.selection
        table += (f"\n\nrank {result.selected_rank} vs best rank {e['not_worse_reference_rank']} on validation: "
                  f"{e['not_worse_diff']:+.4f} [{e['not_worse_low']:+.4f}, {e['not_worse_high']:+.4f}], one-sided "
                  f"bound {e['not_worse_upper']:+.4f} <= margin {e['not_worse_margin']:.4f}")
    if result.fidelity:
        table += "\n\n" + fidelity_text(result.fidelity)
    (folder / "summary.txt").write_text(table + "\n")
    return table
