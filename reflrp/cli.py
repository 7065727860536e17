"""The ``reflrp`` command line: explain, generate, plan, verify, golden, check, ops, conformance, evaluate,
neurons. Its flags mirror the Python arguments of :func:`reflrp.explain` one to one."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from .errors import ReflrpError

DTYPES = ("float64", "float32", "float16", "model")


class UserError(ReflrpError):
    """A bad command line: reported in one line, exit status 2."""


def _load(path: str):
    from .model import load
    return load(path)


def _parse_inputs(specs, model) -> dict:
    """``NAME=FILE.npy``, ``FILE.npz`` (keys = input names; other keys are ignored), or, for a model with
    one input, ``FILE.npy``."""
    from .golden import read_npz
    feeds: dict = {}
    for spec in specs or []:
        if "=" in spec:
            name, file = spec.split("=", 1)
            if name not in model.input_names:
                raise UserError(f"--input {spec!r}: the model has no input {name!r}; inputs: {list(model.input_names)}")
            arrays = read_npz(file, "input file")
            if len(arrays) != 1 and name not in arrays:
                raise UserError(f"--input {spec!r}: {file} holds {sorted(arrays)}; name one with NAME=FILE.npy")
            feeds[name] = arrays.get(name, next(iter(arrays.values())))
        elif spec.endswith(".npz"):
            arrays = read_npz(spec, "input file")
            found = {k: v for k, v in arrays.items() if k in model.input_names}
            if not found:
                raise UserError(f"--input {spec}: no array named like an input {list(model.input_names)}; has {sorted(arrays)}")
            feeds.update(found)
        elif spec.endswith(".npy") and len(model.input_names) == 1:
            feeds[model.input_names[0]] = read_npz(spec, "input file")[Path(spec).stem]
        else:
            raise UserError(f"bad --input {spec!r}: use NAME=FILE.npy or FILE.npz"
                            + (" (or FILE.npy for a one-input model)" if spec.endswith(".npy") else ""))
    return feeds


def describe_inputs(model) -> str:
    return "; ".join(v.describe() for v in model.graph.inputs)


def random_feeds(model, seed: int = 0) -> dict:
    """A deterministic random feed: N(0, 1) floats, token ids in [0, 8), masks of ones; unknown dims 4
    (batch 1)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for i, v in enumerate(model.graph.inputs):
        shape = [d if isinstance(d, int) and d > 0 else (1 if j == 0 else 4) for j, d in enumerate(v.shape or ())]
        dtype = v.dtype or np.dtype(np.float32)
        if dtype.kind in "iu":
            feeds[v.name] = (np.ones(shape) if "mask" in v.name else rng.integers(0, 8, size=shape)).astype(dtype)
        elif dtype.kind == "b":
            feeds[v.name] = np.ones(shape, dtype=bool)
        else:
            feeds[v.name] = rng.normal(size=shape).astype(dtype)
    return feeds


def _text_feeds(args, model):
    if not args.tokenizer:
        raise UserError("--text needs --tokenizer tokenizer.json")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UserError("--text needs the 'tokenizers' package: pip install tokenizers") from None
    if not Path(args.tokenizer).is_file():
        raise UserError(f"tokenizer file {args.tokenizer!r} does not exist")
    tok = Tokenizer.from_file(args.tokenizer)
    enc = tok.encode(args.text)
    ids = [i for i in model.graph.inputs if i.dtype is not None and i.dtype.kind in "iu"]
    if not ids:
        raise UserError("--text needs a model fed token ids; this one's inputs are " + str(list(model.input_names)))
    feeds = {ids[0].name: np.asarray([enc.ids], dtype=np.int64)}
    for v in ids[1:]:
        if "mask" in v.name:
            feeds[v.name] = np.ones((1, len(enc.ids)), dtype=v.dtype)
    return feeds, enc.tokens


