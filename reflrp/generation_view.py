"""The HTML view of an explained generation: the text, and for the generated token under the pointer
(or clicked) every earlier token coloured by its relevance for it, on a numeric colour scale."""
from __future__ import annotations

import html
import json

import numpy as np


def generation_html(tokens, matrix, prompt_length: int, title: str = "reflrp: explained generation",
                    subtitle: str = "") -> str:
    """``tokens``: the strings of one row (prompt + generated); ``matrix[k, j]``: relevance of token j for
    the k-th generated token. Self-contained (no external scripts)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    spans = []
    for j, tok in enumerate(tokens):
        gen = j >= prompt_length
        k = j - prompt_length
        attrs = f'data-j="{j}"' + (f' data-k="{k}" class="tok gen"' if gen else ' class="tok"')
        if j == prompt_length:  # where the prompt ends and generation begins
            spans.append('<span id="sep" title="generated from here">&#9654;</span>')
        spans.append(f"<span {attrs}>{html.escape(tok)}</span>")
    data = json.dumps({"matrix": np.round(matrix, 8).tolist(), "prompt": prompt_length})
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body{{font-family:sans-serif;margin:2em;max-width:70em}}
.tok{{padding:3px 4px;margin:2px;border-radius:3px;display:inline-block;font-size:20px;border:1px solid transparent}}
.gen{{border-bottom:2px solid #333;cursor:pointer;font-weight:bold}} .gen.active{{outline:2px solid #000}}
#sep{{color:#888;font-size:20px;margin:0 4px}}
#scale{{display:flex;align-items:center;gap:6px;margin-top:1.5em}} #bar{{width:300px;height:14px;
background:linear-gradient(to right,rgb(0,0,255),#fff,rgb(255,0,0));border:1px solid #999}}
</style></head><body>
<h2>{html.escape(title)}</h2><p>{html.escape(subtitle)}</p>
<p>Hover or click a generated (bold, underlined, after &#9654;) token: every token before it is coloured by its relevance for it (red: for, blue: against; grey: not yet seen).</p>
<div id="text">{''.join(spans)}</div>
<div id="scale"><span id="lo">-</span><div id="bar"></div><span id="hi">+</span>
<span id="which" style="margin-left:1em"></span></div>
<script>
const D = {data};
const toks = Array.from(document.querySelectorAll('.tok'));
function rgb(v){{v=Math.max(-1,Math.min(1,v)); if(v>=0) return `rgb(255,${{Math.round(255*(1-v))}},${{Math.round(255*(1-v))}})`;
  return `rgb(${{Math.round(255*(1+v))}},${{Math.round(255*(1+v))}},255)`;}}
function show(k){{const row = D.matrix[k]; const m = Math.max(...row.map(Math.abs)) || 1;
  toks.forEach((t, j) => {{ const seen = j < D.prompt + k;
    t.style.background = seen ? rgb(row[j] / m) : '#eee';
    t.style.color = seen && Math.abs(row[j] / m) > 0.6 ? '#fff' : '#000';  // legible on strong colours
    t.title = j < row.length ? row[j].toPrecision(4) : ''; t.classList.toggle('active', +t.dataset.k === k); }});
  document.getElementById('lo').textContent = (-m).toPrecision(3);
  document.getElementById('hi').textContent = '+' + m.toPrecision(3);
  document.getElementById('which').textContent = 'relevance for generated token ' + (k + 1) + ' (' +
    toks[D.prompt + k].textContent + ')';}}
toks.filter(t => t.dataset.k !== undefined).forEach(t => {{
  t.addEventListener('mouseenter', () => show(+t.dataset.k)); t.addEventListener('click', () => show(+t.dataset.k)); }});
const pick = location.hash.match(/k=(\\d+)/);  // page.html#k=0 opens on the first generated token
if (D.matrix.length) show(pick && +pick[1] < D.matrix.length ? +pick[1] : D.matrix.length - 1);
</script></body></html>
"""
