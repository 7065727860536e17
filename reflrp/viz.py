"""Heatmaps: tokens in the terminal (ANSI colour, or signs without it), self-contained HTML, PNG
(matplotlib); images as PNG overlays of pixel/patch relevance."""
from __future__ import annotations

import html
import os
import sys
from typing import Sequence

import numpy as np


def clean_token(tok: str) -> str:
    """Drop subword markers (``##``, ``Ġ``, ``▁``) for display."""
    for marker in ("##", "Ġ", "▁", "</w>"):
        tok = tok.replace(marker, "")
    return tok or " "


def normalise(scores: np.ndarray) -> np.ndarray:
    """Scale to [-1, 1] by the largest magnitude (zeros stay zero)."""
    s = np.asarray(scores, dtype=np.float64)
    m = np.abs(s).max() if s.size else 0.0
    return s / m if m > 0 else s


def _rgb(v: float) -> tuple[int, int, int]:
    """Diverging map: blue (negative) - white - red (positive)."""
    v = float(np.clip(v, -1, 1))
    if v >= 0:
        return 255, int(255 * (1 - v)), int(255 * (1 - v))
    return int(255 * (1 + v)), int(255 * (1 + v)), 255


def terminal(tokens: Sequence[str], scores, color: bool | None = None) -> str:
    """One line of tokens; background colour by relevance where the terminal has colour, else each
    token is followed by its signed relevance in brackets (``good[+0.82]``)."""
    if color is None:
        color = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None and os.environ.get("TERM") != "dumb"
    norm = normalise(scores)
    parts = []
    for tok, v in zip(tokens, norm):
        tok = clean_token(tok)
        if color:
            r, g, b = _rgb(v)
            parts.append(f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{tok}\x1b[0m")
        else:
            parts.append(f"{tok}[{v:+.2f}]")
    return " ".join(parts)


def colour_scale(maximum: float, ticks: int = 5, label: str = "") -> str:
    """A numeric colour scale: the diverging map from ``-maximum`` to ``+maximum`` with tick values."""
    stops = ", ".join(f"rgb{_rgb(v)}" for v in np.linspace(-1, 1, 9))
    values = np.linspace(-maximum, maximum, ticks)
    shift = ["translateX(0)"] + ["translateX(-50%)"] * (ticks - 2) + ["translateX(-100%)"]  # end labels inside
    marks = "".join(f'<span style="left:{100 * i / (ticks - 1):.1f}%;transform:{t}">{v:+.3g}</span>'
                    for i, (v, t) in enumerate(zip(values, shift)))
    return (f'<div class="scale"><div class="bar" style="background:linear-gradient(to right, {stops})"></div>'
            f'<div class="ticks">{marks}</div>{f"<div class=scalelabel>{html.escape(label)}</div>" if label else ""}'
            "</div>")


STYLE = """body{font-family:sans-serif;margin:2em;} .tok{padding:3px 4px;margin:2px;border-radius:3px;
display:inline-block;font-size:18px;border:1px solid #eee;} .scale{width:260px;margin:6px 0 22px 0;}
.scale .bar{height:12px;border:1px solid #999;} .scale .ticks{position:relative;height:14px;font-size:11px;}
.scale .ticks span{position:absolute;transform:translateX(-50%);top:2px;} .scalelabel{font-size:11px;color:#555;
margin-top:4px;} table{border-collapse:collapse;} td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;}
th{background:#f4f4f4;} .row{margin:10px 0;} .label{font-size:13px;color:#444;margin-bottom:2px;}
td .tok{font-size:14px;padding:2px 3px;margin:1px;} th .scale{width:170px;margin:6px auto 16px auto;}"""


def token_spans(tokens: Sequence[str], scores, maximum: float | None = None) -> str:
    """Tokens coloured by ``scores / maximum`` (default: the largest |score|), the value on hover."""
    raw = np.asarray(scores, dtype=np.float64)
    m = float(np.abs(raw).max()) if maximum is None and raw.size else (maximum or 0.0)
    spans = []
    for tok, v in zip(tokens, raw):
        r, g, b = _rgb(v / m if m > 0 else 0.0)
        spans.append(f'<span class="tok" style="background:rgb({r},{g},{b})" title="{v:+.6g}">'
                     f"{html.escape(clean_token(tok))}</span>")
    return "".join(spans)


def html_rows(rows, title: str = "reflrp relevance", subtitle: str = "", extra: str = "") -> str:
    """A self-contained page: one line of coloured tokens per ``(label, tokens, scores)`` row, all on one
    numeric colour scale (the largest |score| of any row), then ``extra`` HTML."""
    rows = list(rows)
    m = max((float(np.abs(np.asarray(s, dtype=np.float64)).max()) for _, _, s in rows if np.size(s)), default=0.0)
    body = "".join(f'<div class="row"><div class="label">{html.escape(label)}</div>{token_spans(t, s, m)}</div>'
                   for label, t, s in rows)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body><h2>{html.escape(title)}</h2><p>{html.escape(subtitle)}</p>
{colour_scale(m, label="relevance (one scale for every row; hover a token for its value)")}{body}{extra}</body></html>
"""


def html_page(tokens: Sequence[str], scores, title: str = "reflrp relevance", subtitle: str = "") -> str:
    """A self-contained HTML page of one row of tokens (see :func:`html_rows`)."""
    return html_rows([("", tokens, scores)], title, subtitle)


def png_data_uri(png: bytes) -> str:
    import base64
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import io
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        from .errors import ReflrpError
        raise ReflrpError("PNG output needs matplotlib: pip install matplotlib") from None


def token_png(path, tokens: Sequence[str], scores, title: str = "") -> None:
    """Tokens as coloured boxes in a PNG."""
    plt = _pyplot()
    norm = normalise(scores)
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(tokens)), 1.6))
    ax.imshow(norm[None, :], cmap="bwr", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(tokens)), [clean_token(t) for t in tokens], fontsize=12)
    ax.set_yticks([])
    for i, v in enumerate(np.asarray(scores, dtype=np.float64)):
        ax.text(i, 0, f"{v:+.2f}", ha="center", va="center", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def image_png(path, image: np.ndarray, relevance: np.ndarray, title: str = "") -> None:
    """The image beside its pixel relevance (channels summed; patch maps upsampled to the image)."""
    plt = _pyplot()
    img = np.asarray(image, dtype=np.float64)
    rel = np.asarray(relevance, dtype=np.float64)
    if img.ndim == 3:  # C, H, W
        img = img.transpose(1, 2, 0) if img.shape[0] in (3, 4) else img[0]
    if rel.ndim == 3:
        rel = rel.sum(axis=0)
    H, W = img.shape[:2]
    if rel.shape != (H, W):
        rel = np.kron(rel, np.ones((H // rel.shape[0], W // rel.shape[1])))
    m = np.abs(rel).max() or 1.0
    fig, axes = plt.subplots(1, 2, figsize=(6, 3.2))
    axes[0].imshow(img if img.ndim == 3 else img, cmap=None if img.ndim == 3 else "gray")
    axes[0].set_title("input")
    axes[1].imshow(img if img.ndim == 2 else img.mean(-1), cmap="gray", alpha=0.35)
    im = axes[1].imshow(rel, cmap="bwr", vmin=-m, vmax=m, alpha=0.85)
    axes[1].set_title("relevance")
    for a in axes:
        a.axis("off")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