def _target(spec):
    if spec is None:
        return None
    try:
        values = [int(v) for v in spec.split(",")]
    except ValueError:
        raise UserError(f"--target {spec!r}: give a class index or a comma list, one per batch row") from None
    return np.asarray(values if len(values) > 1 else values[0])


def _json_object(flag: str, specs):
    """A repeatable flag given as one JSON object: that object (None when the flag is given as pairs)."""
    if len(specs) != 1 or not specs[0].lstrip().startswith("{"):
        return None
    try:
        return json.loads(specs[0])
    except ValueError as exc:
        raise UserError(f"{flag} {specs[0]!r} is not valid JSON: {exc}") from None


def _rules(specs):
    """``--rules KEY=RULE`` (repeatable; KEY an op type, node-name glob or ``re:`` regex) or one JSON object."""
    if not specs:
        return None
    given = _json_object("--rules", specs)
    if given is not None:
        return given
    rules = {}
    for spec in specs:
        key, sep, rule = spec.rpartition("=")
        if not sep or not key:
            raise UserError(f"--rules {spec!r}: use KEY=RULE (KEY an op type, node-name glob or re:regex)")
        rules[key] = rule
    return rules


def _rule_options(specs):
    """``--option NAME=VALUE`` (repeatable; VALUE a JSON number, boolean or list; NAME a rule parameter, or
    ``TYPE.NAME`` for one layer type) or one JSON object: explain's ``options=``."""
    if not specs:
        return None
    given = _json_object("--option", specs)
    if given is not None:
        return given
    options = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise UserError(f"--option {spec!r}: use NAME=VALUE, e.g. gamma=0.25 or conv.gamma=0.1")
        try:
            options[key] = json.loads(value)
        except ValueError:
            raise UserError(f"--option {spec!r}: the value must be a number, true/false or a JSON list") from None
    return options


def _names(spec):
    return None if spec is None else [s for s in spec.split(",") if s]


def _dtype(value):
    return None if value == "model" else value


def _select_row(feeds, row):
    if row is None:
        return feeds
    out = {}
    for k, v in feeds.items():
        if v.ndim == 0 or row >= v.shape[0] or row < -v.shape[0]:
            raise UserError(f"--row {row} is out of range for input {k!r} of shape {v.shape}")
        out[k] = v[row:row + 1] if row != -1 else v[-1:]
    return out


def _explain_options(args) -> dict:
    """The keyword arguments of reflrp.explain given by the command line."""
    return dict(target=_target(args.target), preset=args.preset, dtype=_dtype(args.dtype), epsilon=args.epsilon,
                wrt=_names(args.wrt), rules=_rules(args.rules), options=_rule_options(args.option), output=args.output,
                checkpoint=getattr(args, "checkpoint", None), keep=_names(getattr(args, "keep", None)),
                device=getattr(args, "device", None))


def _feeds_for(args, model):
    if args.text is not None:
        return _text_feeds(args, model)
    feeds = _parse_inputs(args.input, model)
    if args.random:
        feeds = {**random_feeds(model, args.random_seed), **feeds}
    if not feeds:
        raise UserError(f"no inputs: pass --input NAME=FILE.npy / FILE.npz, --text with --tokenizer, or --random; "
                        f"the model's inputs: {describe_inputs(model)}")
    feeds = _select_row(feeds, args.row)
    return feeds, _id_tokens(args, model, feeds)


def _tokenizer(path):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UserError("--tokenizer needs the 'tokenizers' package: pip install tokenizers") from None
    if not Path(path).is_file():
        raise UserError(f"tokenizer file {path!r} does not exist")
    return Tokenizer.from_file(str(path))


def _id_tokens(args, model, feeds):
    """With --tokenizer and fed ids: the token strings of every row (a list per row), else None."""
    ids = [v.name for v in model.graph.inputs if v.dtype is not None and v.dtype.kind in "iu" and "mask" not in v.name]
    if not getattr(args, "tokenizer", None) or not ids or ids[0] not in feeds:
        return None
    tok = _tokenizer(args.tokenizer)
    rows = np.asarray(feeds[ids[0]])
    return [[tok.id_to_token(int(i)) or f"#{int(i)}" for i in row] for row in rows.reshape(len(rows), -1)]


