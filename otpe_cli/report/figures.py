"""The report's figures (matplotlib, no display): test accuracy over iterations, final accuracy
against depth, and each layer's weight cosine to BPTT."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .runs import PARTIAL, Run, number
from .tables import Tables, _algorithm_rank, _describe, is_accuracy, mean_std

FIGURES = ("test_acc_vs_iter.png", "final_acc_vs_depth.png", "alignment_per_layer.png")


def _curve(runs: list, key: str) -> tuple[list, list, list]:
    """Iterations, mean and std of ``key`` over runs, at every logged iteration."""
    at = defaultdict(list)
    for r in runs:
        for row in r.rows:
            v = number(row.get(key))
            if v is not None and "iter" in row:
                at[row["iter"]].append(v)
    its = sorted(at)
    stats = [mean_std(at[i]) for i in its]
    return its, [m for m, _ in stats], [s or 0.0 for _, s in stats]


def _layer_cosines(run: Run) -> dict[int, float]:
    """Mean cosine to BPTT per layer's weight over the run's alignment rows (SPEC §4)."""
    out = {}
    prefix = "align/cos/layers."
    keys = {k for row in run.rows for k in row if k.startswith(prefix) and k.endswith(".weight")}
    for key in keys:
        values = [v for v in (number(row.get(key)) for row in run.rows) if v is not None]
        if values:
            out[int(key[len(prefix):-len(".weight")])] = sum(values) / len(values)
    if not out:  # no metrics rows: the summary's mean over training
        prefix = "align_mean/cos/layers."
        for key, v in run.final.items():
            if key.startswith(prefix) and key.endswith(".weight") and number(v) is not None:
                out[int(key[len(prefix):-len(".weight")])] = float(v)
    return out


def _grid(plt, nrows: int, ncols: int):
    # constrained layout rather than tight_layout: it leaves room for the figure legend below
    # the panels, and does not give up ("Tight layout not applied") on crowded decorations
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False,
                             layout="constrained")
    return fig, axes


def _mpl_text(text) -> str:
    """``text`` shown as is: matplotlib reads "$...$" as mathematics, and an unresolved
    "${dataset.adamax_lr.${trainer.update}}" in a label would stop the report with a parse
    error."""
    return str(text).replace("$", r"\$")


def _figure_legend(fig, order: list) -> None:
    """One legend for the whole figure, below the panels, in ``order`` (colours are shared by
    all panels), and only when a panel drew something labelled: ``legend()`` with nothing
    labelled only warns. Per-panel legends inside the axes would hide the curves, and with
    long labels (rows split by lr, width, ...) leave constrained layout no room; so the figure
    is widened and heightened to hold the legend instead."""
    handles = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = [label for label in order if label in handles]
    labels += [label for label in handles if label not in labels]
    if not labels:
        return
    renderer = fig.canvas.get_renderer()

    def legend(ncols):
        return fig.legend([handles[label] for label in labels], labels, loc="outside lower center",
                          ncols=ncols, fontsize=7, frameon=False)

    one = legend(1)  # its width is that of the widest entry: as many columns as fit
    entry = one.get_window_extent(renderer).width / fig.dpi
    one.remove()
    width = fig.get_figwidth()
    final = legend(max(1, min(len(labels), int(width // max(entry, 1e-3)))))
    box = final.get_window_extent(renderer)
    fig.set_size_inches(max(width, box.width / fig.dpi + 0.2),
                        fig.get_figheight() + box.height / fig.dpi + 0.1)


def _colors(labels: list) -> dict:
    import matplotlib

    n = 10 if len(labels) <= 10 else 20  # tab20 keeps up to 20 variants apart
    cmap = matplotlib.colormaps[f"tab{n}"]
    return {label: cmap(i % n) for i, label in enumerate(labels)}


def write_figures(tables: Tables, metric: str, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    datasets = tables.datasets
    if not datasets:
        return written
    layouts = {d: tables.layout(d) for d in datasets}
    all_labels = sorted({lab for d in datasets for lab in layouts[d][0]},
                        key=lambda s: (_algorithm_rank(s.split(" [")[0]), s))
    color = _colors(all_labels)
    ncols = max(len(layouts[d][1]) for d in datasets)
    live = ("finished", *PARTIAL)  # curves show runs not finished yet, up to where they are

    def dataset_by_depth_panels():
        """Rows = datasets, columns = depths: yields (axes, dataset, depth, labels, groups)."""
        fig, axes = _grid(plt, len(datasets), ncols)
        for i, dataset in enumerate(datasets):
            labels, depths = layouts[dataset]
            groups = tables.groups(dataset, live)
            for j in range(ncols):
                if j >= len(depths):
                    axes[i][j].axis("off")
                    continue
                yield axes[i][j], dataset, depths[j], labels, groups
                axes[i][j].grid(alpha=0.3)
        save(fig)

    def save(fig):
        _figure_legend(fig, [_mpl_text(label) for label in all_labels])
        written.append(out / FIGURES[len(written)])
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    # test accuracy over iterations
    for ax, dataset, depth, labels, groups in dataset_by_depth_panels():
        for label in labels:
            its, mean, std = _curve(groups.get((label, depth), []), "test/acc")
            if not its:
                continue
            mean, std = [100 * m for m in mean], [100 * s for s in std]  # % as in the tables
            ax.plot(its, mean, marker="o" if len(its) < 3 else None, ms=3,
                    label=_mpl_text(label), color=color[label])
            ax.fill_between(its, [m - s for m, s in zip(mean, std)],
                            [m + s for m, s in zip(mean, std)], color=color[label],
                            alpha=0.2, lw=0)
        ax.set(title=_mpl_text(f"{dataset}, depth {depth}"), xlabel="iteration",
               ylabel="test accuracy (%)")

    # final accuracy against depth: one panel per dataset
    scale = 100.0 if is_accuracy(metric) else 1.0  # % as in the tables
    fig, axes = _grid(plt, 1, len(datasets))
    for i, dataset in enumerate(datasets):
        ax = axes[0][i]
        labels, depths = layouts[dataset]
        numeric = [d for d in depths if isinstance(d, (int, float))]
        for label in labels:
            points = [(d, tables.cell(dataset, label, d, metric)) for d in numeric]
            points = [(d, c) for d, c in points if c is not None]
            if not points:
                continue
            ax.errorbar([d for d, _ in points], [scale * c[0] for _, c in points],
                        yerr=[scale * (c[1] or 0.0) for _, c in points], marker="o", capsize=3,
                        label=_mpl_text(label), color=color[label])
        ax.set(title=_mpl_text(dataset), xlabel="depth (spiking layers)",
               ylabel=_mpl_text(_describe(metric)))
        if numeric:
            ax.set_xticks(numeric)
        ax.grid(alpha=0.3)
    save(fig)

    # per-layer cosine to BPTT (BPTT itself is 1 everywhere)
    for ax, dataset, depth, labels, groups in dataset_by_depth_panels():
        for label in labels:
            if label.split(" [")[0] == "bptt":
                continue
            per_layer = defaultdict(list)
            for r in groups.get((label, depth), []):
                for layer, cos in _layer_cosines(r).items():
                    per_layer[layer].append(cos)
            if not per_layer:
                continue
            layers = sorted(per_layer)
            stats = [mean_std(per_layer[k]) for k in layers]
            ax.errorbar([k + 1 for k in layers], [m for m, _ in stats],
                        yerr=[s or 0.0 for _, s in stats], marker="o", capsize=3,
                        label=_mpl_text(label), color=color[label])
        ax.set(title=_mpl_text(f"{dataset}, depth {depth}"), xlabel="layer (last = output)",
               ylabel="cosine to BPTT (weights)")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        if isinstance(depth, int):
            ax.set_xticks(range(1, depth + 1))
    return written
