"""PNG plots of run folders (matplotlib, no display needed): accuracy per epoch with the monitor's events
marked, training curves, regulariser terms and the monitor's checks. Several runs share each panel."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .runs import EVENT_STYLE, Run

# (metric, panel title, source): source "epoch" = a per-epoch record, "epoch_mean" = a per-step metric averaged
# over each epoch's logged steps
ACCURACY_PANELS = [
    ("val_clean_acc", "validation clean accuracy", "epoch"),
    ("val_fgsm_acc", "validation FGSM accuracy", "epoch"),
    ("val_robust_acc", "validation PGD accuracy", "epoch"),
    ("train_adv_acc", "training-attack accuracy (train batches)", "epoch_mean"),
]
TRAINING_PANELS = [("loss", "training loss (dotted: main loss without terms)"), ("lr", "learning rate"),
                   ("train_adv_acc", "training-attack accuracy"), ("eps", "training radius ε")]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colour(i: int):
    return pyplot().get_cmap("tab10")(i % 10)


MARKERS = {"catastrophic_overfitting": "v", "robust_overfitting": "s", "rollback": "^", "give_up": "X"}


def _mark_events(ax, run: Run, colour, index: int, with_label: bool) -> None:
    """A dashed vertical line per event in the event's colour and, near the top of the panel, a marker in the
    run's colour (shape = kind; runs and remedies stacked downwards so events at one step stay visible)."""
    for e in run.events:
        short, ec = EVENT_STYLE.get(e.get("event"), (e.get("event", "event"), "black"))
        x = run.event_epoch(e)
        ax.axvline(x, color=ec, linestyle="--", linewidth=1.1, alpha=0.7, zorder=1)
        y = 0.97 - 0.045 * (2 * index + (e.get("event") in ("rollback", "give_up")))
        ax.plot([x], [y], marker=MARKERS.get(e.get("event"), "o"), ms=7, color=colour, markeredgecolor=ec,
                transform=ax.get_xaxis_transform(), clip_on=False, zorder=3)
        if with_label:
            ax.annotate(short, (x, y), xycoords=("data", "axes fraction"), xytext=(5, -4), textcoords="offset points",
                        fontsize=8, color=ec)


def _smooth(ys: list[float]) -> list[float]:
    """A centred running mean over about 2% of the points (per-step curves are noisy)."""
    w = max(1, len(ys) // 50)
    if w == 1:
        return ys
    out = []
    for i in range(len(ys)):
        part = ys[max(0, i - w):i + w + 1]
        out.append(sum(part) / len(part))
    return out


def _event_legend(runs: Sequence[Run]):
    from matplotlib.lines import Line2D

    kinds = {e.get("event") for r in runs for e in r.events}
    return [Line2D([], [], color=EVENT_STYLE[k][1], linestyle="--", marker=MARKERS[k], markerfacecolor="white",
                   label=f"{EVENT_STYLE[k][0]} event") for k in EVENT_STYLE if k in kinds]


def plot_epoch_panels(runs: Sequence[Run], path: str | Path, title: str, panels=ACCURACY_PANELS, *,
                      mark_events: bool = True, dashed_without_regulariser: bool = False,
                      shade_warmup: bool = True, width: float = 4.6, mark_results: bool = True) -> Path:
    """One panel per per-epoch metric (accuracy in %, every panel on the 0–100 scale), one line per run; panels no
    run has are left out. ``mark_results``: the best epoch (dotted line, the validation-chosen best.pt), the test
    accuracy of best.pt and last.pt (diamond, square) on the clean and PGD panels, and AutoAttack's accuracy from
    the run's eval.json (star) on the PGD panel, each at its checkpoint's epoch."""
    plt = pyplot()
    panels = [p for p in panels if any(_epoch_values(r, p)[1] for r in runs)]
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels) + 2.4, 4.6), sharex=True, squeeze=False)
    axes = axes[0]
    for i, run in enumerate(runs):
        style = "--" if dashed_without_regulariser and not run.config.get("regularisers") else "-"
        for ax, panel in zip(axes, panels):
            xs, ys = _epoch_values(run, panel)
            ax.plot(xs, [100 * v for v in ys], style, marker="o", ms=3.5, color=_colour(i), label=run.label)
            if mark_events:
                _mark_events(ax, run, _colour(i), i, with_label=len(runs) == 1)
            if mark_results:
                _mark_results(ax, run, panel[0], _colour(i))
    for ax, (_, label, _) in zip(axes, panels):
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 104)
        ax.grid(alpha=0.3)
    warm = runs[0].config.get("train", {}).get("eps_warmup_epochs", 0) if runs else 0
    if shade_warmup and warm:
        for ax in axes:
            ax.axvspan(0, warm, color="0.92", zorder=0)
        axes[0].text(0.05, 0.03, f"shaded: ε warm-up ({warm:g} epochs)", transform=axes[0].transAxes, fontsize=8,
                     color="0.35")
    handles, labels = axes[0].get_legend_handles_labels()
    extra = (_event_legend(runs) if mark_events else []) + (_result_legend(runs) if mark_results else [])
    handles, labels = handles + extra, labels + [h.get_label() for h in extra]
    fig.legend(handles, labels, fontsize=8, loc="center right",
               title="dashed: no\nregulariser" if dashed_without_regulariser else None, title_fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1 - 1.9 / (width * len(panels) + 2.4), 1))
    return _save(fig, path)


