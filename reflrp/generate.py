"""Generation with a language model export, and its explanation in one relevance pass.

``reflrp.generate(model, input_ids, max_new_tokens)`` decodes greedily (or samples, seeded), using the
export's KV cache when it has one (``past_key_values.<i>.key/value`` inputs, ``present.<i>.key/value``
outputs, as optimum and HF exports name them) and recomputing the whole sequence otherwise: the same
tokens both ways. ``Generation.explain()`` explains every generated token at once: ``targets`` are the
logits that chose each token (at the position before it), so the result is a (generated tokens x all
tokens) relevance matrix per batch row, lower triangular for a causal model, with one book per row.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import FeedError, ReflrpError

PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")


@dataclass
class Layout:
    """How an export is fed: the ids input, an attention mask, position ids, and cache inputs/outputs."""

    ids: str
    logits: str
    mask: str | None = None
    positions: str | None = None
    past: list = field(default_factory=list)  # (input name, matching present output name)

    @property
    def cached(self) -> bool:
        return bool(self.past)


def layout_of(model) -> Layout:
    """Read the feeding convention off the graph's input and output names."""
    inputs = {v.name: v for v in model.graph.inputs}
    ids = next((n for n in inputs if "input_ids" in n), None)
    if ids is None:
        ints = [n for n, v in inputs.items() if v.dtype is not None and v.dtype.kind in "iu" and "mask" not in n]
        if len(ints) != 1:
            raise ReflrpError(f"generate needs a model fed token ids (an input named input_ids); inputs: "
                              f"{[v.describe() for v in model.graph.inputs]}")
        ids = ints[0]
    outputs = model.output_names
    logits = next((o for o in outputs if o == "logits"), outputs[0])
    past = []
    for name in inputs:
        m = PAST.match(name)
        if m:
            present = f"present.{m.group(1)}.{m.group(2)}"
            if present not in outputs:
                raise ReflrpError(f"input {name!r} has no matching output {present!r}: cannot carry the cache")
            past.append((name, present))
    mask = next((n for n in inputs if "attention_mask" in n), None)
    positions = next((n for n in inputs if "position_ids" in n), None)
    return Layout(ids, logits, mask, positions, past)


@dataclass
class Generation:
    """The result of :func:`generate`. ``tokens``: (batch, prompt + new) ids; ``new``: the generated ids;
    ``logits``: (batch, new, vocab), the distribution each new token was chosen from; ``prompt_length``."""

    model: Any
    tokens: np.ndarray
    new: np.ndarray
    logits: np.ndarray
    prompt_length: int
    attention_mask: np.ndarray | None = None
    interventions: dict | None = None

    def explain(self, preset: str = "attnlrp", dtype: Any = "float64", **options):
        """Every generated token explained in one pass: ``(matrix, attribution)`` where ``matrix[b, k, j]``
        is the relevance of token ``j`` (summed over the embedding) for the ``k``-th generated token of
        row ``b``, and ``attribution.conservation[k]`` its books."""
        from .explain import explain
        layout = layout_of(self.model)
        feeds = full_feeds(self.model, layout, self.tokens, self.attention_mask)
        out = self.model.run(feeds, interventions=self.interventions)[layout.logits]
        seeds = []
        for k in range(self.new.shape[1]):
            pos = self.prompt_length + k - 1
            seed = np.zeros(out.shape, dtype=np.float64)
            rows = np.arange(out.shape[0])
            seed[rows, pos, self.new[:, k]] = out[rows, pos, self.new[:, k]] if preset not in (
                "gradient", "grad-x-input") else 1.0
            seeds.append(seed)
        from .analysis import default_wrt
        wrt = options.pop("wrt", None) or [w for w in default_wrt(self.model.graph) if w not in dict(layout.past)]
        att = explain(self.model, feeds, targets=seeds, preset=preset, dtype=dtype, output=layout.logits,
                      interventions=self.interventions, wrt=wrt, **options)
        embedding = att.wrt[0]
        rel = att.relevance[embedding]  # (K, batch, seq, hidden)
        matrix = rel.sum(axis=-1).transpose(1, 0, 2)
        return matrix, att


def full_feeds(model, layout: Layout, tokens, mask=None) -> dict:
    """Feeds that run the whole sequence at once (an empty cache for a KV export)."""
    b, t = tokens.shape
    mask = np.ones((b, t), np.int64) if mask is None else mask
    feeds = {layout.ids: tokens.astype(np.int64)}
    if layout.mask:
        feeds[layout.mask] = mask.astype(np.int64)
    if layout.positions:
        feeds[layout.positions] = positions_of(mask)[:, -t:]
    for name, _ in layout.past:
        feeds[name] = empty_cache(model, name, b)
    return feeds


