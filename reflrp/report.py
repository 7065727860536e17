"""Reports to look at: the evaluation's HTML page (curves, methods table, heatmaps side by side) and the
"where relevance went" plot of an explanation's books (relevance kept, absorbed, lost to epsilon and
missing by the softmax deficit, per layer)."""
from __future__ import annotations

import html
import re
from dataclasses import dataclass

import numpy as np

from . import viz

# a parameter path's layer index: "encoder.layer.3.", "layers.3.", "h.3.", "blocks.3."
LAYER = re.compile(r"(?:^|[./_])(?:layers?|h|blocks?)[./_](\d+)(?:[./_]|$)")


def node_groups(graph) -> dict:
    """node name -> a display group: ``layer i`` from the parameters a node reads (named like module
    paths), ``embeddings`` before the first layer, ``head`` after the last; a node reading no named
    parameter joins the group of the node before it. Without layer names: ``block i`` counted by
    attention softmaxes."""
    from .analysis import kind_of
    from .ops import kinds as K
    labels, current, seen_layer = {}, "embeddings", False
    for node in graph.nodes:
        named = [i for i in node.inputs if i in graph.initializers and "." in i]
        layers = sorted({int(m.group(1)) for i in named for m in [LAYER.search(i)] if m})
        if layers:
            current, seen_layer = f"layer {layers[0]}", True
        elif named and seen_layer:
            current = "head"
        labels[node.name] = current
    if seen_layer:
        return labels
    count = 0
    for node in graph.nodes:
        count += kind_of(node) == K.SOFTMAX
        labels[node.name] = f"block {count}"
    return labels


@dataclass(frozen=True)
class Flow:
    """One group's books: what its nodes absorbed, lost to epsilon and left as softmax deficit, and the
    relevance still on its way to the inputs once the backward pass has crossed the group."""

    group: str
    absorbed: float
    loss: float
    deficit: float
    kept: float


def relevance_flow(report, graph) -> list[Flow]:
    """The books of ``report`` (a :class:`ConservationReport`) per node group, from the output back to the
    inputs: ``kept = target - (absorbed + loss + deficit of this and every later group)``."""
    groups = node_groups(graph)
    order = list(dict.fromkeys(groups[n.name] for n in graph.nodes))
    sums = {g: np.zeros(3) for g in order}
    for a in report.nodes:
        sums[groups.get(a.node, order[-1])] += (a.absorbed, a.loss, a.deficit)
    flows, spent = [], 0.0
    for g in reversed(order):
        absorbed, loss, deficit = sums[g]
        spent += absorbed + loss + deficit
        flows.append(Flow(g, float(absorbed), float(loss), float(deficit), float(report.target - spent)))
    return flows


def relevance_flow_png(report, graph, title: str = "where relevance went") -> bytes:
    """Bars per group (absorbed, epsilon loss, softmax deficit) and the relevance kept after each group."""
    plt = viz._pyplot()
    flows = relevance_flow(report, graph)
    names = ["output"] + [f.group for f in flows]
    kept = [report.target] + [f.kept for f in flows]
    x = np.arange(len(flows)) + 1
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 3.6))
    w = 0.25
    ax.bar(x - w, [f.absorbed for f in flows], w, label="absorbed (biases, constants)", color="#e6a23c")
    ax.bar(x, [f.loss for f in flows], w, label="epsilon loss", color="#909399")
    ax.bar(x + w, [f.deficit for f in flows], w, label="softmax deficit", color="#d9534f")
    ax.plot(range(len(names)), kept, "o-", color="#2f6fb0", label="kept (on its way to the inputs)")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("relevance")
    ax.set_title(f"{title}: target {report.target:.4g}, at inputs {report.at_wrt:.4g}")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return viz.figure_png(fig)