def cmd_explain(args) -> int:
    from .explain import explain
    from .golden import write_golden
    model = _load(args.model)
    for path in (args.html, args.png, args.out):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    feeds, tokens = _feeds_for(args, model)
    att = explain(model, feeds, **_explain_options(args)).numpy()
    _print_attribution(args, model, feeds, tokens, att)
    if att.conservation is not None:
        print("\nconservation:\n" + att.conservation.text(top=4))
    if _wants_deviation(args, model):
        from .deviation import deviation
        options = {k: v for k, v in _explain_options(args).items() if k not in ("dtype", "target", "preset")}
        print("\n" + str(deviation(model, feeds, target=att.target, preset=args.preset, **options)))
    for path, what in ((args.html, "HTML"), (args.png, "PNG"), (args.out, "relevance")):
        if path:
            if what == "relevance":
                write_golden(path, att, feeds, model)
            print(f"wrote {what}: {path}")
    if args.strict and att.conservation is not None and not att.conservation.ok:
        print("reflrp: the relevance books do not close (--strict)", file=sys.stderr)
        return 1
    return 0


def _wants_deviation(args, model) -> bool:
    from .deviation import model_dtype
    if args.deviation != "auto":
        return args.deviation == "on"
    own = model_dtype(model.graph)
    return own.itemsize == 2 and _dtype(args.dtype) not in (None, str(own))


def _print_attribution(args, model, feeds, tokens, att) -> None:
    from . import viz
    rel = att.relevance[att.wrt[0]]
    out = att.outputs[att.output]
    names = _class_names(model)
    print(f"{Path(args.model).name}: preset {args.preset}, dtype {args.dtype}, relevance at {att.wrt[0]} {rel.shape}")
    rows = []
    for b in range(rel.shape[0]):
        tgt = np.asarray(att.target)
        cls = int(tgt[b]) if tgt.ndim == 1 else None
        logit = out[b, -1, cls] if out.ndim == 3 and cls is not None else (out[b, cls] if cls is not None else None)
        label = f"{cls} ({names[cls]})" if names and cls is not None and cls < len(names) else f"{cls}"
        heading = f"row {b}: target class {label}" + (f", logit {logit:.6g}" if logit is not None else "")
        print("\n" + heading)
        if rel.ndim == 3:  # tokens: sum over the hidden size
            scores = rel[b].sum(-1)
            toks = tokens[b] if tokens and isinstance(tokens[0], list) else tokens
            toks = toks or [f"#{i}" for i in range(len(scores))]
            order = np.argsort(-scores)[: args.top]
            print("most relevant tokens: " + ", ".join(f"{viz.clean_token(toks[i])} ({scores[i]:+.4g})" for i in order))
            print(viz.terminal(toks, scores, color=False if args.no_color else None))
            rows.append((heading, toks, scores))
            if b == 0 and args.png:
                viz.token_png(args.png, toks, scores, f"class {label} ({args.preset})")
        else:
            flat = rel[b].reshape(-1)
            order = np.argsort(-flat)[: args.top]
            coords = [np.unravel_index(i, rel[b].shape) for i in order]
            print("most relevant elements: " + ", ".join(f"{tuple(int(c) for c in co)} ({flat[i]:+.4g})" for i, co in zip(order, coords)))
            if b == 0 and args.png and rel[b].ndim < 2:
                raise UserError(f"--png needs token or image inputs; relevance at {att.wrt[0]} has shape {rel.shape}")
            if b == 0 and args.png:
                viz.image_png(args.png, feeds[att.wrt[0]][0] if att.wrt[0] in feeds else rel[b], rel[b],
                              f"class {label} ({args.preset})")
            if b == 0 and args.html:
                raise UserError("--html is for token models; use --png for images")
    if args.html and rows:
        Path(args.html).write_text(viz.html_rows(rows, f"{Path(args.model).name}: relevance at {att.wrt[0]}",
                                                 f"preset {args.preset}, dtype {args.dtype}",
                                                 _flow_html(model, att)))


