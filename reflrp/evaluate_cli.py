"""``reflrp evaluate``: the command line of :func:`reflrp.evaluate` (flags mirror its arguments)."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from .attribute import MEASURES, METHODS

DEFAULT_METHODS = "attnlrp,cp-lrp,gradient,grad-x-input,integrated-gradients,smoothgrad,random,rollout"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def add_parser(sub) -> None:
    ev = sub.add_parser("evaluate", help="faithfulness of attribution methods: perturbation curves, ABC, CIs")
    ev.add_argument("model", help="the ONNX file")
    ev.add_argument("--inputs", help="an .npz (model inputs plus optional 'labels' and 'decisive' arrays) or a "
                                     "folder of them")
    ev.add_argument("--text-file", help="one sentence per line (with --tokenizer) instead of --inputs")
    ev.add_argument("--tokenizer", help="a tokenizer.json: tokenizes --text-file, names tokens in the report, "
                                        "resolves token names in --mode / --ignore-tokens")
    ev.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma list from {','.join(METHODS)} "
                                                               f"(default {DEFAULT_METHODS})")
    ev.add_argument("--steps", type=_positive_int, default=10, help="perturbation steps (curve points beyond the "
                                                                      "start; default 10)")
    ev.add_argument("--samples", type=_positive_int, help="evaluate the first N samples (default all)")
    ev.add_argument("--mode", default="zero", help="how a unit is removed: zero, token:ID or token:NAME (that "
                                                   "token's embedding), blur (images), value:V (default zero)")
    ev.add_argument("--measure", default="logit", choices=MEASURES, help="the target's logit (default) or "
                                                                         "probability")
    ev.add_argument("--target", default="auto", choices=("auto", "labels", "predicted"),
                    help="explain the labels (auto: when the inputs have them) or the predicted class")
    ev.add_argument("--ignore-tokens", help="comma list of token ids or names never removed; default with "
                                            "--tokenizer: its special tokens; 'none' for none")
    ev.add_argument("--ig-steps", type=_positive_int, default=32, help="integrated gradients' steps (default 32)")
    ev.add_argument("--ig-baseline", help="integrated gradients' and occlusion's baseline (default: --mode)")
    ev.add_argument("--sg-samples", type=_positive_int, default=32, help="SmoothGrad's noisy samples (default 32)")
    ev.add_argument("--sg-noise", type=float, default=0.15, help="SmoothGrad's noise level: std / (max - min) of "
                                                                 "the input (default 0.15)")
    ev.add_argument("--epsilon", type=float, help="the LRP presets' stabiliser (default each preset's)")
    ev.add_argument("--patch", type=_positive_int, help="image units of PATCH x PATCH pixels (default 1)")
    ev.add_argument("--dtype", default="float64", choices=("float64", "float32"), help="dtype of every pass "
                                                                                       "(default float64)")
    ev.add_argument("--batch-size", type=_positive_int, help="rows per model.run (default 1024)")
    ev.add_argument("--seed", type=_seed, default=0, help="seeds ties, bootstrap, random and SmoothGrad (default 0)")
    ev.add_argument("--bootstrap", type=_positive_int, default=2000, help="bootstrap resamples (default 2000)")
    ev.add_argument("--rows", type=_positive_int, default=8, help="samples shown as heatmaps in --html (default 8)")
    ev.add_argument("--json", help="write the results as JSON")
    ev.add_argument("--png", help="write the perturbation curves as PNG")
    ev.add_argument("--html", help="write the report (curves, table, heatmaps) as HTML")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_evaluate)


def _dataset(args, model, tok):
    from .cli import UserError
    from .evaluate import load_dataset
    if (args.inputs is None) == (args.text_file is None):
        raise UserError("evaluate: give exactly one of --inputs FILE|DIR and --text-file FILE (with --tokenizer)")
    if args.inputs is not None:
        return load_dataset(args.inputs)
    if tok is None:
        raise UserError("--text-file needs --tokenizer tokenizer.json")
    if not Path(args.text_file).is_file():
        raise UserError(f"--text-file {args.text_file!r} does not exist")
    lines = [ln.strip() for ln in Path(args.text_file).read_text().splitlines() if ln.strip()]
    if not lines:
        raise UserError(f"--text-file {args.text_file!r} has no text")
    return text_feeds(model, tok, lines)


def text_feeds(model, tok, lines) -> dict:
    """Token ids of every line, padded at the end with the tokenizer's [PAD] (id 0 if it has none); an
    ``attention_mask`` input gets 1 on the tokens and 0 on the padding, other integer inputs zeros."""
    from .cli import UserError
    enc = [tok.encode(s).ids for s in lines]
    pad = tok.token_to_id("[PAD]") or 0
    width = max(len(e) for e in enc)
    ids = np.full((len(enc), width), pad, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, :len(e)], mask[i, :len(e)] = e, 1
    ints = [v for v in model.graph.inputs if v.dtype is not None and v.dtype.kind in "iu"]
    if not ints:
        raise UserError("--text-file needs a model fed token ids; its inputs: " + str(list(model.input_names)))
    feeds = {}
    for v in ints:
        feeds[v.name] = (mask if "mask" in v.name else ids if v is ints[0] or "input_ids" in v.name
                         else np.zeros_like(ids)).astype(v.dtype)
    return feeds


def _token_id(tok, spec: str) -> int:
    from .cli import UserError
    if spec.lstrip("-").isdigit():
        return int(spec)
    if tok is None:
        raise UserError(f"token {spec!r} is a name: pass --tokenizer to resolve it, or give its id")
    i = tok.token_to_id(spec)
    if i is None:
        raise UserError(f"the tokenizer has no token {spec!r}")
    return int(i)


def _mode(spec: str, tok) -> str:
    kind, sep, arg = spec.partition(":")
    return f"token:{_token_id(tok, arg)}" if kind == "token" and sep else spec


def _ignored(args, tok):
    if args.ignore_tokens is not None:
        if args.ignore_tokens.strip().lower() == "none":
            return None
        return [_token_id(tok, s.strip()) for s in args.ignore_tokens.split(",") if s.strip()]
    if tok is None:
        return None
    special = [i for i, t in tok.get_added_tokens_decoder().items() if t.special] \
        if hasattr(tok, "get_added_tokens_decoder") else []
    return sorted(special) or None


def _method_options(args, methods, tok) -> dict:
    opts = {}
    baseline = {"baseline": _mode(args.ig_baseline, tok)} if args.ig_baseline else {}
    for m in methods:
        if m == "integrated-gradients":
            opts[m] = {"steps": args.ig_steps, **baseline}
        elif m == "occlusion" and baseline:
            opts[m] = dict(baseline)
        elif m == "smoothgrad":
            opts[m] = {"samples": args.sg_samples, "noise": args.sg_noise}
        elif m in ("attnlrp", "cp-lrp", "epsilon") and args.epsilon is not None:
            opts[m] = {"epsilon": args.epsilon}
    return opts


def cmd_evaluate(args) -> int:
    from .cli import _load, _tokenizer
    from .evaluate import check_methods, evaluate
    model = _load(args.model)
    tok = _tokenizer(args.tokenizer) if args.tokenizer else None
    methods = check_methods(args.methods)
    dataset = _dataset(args, model, tok)
    for path in (args.json, args.png, args.html):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    ev = evaluate(model, dataset, methods=methods, steps=args.steps, mode=_mode(args.mode, tok),
                  measure=args.measure, target=args.target, samples=args.samples, ignore_ids=_ignored(args, tok),
                  patch=args.patch, dtype=args.dtype, batch_size=args.batch_size,
                  method_options=_method_options(args, methods, tok), seed=args.seed, bootstrap=args.bootstrap,
                  progress=not args.no_progress and sys.stderr.isatty())
    print(f"{Path(args.model).name}: {ev.samples} samples, {ev.unit_plural} removed by {ev.mode!r}, {ev.steps} "
          f"steps, target {ev.measure} of the {ev.target} class"
          + (f"; arrays ignored: {list(ev.ignored)}" if ev.ignored else ""))
    print(ev.table())
    _write(args, ev, tok)
    return 0


def dumps(data: dict) -> str:
    """JSON with one key per line and every list of numbers on one line."""
    text = json.dumps(data, indent=1)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def _write(args, ev, tok) -> None:
    from . import report
    if args.json:
        Path(args.json).write_text(dumps(ev.to_json()))
        print(f"wrote JSON: {args.json}")
    if args.png:
        Path(args.png).write_bytes(report.curves_png(ev))
        print(f"wrote PNG: {args.png}")
    if args.html:
        tokens_of = (lambda row: [tok.id_to_token(int(i)) or f"#{int(i)}" for i in row]) if tok else None
        Path(args.html).write_text(report.evaluation_html(ev, tokens_of, rows=args.rows))
        print(f"wrote HTML: {args.html}")