TEST_PANELS = {"val_clean_acc": "clean_acc", "val_robust_acc": None}
"""Panels that get the test points: the clean panel the test clean accuracy, the PGD panel the test attack's."""


def _best_epoch(run: Run) -> float | None:
    row = run.test_row("best")
    if row and row.get("epoch") is not None:
        return float(row["epoch"])
    xs, ys = run.epoch_series("val_robust_acc")
    return xs[max(range(len(ys)), key=lambda j: ys[j])] if ys else None


def _mark_results(ax, run: Run, key: str, colour) -> None:
    """Best epoch, test points of best.pt / last.pt, AutoAttack of eval.json (see :func:`plot_epoch_panels`)."""
    best = _best_epoch(run)
    if best is not None:
        ax.axvline(best, color=colour, linestyle=":", linewidth=1.3, alpha=0.8, zorder=1)
    if key not in TEST_PANELS:
        return
    for which, marker in (("best", "D"), ("last", "s")):
        row = run.test_row(which)
        if not row or row.get("epoch") is None:
            continue
        acc_key = TEST_PANELS[key] or next((k for k in row if k.endswith("_acc") and k != "clean_acc"), None)
        if acc_key and row.get(acc_key) is not None:
            ax.plot([row["epoch"]], [100 * row[acc_key]], marker=marker, ms=8, color=colour, markerfacecolor="white",
                    markeredgewidth=1.6, linestyle="none", zorder=4)
    ev = run.evals.get("eval") or {}
    aa = ev.get("autoattack_acc")
    if key == "val_robust_acc" and aa is not None and ev.get("epoch") is not None:
        ax.plot([ev["epoch"]], [100 * aa], marker="*", ms=13, color=colour, markeredgecolor="black",
                linestyle="none", zorder=5)


def _result_legend(runs: Sequence[Run]):
    from matplotlib.lines import Line2D

    out = [Line2D([], [], color="0.3", linestyle=":", label="best epoch (best.pt)")]
    if any(r.test_row("best") for r in runs):
        out += [Line2D([], [], color="0.3", marker="D", markerfacecolor="white", linestyle="none",
                       label="test, best.pt"),
                Line2D([], [], color="0.3", marker="s", markerfacecolor="white", linestyle="none",
                       label="test, last.pt")]
    if any((r.evals.get("eval") or {}).get("autoattack_acc") is not None for r in runs):
        out.append(Line2D([], [], color="0.3", marker="*", markeredgecolor="black", ms=11, linestyle="none",
                          label="AutoAttack (eval.json)"))
    return out


def _epoch_values(run: Run, panel) -> tuple[list[float], list[float]]:
    key, _, source = panel
    if source == "epoch_mean":
        ys = run.epoch_means(key)
        return [float(i + 1) for i in range(len(ys))], ys
    return run.epoch_series(key)