def _flow_html(model, att) -> str:
    """The "where relevance went" plot of the books (summed over the batch rows), when there are books."""
    if att.conservation is None:
        return ""
    from . import report, viz
    try:
        png = report.relevance_flow_png(att.conservation, model.graph)
    except ReflrpError:  # matplotlib missing: the page without the plot
        return "<p>(the relevance-flow plot needs matplotlib)</p>"
    return ('<h3>Where relevance went (the books, summed over the batch rows)</h3>'
            f'<img src="{viz.png_data_uri(png)}" alt="relevance flow">')


def _class_names(model):
    """Class names from the ONNX metadata property ``class_names`` (a JSON list), if the model has it."""
    try:
        names = json.loads(model.graph.metadata.get("class_names", "null"))
    except ValueError:
        return None
    return names if isinstance(names, list) else None


def cmd_generate(args) -> int:
    from .generate import generate
    from .generation_view import generation_html
    model = _load(args.model)
    if args.text is None:
        raise UserError("generate needs --text (and --tokenizer)")
    feeds, tokens = _text_feeds(args, model)
    ids = next(v for k, v in feeds.items() if "mask" not in k)
    interventions = _steering(args.steer)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(args.tokenizer)
    gen = generate(model, ids, args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                   top_k=args.top_k, seed=args.seed, interventions=interventions, eos_token_id=_eos_id(args.eos, tok))
    words = [tok.id_to_token(int(i)) or f"#{int(i)}" for i in gen.tokens[0]]
    print(" ".join(words[:gen.prompt_length]) + " >> " + " ".join(words[gen.prompt_length:]))
    if args.explain or args.html:
        matrix, att = gen.explain(preset=args.preset)
        for k, r in enumerate(att.conservation):
            top = np.argsort(-matrix[0, k])[:3]
            print(f"  {words[gen.prompt_length + k]!r}: most relevant " +
                  ", ".join(f"{words[j]!r} ({matrix[0, k, j]:+.3g})" for j in top) + f"; books {'ok' if r.ok else 'NOT OK'}")
        if args.html:
            Path(args.html).parent.mkdir(parents=True, exist_ok=True)
            Path(args.html).write_text(generation_html(words, matrix[0], gen.prompt_length,
                                                       subtitle=f"{Path(args.model).name}, preset {args.preset}"))
            print(f"wrote HTML: {args.html}")
    return 0


END_TOKENS = ("[EOS]", "</s>", "<|endoftext|>", "<eos>", "<|eot_id|>")


def _eos_id(spec: str, tok) -> int | None:
    """``--eos``: "auto" (the tokenizer's end token, if it has one of END_TOKENS), "none", or a token / id."""
    if spec == "none":
        return None
    if spec == "auto":
        return next((tok.token_to_id(t) for t in END_TOKENS if tok.token_to_id(t) is not None), None)
    if spec.isdigit():
        return int(spec)
    found = tok.token_to_id(spec)
    if found is None:
        raise UserError(f"--eos {spec!r} is not a token of the tokenizer (give a token, an id, 'auto' or 'none')")
    return found


def _steering(specs):
    """``--steer TENSOR:UNITS:SCALE`` (UNITS a comma list), repeatable."""
    out = {}
    for spec in specs or []:
        parts = spec.rsplit(":", 2)
        if len(parts) != 3:
            raise UserError(f"--steer {spec!r}: use TENSOR:UNITS:SCALE, e.g. mlp_act:3,17:4.0")
        try:
            units, scale = [int(u) for u in parts[1].split(",") if u], float(parts[2])
        except ValueError:
            raise UserError(f"--steer {spec!r}: UNITS are comma-separated integers and SCALE a number") from None
        out[parts[0]] = {"units": units, "scale": scale}
    return out


