"""PNG plots of a run's logged metrics (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def plot_log_history(log_history: list[dict], keys: list[str], path: str | Path, title: str = "") -> Path | None:
    """One panel per metric key, value against optimizer step; keys never logged are left out.

    Returns the written path, or None when none of the keys was logged.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {k: [(e["step"], e[k]) for e in log_history if k in e and "step" in e] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.4), squeeze=False)
    for ax, (key, points) in zip(axes[0], series.items(), strict=True):
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="o", markersize=2.5, linewidth=1.2)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves_svg(logs: dict[str, list[dict]], keys: tuple[str, ...] | list[str], *, salt: str = "",
               xlabel: str = "step") -> str | None:
    """One panel per logged key, one line per run (``{run name: log_history}``), as an inline
    ``<svg>`` element (text kept as text; ids made unique by ``salt``). ``None`` when no run logged
    any of the keys. The x values are each entry's ``"step"`` (named ``xlabel`` on the axis)."""
    import io
    import re

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = {}
    for key in keys:
        series = {run: [(e["step"], e[key]) for e in log if key in e and "step" in e] for run, log in logs.items()}
        if series := {run: points for run, points in series.items() if points}:
            panels[key] = series
    if not panels:
        return None
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt or "mmpo"}):
        fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 2.6), squeeze=False)
        for ax, (key, series) in zip(axes[0], panels.items(), strict=True):
            for run, points in series.items():
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="o", markersize=2 if len(points) > 1 else 5, linewidth=1.1, label=run)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        if len(logs) > 1:
            axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
        plt.close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    return re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
