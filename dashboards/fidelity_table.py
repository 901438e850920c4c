"""The fidelity block (orchestrator/fidelity_stage.py, evaluators/fidelity.py) as rows a person reads: one row per
one-run method against the QLoRA grid, then its per-rank test deltas. The summary table prints it as text; the
report renders the same rows as an HTML table, so the two never disagree."""

from __future__ import annotations

from trainers.methods import display_name

HEADER = ["method", "selected", "on G", "QLoRA search", "regret [95%]", "regret on G [95%]", "spearman on G",
          "log2 dist", "cost ratio"]


def _interval(d: dict) -> str:
    return f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def fidelity_rows(fidelity: dict) -> list[list[str]]:
    rows = []
    for method, b in fidelity["methods"].items():
        rows.append([display_name(method), str(b["selected_rank"]), str(b["selected_rank_on_grid"]),
                     str(b["grid_selected_rank"]), _interval(b["regret"]), _interval(b["regret_on_grid"]),
                     f"{b['spearman_on_grid']:.3f}", f"{b['log2_rank_distance']:.2f}",
                     f"{b['cost_ratio']:.3f}" if "cost_ratio" in b else "n/a"])
    return rows


def delta_rows(fidelity: dict) -> list[list[str]]:
    """Per rank r of G: the method at r minus QLoRA at r, on test, with its paired interval."""
    return [[display_name(method), str(rank), _interval(d)]
            for method, b in fidelity["methods"].items() for rank, d in sorted(b["per_rank"].items(), key=lambda kv: int(kv[0]))]


def fidelity_text(fidelity: dict) -> str:
    """The block as fixed-width text for summary.txt and the terminal."""
    grid = ", ".join(map(str, fidelity["grid"]))
    lines = [f"Fidelity against the QLoRA search on G = [{grid}] (test loss, method - QLoRA; paired bootstrap 95%; "
             "selections on validation by the same policy)"]
    table = [HEADER, *fidelity_rows(fidelity)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in table]
    lines.append("per rank on G (test loss, method - QLoRA at the same rank [95%]):")
    lines += [f"  {m:<10} r={r:<4} {d}" for m, r, d in delta_rows(fidelity)]
    return "\n".join(lines)