def cmd_plan(args) -> int:
    print(_load(args.model).plan(args.preset, epsilon=args.epsilon, wrt=_names(args.wrt),
                                 rules=_rules(args.rules), options=_rule_options(args.option)).table())
    return 0


def _default_feeds(model, path):
    ref = Path(path).with_suffix(".ref.npz")
    if ref.is_file():
        data = np.load(ref)
        missing = [k for k in model.input_names if k not in data.files]
        if missing:
            raise UserError(f"{ref} lacks input(s) {missing}; pass --input")
        return {k: data[k] for k in model.input_names}
    return random_feeds(model)


def cmd_verify(args) -> int:
    import onnxruntime as ort
    model = _load(args.model)
    feeds = _parse_inputs(args.input, model) or _default_feeds(model, args.model)
    ours = model.run(feeds)
    try:
        sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
        ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    except Exception as exc:
        raise UserError(f"onnxruntime cannot run {args.model}: {str(exc).splitlines()[0]}") from None
    ok = True
    for name in model.output_names:
        a, b = np.asarray(ours[name], np.float64), np.asarray(ref[name], np.float64)
        # agreement: NaN and +-inf exactly where onnxruntime has them, the finite values within rtol
        same = a.shape == b.shape and np.array_equal(np.isfinite(a), np.isfinite(b)) and \
            np.array_equal(a[np.isinf(b)], b[np.isinf(b)]) and np.array_equal(np.isnan(a), np.isnan(b))
        finite = np.isfinite(b) if same else np.zeros(b.shape, bool)
        err = float(np.abs(a - b)[finite].max() / max(np.abs(b[finite]).max(), 1e-300)) if finite.any() else 0.0
        good = same and err <= args.rtol
        ok &= good
        print(f"{name}: shape {a.shape}, max |reflrp - onnxruntime| / max |onnxruntime| = {err:.3e}  {'ok' if good else 'FAIL'}")
    return 0 if ok else 1


def cmd_golden(args) -> int:
    from . import golden, scale
    opts = _explain_options(args)
    model = _load(args.model)
    golden.check_arguments(model, opts["preset"], opts["dtype"], opts["epsilon"], opts["wrt"], opts["rules"],
                           args.shard_size, opts["options"])
    with scale.client(args.workers, args.scheduler) as client:
        progress = _progress if client is None else ("dask" if args.scheduler else scale.tqdm_progress() or _progress)
        result = golden.run(model, args.inputs, args.out, preset=opts["preset"], dtype=opts["dtype"],
                            epsilon=opts["epsilon"], wrt=opts["wrt"], rules=opts["rules"], options=opts["options"],
                            target=opts["target"],
                            all_tensors=args.all_tensors, force=args.force, progress=progress, output=opts["output"],
                            client=client, per_row=args.per_row, shard_size=args.shard_size,
                            index=True if args.index else None)
    print(f"\n{len(result.written)} golden file(s) written, {len(result.skipped)} already complete "
          f"(fingerprints match), in {args.out}" + (f"; index: {result.index}" if result.index else ""))
    for name, why in result.failed.items():
        print(f"failed: {name}: {why}", file=sys.stderr)
    return 1 if result.failed else 0


def _progress(i, n, label):
    width = 30
    filled = int(width * i / max(n, 1))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {i}/{n} {label[:40]:<40}")
    sys.stderr.flush()


def cmd_check(args) -> int:
    from .golden import compare, read_golden, read_npz
    gold, meta = read_golden(args.golden)
    cand = read_npz(args.candidate, "candidate file")
    if len(gold) == 1 and len(cand) == 1 and next(iter(gold)) not in cand:
        cand = {next(iter(gold)): next(iter(cand.values()))}
    rows = compare(cand, gold, rtol=args.rtol, atol=args.atol)
    for r in rows:
        if "max_abs" in r:
            print(f"{r['tensor']}: max |err| {r['max_abs']:.3e}, rel {r['max_rel']:.3e}, corr {r['corr']:.8f}  "
                  f"{'PASS' if r['ok'] else 'FAIL'} {r['note']}")
        else:
            print(f"{r['tensor']}: FAIL ({r['note']})")
    ok = all(r["ok"] for r in rows)
    print(f"{'PASS' if ok else 'FAIL'} against {args.golden} (preset {meta.get('preset')}, rtol {args.rtol}, atol {args.atol})")
    return 0 if ok else 1


