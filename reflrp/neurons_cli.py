"""``reflrp neurons``: the most relevant units of a tensor over a set of inputs, with their reference
samples (RelMax and ActMax) as token heatmaps (reflrp.neurons.scan and neurons_html)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

RANKINGS = {"relevance": "mean", "abs-relevance": "mean_abs", "frequency": "top_k_rate", "activation": "mean_peak"}


def add_parser(sub) -> None:
    from .evaluate_cli import _positive_int
    nr = sub.add_parser("neurons", help="the most relevant units of a tensor over inputs, with reference samples")
    nr.add_argument("model", help="the ONNX file")
    nr.add_argument("--inputs", required=True, help="an .npz of model inputs (batch axis first), a folder of them, "
                                                    "or a .txt file with one text per line (with --tokenizer)")
    nr.add_argument("--tokenizer", help="a tokenizer.json: tokenizes a .txt, names the tokens, resolves --target")
    nr.add_argument("--tensor", required=True, help="the tensor whose units are ranked (e.g. an MLP activation)")
    nr.add_argument("--k", type=_positive_int, default=10, help="units shown, and the k of the top-k rate "
                                                                "(default 10)")
    nr.add_argument("--n", type=_positive_int, default=5, help="reference samples per unit (default 5)")
    nr.add_argument("--target", help="class index or token name explained for every sample, or 'labels' (the "
                                     "inputs' labels array, one per sample); default: each sample's argmax, at the "
                                     "last position of a language model")
    nr.add_argument("--by", default="relevance", choices=tuple(RANKINGS),
                    help="rank units by mean relevance (default), mean |relevance|, top-k rate, or mean peak "
                         "activation")
    nr.add_argument("--preset", default="attnlrp", help="rule preset (default attnlrp)")
    nr.add_argument("--dtype", default="float64", choices=("float64", "float32"), help="default float64")
    nr.add_argument("--steer", action="append", help="intervention TENSOR:UNITS:SCALE while scanning (repeatable)")
    nr.add_argument("--html", help="write the units and their reference samples as HTML")
    nr.add_argument("--json", help="write the statistics and reference samples as JSON")
    nr.set_defaults(func=cmd_neurons)


def _rows(args, model, tok) -> tuple[list, np.ndarray | None]:
    """The inputs as one feed dict per sample (text lines unpadded; .npz rows cut to their mask), and the
    inputs' ``labels`` when they have them."""
    from .cli import UserError
    from .evaluate import load_dataset
    from .neurons import samples
    path = Path(args.inputs)
    if path.suffix == ".txt":
        if tok is None:
            raise UserError("--inputs FILE.txt needs --tokenizer tokenizer.json")
        if not path.is_file():
            raise UserError(f"--inputs {args.inputs!r} does not exist")
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        if not lines:
            raise UserError(f"--inputs {args.inputs!r} has no text")
        return [_text_row(model, tok.encode(line).ids) for line in lines], None
    data = load_dataset(path)
    feeds = {k: v for k, v in data.items() if k in model.input_names}
    missing = [n for n in model.input_names if n not in feeds and "past_key_values" not in n]
    if missing:
        raise UserError(f"--inputs {args.inputs}: no array for model input(s) {missing}; it holds {sorted(data)}")
    return [_unpadded(model, row) for row in samples(feeds)], data.get("labels")


def _ids_input(model):
    ints = [v.name for v in model.graph.inputs if v.dtype is not None and v.dtype.kind in "iu"
            and "mask" not in v.name and "position" not in v.name]
    return next((n for n in ints if "input_ids" in n), ints[0] if ints else None)


def _text_row(model, ids) -> dict:
    from .cli import UserError
    from .generate import full_feeds, layout_of
    if _ids_input(model) is None:
        raise UserError("--inputs FILE.txt needs a model fed token ids; its inputs: " + str(list(model.input_names)))
    tokens = np.asarray([ids], dtype=np.int64)
    try:
        return full_feeds(model, layout_of(model), tokens)
    except Exception:  # not a language-model layout: the ids, and ones for a mask
        feeds = {_ids_input(model): tokens}
        for v in model.graph.inputs:
            if "mask" in v.name:
                feeds[v.name] = np.ones_like(tokens, dtype=v.dtype)
        return feeds