def curves_png(ev) -> bytes:
    """MoRF and LeRF mean curves of every method, and the ABCs with their 95 % intervals."""
    plt = viz._pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = plt.get_cmap("tab10")
    ranked = sorted(ev.methods.values(), key=lambda r: -r.abc)
    for i, r in enumerate(ranked):
        c = colours(i % 10)
        axes[0].plot(ev.fractions, r.morf, "-", color=c, label=r.method)
        axes[1].plot(ev.fractions, r.lerf, "--", color=c, label=r.method)
    for ax, name in zip(axes[:2], ("MoRF (most relevant removed first)", "LeRF (least relevant removed first)")):
        ax.set_title(name)
        ax.set_xlabel(f"fraction of {ev.unit_plural} removed ({ev.mode})")
        ax.set_ylabel(f"target {ev.measure}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    y = np.arange(len(ranked))
    abc = np.array([r.abc for r in ranked])
    err = np.array([[r.abc - r.ci[0], r.ci[1] - r.abc] for r in ranked]).T
    axes[2].barh(y, abc, xerr=err, color=[colours(i % 10) for i in range(len(ranked))], capsize=3)
    axes[2].set_yticks(y, [r.method for r in ranked])
    axes[2].invert_yaxis()
    axes[2].axvline(0, color="black", lw=0.6)
    axes[2].set_title(f"area between the curves (95% CI, n={ev.samples})")
    fig.tight_layout()
    return viz.figure_png(fig)


def image_grid_png(ev, rows: list[int]) -> bytes:
    """Rows of samples, columns the input and each method's unit scores, each with its numeric colour bar."""
    plt = viz._pyplot()
    images = next(iter(ev.feeds.values()))
    methods = list(ev.methods)
    fig, axes = plt.subplots(len(rows), len(methods) + 1, figsize=(1.6 * (len(methods) + 1), 1.5 * len(rows)),
                             squeeze=False)
    for r, i in enumerate(rows):
        img = np.asarray(images[i], dtype=np.float64)
        axes[r, 0].imshow(img.mean(0) if img.ndim == 3 else img, cmap="gray")
        axes[r, 0].set_title(f"#{i} class {ev.classes[i]}", fontsize=8)
        for c, name in enumerate(methods, 1):
            s = np.asarray(ev.methods[name].scores[i], dtype=np.float64)
            m = float(np.abs(s).max()) or 1.0
            im = axes[r, c].imshow(s, cmap="bwr", vmin=-m, vmax=m)
            cb = fig.colorbar(im, ax=axes[r, c], fraction=0.046, pad=0.03)
            cb.ax.tick_params(labelsize=6)
            if r == 0:
                axes[r, c].set_title(name, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return viz.figure_png(fig)


def _table(ev) -> str:
    head = "<tr><th>method</th><th>ABC</th><th>95% CI</th>"
    head += "<th>precision@k</th><th>95% CI</th>" if ev.ground_truth else ""
    head += "<th>IG completeness |error|</th><th>seconds</th></tr>"
    body = []
    for r in sorted(ev.methods.values(), key=lambda r: -r.abc):
        cells = [r.method, f"{r.abc:.4f}", f"[{r.ci[0]:.4f}, {r.ci[1]:.4f}]"]
        if ev.ground_truth:
            cells += ["-", "-"] if r.precision_at_k is None else \
                [f"{r.precision_at_k:.3f}", f"[{r.precision_ci[0]:.3f}, {r.precision_ci[1]:.3f}]"]
        cells += ["-" if r.completeness is None else f"{r.completeness:.2e}", f"{r.seconds:.1f}"]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _token_heatmaps(ev, rows: list[int], tokens_of) -> str:
    """Samples down, methods across; each method column on one numeric colour scale."""
    ids = np.asarray(ev.feeds[ev.ids]) if ev.ids else None
    head, scales = "<tr><th>sample</th>", []
    for name, r in ev.methods.items():
        m = max(float(np.abs(r.scores[i][ev.allowed[i]]).max()) for i in rows)
        scales.append(m)
        head += f"<th>{html.escape(name)}{viz.colour_scale(m, ticks=3)}</th>"
    body = []
    for i in rows:
        keep = ev.allowed[i]
        names = tokens_of(ids[i]) if ids is not None else [f"#{p}" for p in range(len(keep))]
        toks = [t for t, k in zip(names, keep) if k]
        truth = "" if ev.truth is None else " decisive: " + " ".join(
            viz.clean_token(t) for t, k, d in zip(names, keep, ev.truth[i]) if k and d)
        cells = [f"<td>#{i} class {ev.classes[i]}<br><small>{html.escape(truth)}</small></td>"]
        for (name, r), m in zip(ev.methods.items(), scales):
            cells.append(f"<td>{viz.token_spans(toks, r.scores[i][keep], m)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{head}</tr>{''.join(body)}</table>"


def evaluation_html(ev, tokens_of=None, rows: int = 8, title: str | None = None) -> str:
    """The evaluation report: settings, methods table, curves, and per-sample heatmaps of every method."""
    shown = list(range(min(rows, ev.samples)))
    settings = (f"{ev.samples} samples, {ev.steps} steps, {ev.unit_plural} removed by '{ev.mode}', target "
                f"{ev.measure} of the {ev.target} class, attributed tensor {ev.wrt!r}, seed {ev.seed}")
    if ev.units == "token":
        tokens_of = tokens_of or (lambda row: [f"#{int(t)}" for t in row])
        maps = _token_heatmaps(ev, shown, tokens_of)
    else:
        maps = f'<img src="{viz.png_data_uri(image_grid_png(ev, shown))}" alt="heatmaps" style="max-width:100%">'
    options = "".join(f"<li>{html.escape(r.method)}: {html.escape(str(r.settings))}</li>"
                      for r in ev.methods.values() if r.settings)
    title = title or f"Faithfulness of attributions: {ev.model}"
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{viz.STYLE}</style></head>
<body><h2>{html.escape(title)}</h2><p>{html.escape(settings)}</p>
<h3>Methods (sorted by area between the curves, higher is more faithful)</h3>{_table(ev)}
<ul>{options}</ul>
<h3>Perturbation curves</h3><img src="{viz.png_data_uri(curves_png(ev))}" alt="curves" style="max-width:100%">
<h3>Heatmaps of the first {len(shown)} samples</h3>
<p>{"Each method's column has one colour scale (its numbers are the method's own units); hover a token for "
    "its value." if ev.units == "token" else "Each heatmap has its own colour bar (the method's own units)."}</p>
{maps}</body></html>
"""