def plot_training(runs: Sequence[Run], path: str | Path, title: str) -> Path:
    """Loss, learning rate, training-attack accuracy and ε per logged step (x in epochs), events marked."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), sharex=True)
    for i, run in enumerate(runs):
        for ax, (key, _) in zip(axes.flat, TRAINING_PANELS):
            xs, ys = run.step_series(key)
            if key == "train_adv_acc":
                ys = [100 * v for v in ys]  # accuracies in percent on every plot
            if key in ("loss", "train_adv_acc"):  # noisy: raw faint, running mean solid
                ax.plot(xs, ys, color=_colour(i), linewidth=0.6, alpha=0.25)
                ys = _smooth(ys)
            ax.plot(xs, ys, color=_colour(i), linewidth=1.4, label=run.label)
            if key == "loss" and run.config.get("regularisers"):
                xs, ys = run.step_series("loss_main")
                ax.plot(xs, _smooth(ys), ":", color=_colour(i), linewidth=1.4)
            _mark_events(ax, run, _colour(i), i, with_label=False)
    for ax, (key, label) in zip(axes.flat, TRAINING_PANELS):
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        if key == "loss":
            ax.set_yscale("log")
        if key == "train_adv_acc":
            ax.set_ylim(-2, 104)
            ax.set_ylabel("accuracy (%)")
        if key in ("lr", "eps"):
            ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1e-12))
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    handles, labels = axes[0][0].get_legend_handles_labels()
    extra = _event_legend(runs)
    fig.legend(handles + extra, labels + [h.get_label() for h in extra], fontsize=8, loc="center right")
    fig.suptitle(title + " (faint: every logged step; solid: running mean)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    return _save(fig, path)


def plot_regularisers(runs: Sequence[Run], path: str | Path, title: str) -> Path | None:
    """One panel per logged regulariser term (``elle/e_lin``, ``elle/lam``, ...); None if no run has one."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.term_keys()))
    if not keys:
        return None
    plt = pyplot()
    ncols = min(3, len(keys))
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols + 1.8, 3.6 * nrows), sharex=True, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for i, run in enumerate(runs):
            xs, ys = run.step_series(key)
            if ys:
                ax.plot(xs, ys, color=_colour(i), linewidth=0.6, alpha=0.25)
                ax.plot(xs, _smooth(ys), color=_colour(i), linewidth=1.4, label=run.label)
                _mark_events(ax, run, _colour(i), i, with_label=False)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("epoch")
        ax.tick_params(labelbottom=True)  # shared x, but the grid may have an incomplete last row
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    handles, labels = {}, {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), fontsize=8, loc="center right")
    fig.suptitle(title + " (faint: every logged step; solid: running mean)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / (4.8 * ncols + 1.8), 1))
    return _save(fig, path)


def plot_monitor_checks(runs: Sequence[Run], path: str | Path, title: str) -> Path | None:
    """Per run: clean / FGSM / PGD accuracy of the monitor's held-out check batch per step, events marked."""
    runs = [r for r in runs if r.checks]
    if not runs:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4.2), sharey=True, squeeze=False)
    for ax, run in zip(axes[0], runs):
        steps = [c["step"] for c in run.checks]
        ax.plot(steps, [100 * c["clean_acc"] for c in run.checks], label="clean", color="tab:blue")
        ax.plot(steps, [100 * c["fgsm_acc"] for c in run.checks], label="FGSM", color="tab:orange")
        ax.plot(steps, [100 * c["pgd_acc"] for c in run.checks], label="PGD", color="tab:red", linewidth=2)
        if "eps" in run.checks[0]:
            ax2 = ax.twinx()
            ax2.plot(steps, [c["eps"] for c in run.checks], color="gray", linestyle=":", label="ε of the check")
            ax2.set_ylim(0, max(c["eps"] for c in run.checks) * 1.05 or 1)
            ax2.set_ylabel("ε (dotted)", color="gray")
        at_step: dict[int, list[str]] = {}
        for e in run.events:
            short, colour = EVENT_STYLE.get(e["event"], (e["event"], "black"))
            ax.axvline(e["step"], color=colour, linestyle="--", alpha=0.8)
            at_step.setdefault(e["step"], []).append(short)
        for step, shorts in at_step.items():  # one label per step: "CO + rollback"
            ax.annotate(" + ".join(shorts), (step, 100.0), xytext=(3, 3), textcoords="offset points", fontsize=8,
                        color="0.15", va="bottom")
        ax.set_title(run.label, fontsize=10, pad=16 if run.events else 6)
        ax.set_xlabel("training step")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    n_check = runs[0].config.get("monitor", {}).get("n_check", "")
    axes[0][0].set_ylabel(f"accuracy (%) on {n_check} held-out images")
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, dpi=110)


def _save(fig, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def plot_sweep(rows: list[dict], curves: Sequence[str], path: Path, title: str) -> Path:
    """Robust accuracy (%) against the radius: one line per accuracy key in ``curves`` (fractions in ``rows``, one
    row per ε with ``eps``), the worst case drawn black and thick; x ticks at the evaluated radii, as 8/255."""
    from ..tables import format_radius

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [r["eps"] for r in rows]
    for i, key in enumerate(curves):
        ys = [100 * r[key] if r.get(key) is not None else float("nan") for r in rows]
        worst = key == "worst_case_acc"
        ax.plot(xs, ys, marker="o", color="black" if worst else _colour(i), linewidth=2.4 if worst else 1.4,
                label=key.removesuffix("_acc").replace("_", " "), zorder=3 if worst else 2)
    ax.set_xticks(xs)
    ax.set_xticklabels([format_radius(x) for x in xs], rotation=30 if len(xs) > 5 else 0)
    ax.set_ylim(0, 100)
    ax.set_xlabel("radius ε")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