def _unpadded(model, row: dict) -> dict:
    """A (1, seq) row whose attention mask is one block of ones (padding on the left or the right), cut
    to that block: a language model's last position is then its last token, and no [PAD] is shown."""
    mask = next((v for k, v in row.items() if "attention_mask" in k), None)
    if mask is None or mask.ndim != 2 or mask.all():
        return row
    on = np.flatnonzero(mask[0])
    if on.size == 0 or on[-1] - on[0] + 1 != on.size:
        return row  # holes in the mask: keep the row as it is
    seq, lo, hi = mask.shape[1], int(on[0]), int(on[-1]) + 1
    return {k: (v[:, lo:hi] if v.ndim == 2 and v.shape[1] == seq and v.dtype.kind in "iu" else v)
            for k, v in row.items()}


def _target(args, tok, labels):
    from .cli import UserError
    if args.target is None:
        return None
    if args.target == "labels":
        if labels is None:
            raise UserError("--target labels: the inputs have no 'labels' array")
        return [int(v) for v in labels]
    if args.target.lstrip("-").isdigit():
        return int(args.target)
    if tok is None:
        raise UserError(f"--target {args.target!r} is a name: pass --tokenizer, or give the class index")
    i = tok.token_to_id(args.target)
    if i is None:
        raise UserError(f"--target {args.target!r}: the tokenizer has no such token")
    return int(i)


def cmd_neurons(args) -> int:
    from .cli import UserError, _load, _steering, _tokenizer
    from .neurons import neurons_html, scan
    model = _load(args.model)
    tok = _tokenizer(args.tokenizer) if args.tokenizer else None
    rows, labels = _rows(args, model, tok)
    ids_name = _ids_input(model)

    def tokens_of(i):
        if ids_name is None or ids_name not in rows[i]:
            return None
        ids = np.asarray(rows[i][ids_name]).reshape(-1)
        return [(tok.id_to_token(int(t)) if tok else None) or f"#{int(t)}" for t in ids]

    for path in (args.html, args.json):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    result = scan(model, rows, args.tensor, target=_target(args, tok, labels), preset=args.preset, dtype=args.dtype,
                  interventions=_steering(args.steer) or None)
    stats = result.stats(args.k)
    units = [int(u) for u in stats.top(RANKINGS[args.by], args.k)]
    if stats.n == 0 or not units:
        raise UserError("no units to show")
    print(f"{Path(args.model).name}: tensor {args.tensor!r}, {result.units} units, {stats.n} samples, preset "
          f"{args.preset}; the {len(units)} units with the highest {args.by}:")
    print(f"{'unit':>6} {'mean rel':>11} {'mean |rel|':>11} {'top-' + str(args.k) + ' rate':>11} {'mean peak act':>14}")
    for u in units:
        print(f"{u:>6} {stats.mean[u]:>+11.4g} {stats.mean_abs[u]:>11.4g} {stats.top_k_rate[u]:>11.2f} "
              f"{stats.mean_peak[u]:>+14.4g}")
    if args.json:
        Path(args.json).write_text(json.dumps(_json(args, result, stats, units, tokens_of), indent=1) + "\n")
        print(f"wrote JSON: {args.json}")
    if args.html:
        Path(args.html).write_text(neurons_html(result, stats, units, tokens_of, n=args.n,
                                                title=f"reflrp neurons: {args.tensor}",
                                                subtitle=f"{Path(args.model).name}, preset {args.preset}, units "
                                                         f"ranked by {args.by}, {stats.n} samples",
                                                label_of=lambda i: _explained(result.target[i], tok)))
        print(f"wrote HTML: {args.html}")
    return 0


def _explained(target, tok) -> str:
    """"explained: <class or token>" for a sample's target (one class per row, batch 1)."""
    t = target[0] if isinstance(target, list) and len(target) == 1 else target
    if not isinstance(t, int):
        return ""
    name = tok.id_to_token(t) if tok is not None else None
    return f"explained: {name or t}"


def _json(args, result, stats, units, tokens_of) -> dict:
    def refs(by):
        out = {}
        for u, found in result.references(units, args.n, by).items():
            rows = []
            for r in found:
                toks = tokens_of(r.sample)
                rows.append({"sample": r.sample, "position": r.position, "value": r.value,
                             "token": toks[r.position] if toks and len(toks) == len(r.profile) else None})
            out[u] = rows
        return out
    relmax, actmax = refs("relevance"), refs("activation")
    return {"model": str(args.model), "tensor": args.tensor, "units_in_tensor": result.units, "samples": stats.n,
            "k": stats.k, "by": args.by, "preset": args.preset, "dtype": args.dtype,
            "targets": result.target,
            "units": [{"unit": u, "mean_relevance": float(stats.mean[u]), "mean_abs_relevance": float(stats.mean_abs[u]),
                       "top_k_rate": float(stats.top_k_rate[u]), "mean_peak_activation": float(stats.mean_peak[u]),
                       "relmax": relmax[u], "actmax": actmax[u]} for u in units]}