def positions_of(mask: np.ndarray) -> np.ndarray:
    """Position ids from an attention mask (left padding: the first real token is position 0)."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)


def empty_cache(model, name: str, batch: int) -> np.ndarray:
    """A zero-length cache tensor for input ``name``: (batch, heads, 0, head size) from its declared dims."""
    info = next(v for v in model.graph.inputs if v.name == name)
    shape = list(info.shape or ())
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in (shape[1], shape[3])):
        raise ReflrpError(f"cache input {info.describe()}: heads and head size must be fixed dims to start empty")
    return np.zeros((batch, shape[1], 0, shape[3]), dtype=info.dtype or np.float32)


def _choose(logits, do_sample: bool, temperature: float, top_k: int | None, rng) -> np.ndarray:
    if not do_sample:
        return np.argmax(logits, axis=-1)
    z = logits.astype(np.float64) / temperature
    if top_k:
        cut = np.sort(z, axis=-1)[:, -top_k][:, None]
        z = np.where(z < cut, -np.inf, z)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=row) for row in p])


def generate(model, input_ids, max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, seed: int = 0, attention_mask=None, eos_token_id: int | None = None,
             use_cache: bool | None = None, interventions=None, dtype: Any = None) -> Generation:
    """Decode ``max_new_tokens`` after ``input_ids`` (batch, seq): greedy, or sampled with ``temperature``
    and ``top_k`` from a seeded generator. ``use_cache``: None uses the export's KV cache when it has one;
    False recomputes the whole sequence each step (same tokens). ``interventions`` apply at every step.
    Rows that produced ``eos_token_id`` keep producing it; decoding stops once every row has."""
    from .model import Model, load
    model = model if isinstance(model, Model) else load(model)
    layout = layout_of(model)
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.dtype.kind not in "iu" or ids.shape[1] == 0:
        raise FeedError(f"input_ids must be a (batch, seq) integer array with seq >= 1, got {ids.dtype} {ids.shape}")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ReflrpError(f"max_new_tokens must be a positive integer, not {max_new_tokens!r}")
    if do_sample and not (temperature > 0):
        raise ReflrpError(f"temperature must be > 0, not {temperature!r}")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ReflrpError(f"top_k must be a positive integer or None, not {top_k!r}")
    _check_steps(interventions)
    cached = layout.cached if use_cache is None else bool(use_cache)
    if cached and not layout.cached:
        raise ReflrpError("use_cache=True but the export has no past_key_values inputs / present outputs")
    mask = np.ones(ids.shape, np.int64) if attention_mask is None else np.asarray(attention_mask, np.int64)
    rng = np.random.default_rng(seed)
    tokens, chosen_logits, done = ids.astype(np.int64), [], np.zeros(ids.shape[0], bool)
    feeds = full_feeds(model, layout, tokens, mask)
    for _ in range(max_new_tokens):
        out = model.run(feeds, dtype=dtype, interventions=interventions)
        last = out[layout.logits][:, -1]
        nxt = _choose(last, do_sample, temperature, top_k, rng)
        if eos_token_id is not None:
            nxt = np.where(done, eos_token_id, nxt)
            done |= nxt == eos_token_id
        chosen_logits.append(last)
        tokens = np.concatenate([tokens, nxt[:, None].astype(np.int64)], axis=1)
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], axis=1)
        if done.all():
            break
        feeds = _next_feeds(model, layout, cached, tokens, mask, out)
    new = tokens[:, ids.shape[1]:]
    return Generation(model, tokens, new, np.stack(chosen_logits, axis=1), ids.shape[1],
                      None if attention_mask is None else mask, interventions)


def _check_steps(interventions) -> None:
    """Every step has another sequence length: an ``add`` vector may span only the unit axis."""
    from .interventions import InterventionError
    for name, spec in (interventions or {}).items():
        if isinstance(spec, dict) and "add" in spec and any(d != 1 for d in np.shape(spec["add"])[:-1]):
            raise InterventionError(f"interventions[{name!r}]: generate runs other sequence lengths at every step; "
                                    f"'add' must be one vector over the units (shape (units,)), not "
                                    f"{np.shape(spec['add'])}")


def _next_feeds(model, layout: Layout, cached: bool, tokens, mask, out) -> dict:
    if not cached:
        return full_feeds(model, layout, tokens, mask)
    feeds = {layout.ids: tokens[:, -1:]}
    if layout.mask:
        feeds[layout.mask] = mask
    if layout.positions:
        feeds[layout.positions] = positions_of(mask)[:, -1:]
    for name, present in layout.past:
        feeds[name] = out[present]
    return feeds