# the roles a node of each kind can take (reflrp.analysis.role_of decides from the graph)
KIND_ROLES = {"activation": ("activation",), "cast": ("activation",), "sum": ("linear",), "linear": ("linear",),
              "rotary": ("rotary",), "contraction": ("linear", "bilinear", "attention-values"),
              "product": ("activation", "region", "normalizer", "gate", "product"),
              "quotient": ("activation", "region", "normalizer"), "elementwise": ("activation",),
              "select": ("select",), "move": ("move",), "layernorm": ("layernorm",), "rmsnorm": ("rmsnorm",),
              "softmax": ("softmax",), "attention": ("attention",), "nonlinear": ("nonlinear",),
              "control": ("control-flow",), "constant": ()}


def cmd_ops(args) -> int:
    from .ops import records
    from .presets import PRESETS

    def rules(preset, kind):
        if kind == "constant":
            return "(constant)"
        return " / ".join(dict.fromkeys(PRESETS[preset].roles.get(r, "error") for r in KIND_ROLES[kind]))

    rows = [("op", "since opsets", "kind", "attnlrp", "cp-lrp", "epsilon", "adjoint")]
    for op, rec in records().items():
        rows.append((op, ",".join(str(s) for s, _ in rec.versions), rec.kind,
                     *[rules(p, rec.kind) for p in ("attnlrp", "cp-lrp", "epsilon")],
                     "yes" if rec.adjoints else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_conformance_export(args) -> int:
    from .conformance import export
    names = export(args.dir, models_dir=args.models, only=args.only,
                   progress=None if args.quiet else (lambda name: sys.stderr.write(f"\r{name[:78]:<78}")))
    if not args.quiet:
        sys.stderr.write("\n")
    kinds = {k: sum(1 for n in names if n.startswith("model/") == (k == "model")) for k in ("node", "model")}
    print(f"wrote {len(names)} cases ({kinds['node']} node, {kinds['model']} model-level) to {args.dir}")
    return 0


def cmd_conformance_run(args) -> int:
    from .conformance import junit_xml, line, resolve_adapter, run_suite, summary
    adapter = resolve_adapter(args.backend)
    outcomes = run_suite(args.dir, adapter, only=args.only,
                         progress=None if args.quiet else (lambda o: print(line(o), flush=True)))
    print(summary(outcomes))
    if args.junit:
        Path(args.junit).write_bytes(junit_xml(outcomes))
    return 1 if any(o.status == "fail" for o in outcomes) else 0


def _relevance_flags(sp, golden: bool = False) -> None:
    from .presets import PRESETS
    sp.add_argument("--preset", default="attnlrp", help=f"rule preset: {', '.join(sorted(PRESETS))} (default attnlrp)")
    sp.add_argument("--dtype", default="float64", choices=DTYPES,
                    help="dtype of the forward and relevance pass: float64 (default, the reference), float32, "
                         "float16, or 'model' for the model's own types")
    sp.add_argument("--epsilon", type=float, default=None, help="LRP stabiliser, >= 0 (default: the preset's)")
    sp.add_argument("--target", default=None, help="class index, or a comma list (one per batch row); default argmax")
    sp.add_argument("--wrt", help="comma list of tensors to attribute to (default: float inputs / embedding outputs)")
    sp.add_argument("--rules", action="append",
                    help="rule override KEY=RULE (repeatable; KEY an op type, node-name glob or re:regex), or a JSON object")
    sp.add_argument("--option", action="append",
                    help="rule parameter NAME=VALUE (repeatable; e.g. gamma=0.25, conv.gamma=0.1, zero_bias=true), "
                         "or a JSON object")
    sp.add_argument("--output", help="graph output to explain (default the first)")
    if not golden:
        sp.add_argument("--checkpoint", choices=["sqrt"], help="recompute activations in ~sqrt(steps) segments (less memory)")
        sp.add_argument("--keep", help="comma list of latent tensors whose relevance to keep (default all)")
        sp.add_argument("--device", choices=["cpu", "cuda"], help="cpu (default) or cuda (needs cupy and a GPU)")


def _scale_flags(sp) -> None:
    """--workers / --scheduler / --shard-size: run on Dask (the scale extra)."""
    where = sp.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N",
                       help="run on a Dask cluster of N one-thread worker processes here (pip install 'reflrp[scale]')")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on an existing Dask cluster, e.g. tcp://host:8786 (workers see the same paths)")
    sp.add_argument("--shard-size", type=int, metavar="K",
                    help="samples per Dask task (default: about 8 tasks per worker, the last samples one per task)")


class _Parser(argparse.ArgumentParser):
    """Usage errors in the same one-line form as every other error (exit status 2)."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="reflrp", description="Reference LRP (AttnLRP, CP-LRP) for ONNX transformers")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    e = sub.add_parser("explain", help="explain a prediction")
    e.add_argument("model", help="the ONNX file")
    e.add_argument("--input", action="append", help="NAME=FILE.npy or FILE.npz (repeatable); FILE.npy for a one-input model")
    e.add_argument("--random", action="store_true", help="use a deterministic random feed for inputs not given")
    e.add_argument("--random-seed", type=int, default=0, help="seed of --random (default 0)")
    e.add_argument("--row", type=int, default=None, help="use only this batch row of the inputs")
    e.add_argument("--text", help="text to tokenize (with --tokenizer)")
    e.add_argument("--tokenizer", help="a tokenizer.json (tokenizers package)")
    e.add_argument("--out", help="write relevance as a golden .npz")
    e.add_argument("--html", help="write a token heatmap as HTML")
    e.add_argument("--png", help="write a heatmap PNG (tokens or image)")
    e.add_argument("--top", type=int, default=5, help="how many most relevant tokens/elements to print")
    e.add_argument("--no-color", action="store_true", help="no ANSI colours in the terminal heatmap")
    e.add_argument("--strict", action="store_true", help="exit 1 when the relevance books do not close")
    e.add_argument("--deviation", choices=("auto", "on", "off"), default="auto",
                   help="report how far the model's own float type deviates from float64 (reflrp.deviation; "
                        "auto: for float16 / bfloat16 models explained in another dtype)")
    _relevance_flags(e)
    e.set_defaults(func=cmd_explain)

    gn = sub.add_parser("generate", help="generate text with a language-model export (and explain it)")
    gn.add_argument("model", help="the ONNX file (with or without a KV cache)")
    gn.add_argument("--text", help="the prompt")
    gn.add_argument("--tokenizer", help="a tokenizer.json (tokenizers package)")
    gn.add_argument("--max-new-tokens", type=int, default=8, help="how many tokens to generate (default 8)")
    gn.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gn.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    gn.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    gn.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    gn.add_argument("--eos", default="auto",
                    help="stop at this token (or id); 'auto' (default): the tokenizer's end token, 'none': never")
    gn.add_argument("--steer", action="append", help="intervention TENSOR:UNITS:SCALE at every step (repeatable)")
    gn.add_argument("--explain", action="store_true", help="explain every generated token (one relevance pass)")
    gn.add_argument("--preset", default="attnlrp", help="rule preset for --explain (default attnlrp)")
    gn.add_argument("--html", help="write the explained generation as interactive HTML")
    gn.set_defaults(func=cmd_generate)

    pl = sub.add_parser("plan", help="print the role and rule of every node")
    pl.add_argument("model", help="the ONNX file")
    pl.add_argument("--preset", default="attnlrp", help="rule preset (default attnlrp)")
    pl.add_argument("--epsilon", type=float, default=None, help="LRP stabiliser (default: the preset's)")
    pl.add_argument("--wrt", help="comma list of tensors to attribute to")
    pl.add_argument("--rules", action="append", help="rule override KEY=RULE (repeatable)")
    pl.add_argument("--option", action="append", help="rule parameter NAME=VALUE (repeatable), or a JSON object")
    pl.set_defaults(func=cmd_plan)

    v = sub.add_parser("verify", help="compare the forward pass with onnxruntime")
    v.add_argument("model", help="the ONNX file")
    v.add_argument("--input", action="append", help="NAME=FILE.npy or FILE.npz (default: MODEL.ref.npz or random)")
    v.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (default 1e-5)")
    v.set_defaults(func=cmd_verify)

    g = sub.add_parser("golden", help="write golden files for a batch of inputs")
    g.add_argument("model", help="the ONNX file")
    g.add_argument("--inputs", required=True,
                   help="an .npz/.npy file, a folder of them, or a .parquet/.arrow table of token ids (a sample per row)")
    g.add_argument("--out", required=True, help="folder for the golden files")
    g.add_argument("--per-row", action="store_true", help="a sample per row of each .npz/.npy file's leading axis")
    g.add_argument("--all-tensors", action="store_true", help="store every tensor's relevance, not only the inputs'")
    g.add_argument("--force", action="store_true", help="recompute files whose fingerprint differs (else exit 2)")
    g.add_argument("--index", action="store_true", help="also write OUT/index.parquet (always written on Dask)")
    _scale_flags(g)
    _relevance_flags(g, golden=True)
    g.set_defaults(func=cmd_golden)

    c = sub.add_parser("check", help="check another backend's relevance against a golden file")
    c.add_argument("golden", help="a golden .npz")
    c.add_argument("--candidate", required=True, help="the other backend's relevance (.npz, keys = tensor names)")
    c.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (default 1e-5)")
    c.add_argument("--atol", type=float, default=0.0, help="absolute tolerance (default 0)")
    c.set_defaults(func=cmd_check)

    o = sub.add_parser("ops", help="the support table: op, opsets, kind, rule per preset")
    o.set_defaults(func=cmd_ops)

    cf = sub.add_parser("conformance", help="the LRP conformance suite for other backends (docs/conformance.md)")
    csub = cf.add_subparsers(dest="action", required=True, parser_class=_Parser, help="export or run")
    ce = csub.add_parser("export", help="write the suite (node cases and the zoo's model-level cases) to DIR")
    ce.add_argument("dir", help="an empty directory (or a suite written before, which is replaced)")
    ce.add_argument("--models", help="the zoo folder with <name>.onnx and <name>.lxt.npz (default: the repository's "
                                     "models/)")
    ce.add_argument("--only", action="append", help="a glob of case names to write (repeatable)")
    ce.add_argument("--quiet", action="store_true", help="no progress")
    ce.set_defaults(func=cmd_conformance_export)
    cr = csub.add_parser("run", help="run a backend's adapter on a suite: pass / fail / unsupported / skipped")
    cr.add_argument("dir", help="the suite directory")
    cr.add_argument("--backend", required=True, help="package.module:adapter or path/to/file.py:adapter")
    cr.add_argument("--junit", help="also write a JUnit XML report here")
    cr.add_argument("--only", action="append", help="a glob of case names to run (repeatable)")
    cr.add_argument("--quiet", action="store_true", help="only the summary")
    cr.set_defaults(func=cmd_conformance_run)
    from .evaluate_cli import add_parser
    add_parser(sub)
    from .neurons_cli import add_parser as add_neurons
    add_neurons(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UserError as exc:
        print(f"reflrp: error: {exc}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader of stdout left (``| head``): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ReflrpError, OSError) as exc:
        if args.debug:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"reflrp: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nreflrp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
