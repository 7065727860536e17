#!/usr/bin/env python
"""Train and export the two small *trained* demo models committed under demo/.

Usage:
    python tools/train_demo_models.py                    # both models
    python tools/train_demo_models.py --only digits      # or: --only sentiment

digits     demo/digits_vit.onnx: a 3-layer Vision Transformer (HF ViTForImageClassification
           built from a config: 8x8x1 images, patch 2, hidden 64, 4 heads, GELU) trained on
           scikit-learn's 8x8 digits. Graph input ``pixel_values`` float32 [batch, 1, 8, 8]
           (pixels/16, then (x - PIXEL_MEAN) / PIXEL_STD), output ``logits`` [batch, 10].
           demo/digits_test.npz holds the whole test split, demo/digits_samples.npz two
           test images per class (keys ``pixel_values``, ``labels``).

sentiment  demo/sentiment.onnx + demo/sentiment_tokenizer.json: a 2-layer BERT
           (BertForSequenceClassification from a config, eager attention, no attention
           mask) trained on a synthetic sentiment language with negation. Graph input
           ``input_ids`` int64 [batch, seq] (seq <= 16, [CLS] first, optional [PAD] at the
           end), output ``logits`` [batch, 2] (0 = negative, 1 = positive).
           demo/sentiment_test.npz: ``input_ids`` [n, 12] (padded with [PAD]), ``labels``,
           ``decisive`` bool [n, 12] (the sentiment word and, when negated, its negator),
           ``negated`` bool [n].

Every run is deterministic (fixed seeds, torch.use_deterministic_algorithms, one intra-op
thread); demo/MANIFEST.json records hashes, sizes, configs, accuracies and versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_common import io_summary, op_types, save_npz, strip_stack_traces  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo"
OPSET = 18

# ------------------------------------------------------------------ common


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def set_class_names(path: Path, names: list[str]) -> None:
    """Record the class names as the ONNX metadata property ``class_names`` (JSON), read by ``reflrp explain``."""
    proto = onnx.load(str(path))
    keep = [p for p in proto.metadata_props if p.key != "class_names"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    proto.metadata_props.add(key="class_names", value=json.dumps(names))
    onnx.save(proto, str(path), save_as_external_data=False)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, input_name: str,
                dynamic: dict, class_names: list[str]) -> onnx.ModelProto:
    """dynamo export at opset 18, self-contained (no external data), stack traces stripped."""
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, (example,), dynamo=True, opset_version=OPSET,
                                 input_names=[input_name], output_names=["logits"],
                                 dynamic_shapes=(dynamic,), external_data=False,
                                 verbose=False)
    proto = prog.model_proto
    strip_stack_traces(proto)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path), save_as_external_data=False)
    data = Path(str(path) + ".data")
    if data.exists():  # never expected with external_data=False, but keep the file self-contained
        onnx.save(onnx.load(str(path)), str(path), save_as_external_data=False)
        data.unlink()
    set_class_names(path, class_names)
    return onnx.load(str(path))


def ort_logits(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], feeds)[0]


from reflrp.testing import rel_err  # noqa: E402  (the one relative error)


def file_entry(path: Path) -> dict:
    data = path.read_bytes()
    return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}


class Wrapper(nn.Module):
    """Calls the HF model with one named tensor and returns only ``.logits``; forward's
    argument name is the ONNX input name."""

    def __init__(self, model: nn.Module, input_name: str):
        super().__init__()
        self.model, self.input_name = model, input_name

    def forward(self, x):
        return self.model(**{self.input_name: x}, return_dict=True).logits


def cosine_lr(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + np.cos(np.pi * p))


# ------------------------------------------------------------------ digits

DIGITS_SEED = 0
DIGITS_CONFIG = dict(image_size=8, patch_size=2, num_channels=1, hidden_size=64,
                     num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                     hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     num_labels=10, qkv_bias=True)
DIGITS_TRAIN = dict(epochs=120, batch_size=64, lr=2e-3, weight_decay=0.05, warmup_epochs=5,
                    label_smoothing=0.1, shift_pixels=1, optimizer="AdamW")
PIXEL_MEAN, PIXEL_STD = 0.3, 0.4  # applied to pixels / 16 (train-set mean 0.30, std 0.38)


def _shift_batch(x: torch.Tensor, g: torch.Generator, k: int) -> torch.Tensor:
    """Random translation by up to k pixels per image (zero padding), on raw [0,1] images."""
    n, w = x.shape[0], 2 * k + 1
    padded = torch.nn.functional.pad(x, (k, k, k, k))
    crops = torch.stack([padded[:, :, a:a + 8, b:b + 8] for a in range(w) for b in range(w)], 1)
    pick = torch.randint(0, w * w, (n,), generator=g)
    return crops[torch.arange(n), pick]


def train_digits() -> dict:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from transformers import ViTConfig, ViTForImageClassification

    seed_everything(DIGITS_SEED)
    t0 = time.time()
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]          # [n, 1, 8, 8] in [0, 1]
    y = d.target.astype(np.int64)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=0.2, random_state=0, stratify=y)
    tr, te = np.sort(tr), np.sort(te)
    norm = lambda a: (a - PIXEL_MEAN) / PIXEL_STD  # noqa: E731

    cfg = ViTConfig(**DIGITS_CONFIG)
    cfg._attn_implementation = "eager"
    model = ViTForImageClassification(cfg)
    hp = DIGITS_TRAIN
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    loss_fn = nn.CrossEntropyLoss(label_smoothing=hp["label_smoothing"])
    xtr, ytr = torch.from_numpy(x[tr]), torch.from_numpy(y[tr])
    xte = torch.from_numpy(norm(x[te]))
    g = torch.Generator().manual_seed(DIGITS_SEED)
    steps_per_epoch = int(np.ceil(len(tr) / hp["batch_size"]))
    total, warmup = hp["epochs"] * steps_per_epoch, hp["warmup_epochs"] * steps_per_epoch
    step = 0
    for epoch in range(hp["epochs"]):
        model.train()
        perm = torch.randperm(len(tr), generator=g)
        for b in range(steps_per_epoch):
            j = perm[b * hp["batch_size"]:(b + 1) * hp["batch_size"]]
            xb = norm(_shift_batch(xtr[j], g, hp["shift_pixels"]))
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, warmup, hp["lr"])
            loss = loss_fn(model(pixel_values=xb).logits, ytr[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        if (epoch + 1) % 20 == 0:
            model.eval()
            with torch.no_grad():
                acc = (model(pixel_values=xte).logits.argmax(-1).numpy() == y[te]).mean()
            print(f"[digits] epoch {epoch + 1:3d} loss {loss.item():.3f} test acc {acc:.4f}", flush=True)
    train_s = time.time() - t0

    model.eval()
    wrapped = Wrapper(model, "pixel_values").eval()
    with torch.no_grad():
        torch_logits = wrapped(xte).numpy()
    DEMO.mkdir(exist_ok=True)
    path = DEMO / "digits_vit.onnx"
    proto = export_onnx(wrapped, xte[:2], path, "pixel_values", {0: torch.export.Dim("batch")},
                        [str(c) for c in range(10)])
    xte_np = norm(x[te]).astype(np.float32)
    onnx_logits = ort_logits(path, {"pixel_values": xte_np})
    acc_torch = float((torch_logits.argmax(-1) == y[te]).mean())
    acc_onnx = float((onnx_logits.argmax(-1) == y[te]).mean())
    save_npz(DEMO / "digits_test.npz", {"pixel_values": xte_np, "labels": y[te],
                                         "dataset_index": te.astype(np.int64)})
    pick = np.concatenate([np.flatnonzero(y[te] == c)[:2] for c in range(10)])
    save_npz(DEMO / "digits_samples.npz", {"pixel_values": xte_np[pick], "labels": y[te][pick]})
    print(f"[digits] test accuracy torch {acc_torch:.4f} onnx {acc_onnx:.4f}  "
          f"ort-vs-torch {rel_err(onnx_logits, torch_logits):.2e}  train {train_s:.1f}s", flush=True)
    return {
        **file_entry(path),
        "task": "8x8 handwritten digit classification (scikit-learn load_digits)",
        "architecture": "transformers.ViTForImageClassification (eager attention)",
        "config": DIGITS_CONFIG,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "preprocessing": f"pixel_values = (image / 16 - {PIXEL_MEAN}) / {PIXEL_STD}, shape [batch, 1, 8, 8]",
        "pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD,
        "split": "sklearn train_test_split(test_size=0.2, random_state=0, stratify=labels), indices sorted",
        "train_size": int(len(tr)), "test_size": int(len(te)),
        "training": hp, "train_seconds": round(train_s, 1),
        "test_accuracy": acc_onnx, "test_accuracy_torch": acc_torch,
        "ort_vs_torch_rel_err": rel_err(onnx_logits, torch_logits),
        "seeds": {"torch/numpy/random": DIGITS_SEED, "split random_state": 0},
        "inputs": io_summary(proto.graph.input), "outputs": io_summary(proto.graph.output),
        "op_types": op_types(proto), "opset": OPSET, "exporter": "torch.onnx.export(dynamo=True)",
        "class_names": [str(c) for c in range(10)],
        "test_set": "digits_test.npz", "samples": "digits_samples.npz", "tokenizer": None,
    }


# --------------------------------------------------------------- sentiment

SENT_SEED = 0
SEQ_LEN = 12          # [CLS] + at most 9 words, padded with [PAD] at the end
MAX_POSITIONS = 16
SPECIALS = ["[PAD]", "[UNK]", "[CLS]"]

SUBJECTS = ["the movie", "the film", "this movie", "this film", "the plot", "the acting",
            "the story", "the ending", "the music", "the cast", "the show", "the script"]
NOUNS = ["movie", "film", "plot", "story", "show", "script", "ending", "cast"]
COPULAS = ["was", "is"]
INTENSIFIERS = ["really", "very", "quite", "so", "truly", "pretty"]
TAILS = ["at all", "overall", "to me", "honestly", "in the end"]
POS_ADJ = ["good", "great", "excellent", "wonderful", "amazing", "brilliant", "fun", "enjoyable",
           "superb", "lovely"]
NEG_ADJ = ["bad", "terrible", "awful", "boring", "horrible", "dull", "poor", "weak", "dreadful",
           "mediocre"]
POS_VERB = {"liked": "like", "loved": "love", "enjoyed": "enjoy", "adored": "adore"}
NEG_VERB = {"hated": "hate", "disliked": "dislike", "loathed": "loathe", "despised": "despise"}
NEU_ADJ = ["long", "short", "new", "old", "recent", "french", "silent", "animated"]
NEU_VERB = {"watched": "watch", "saw": "see", "rented": "rent", "finished": "finish"}
NEGATORS = ["not", "never"]
FILLER = NEU_ADJ + list(NEU_VERB) + list(NEU_VERB.values()) + ["the", "this", "a", "it", "i", "did", "what", "movie", "film", "plot", "acting", "story",
          "ending", "music", "cast", "show", "script", "was", "is", "really", "very", "quite", "so",
          "truly", "pretty", "at", "all", "overall", "to", "me", "honestly", "in", "end"]


def vocabulary() -> list[str]:
    words = SPECIALS + NEGATORS + POS_ADJ + NEG_ADJ + list(POS_VERB) + list(POS_VERB.values()) \
        + list(NEG_VERB) + list(NEG_VERB.values()) + FILLER
    return list(dict.fromkeys(words))  # first occurrences, in order


def make_sentence(rng: random.Random, neutral_frac: float = 0.0) -> tuple[list[str], int, list[int]]:
    """One sentence with exactly one sentiment word, optionally negated by a negator 1-2 words
    before it. Returns (words, label, positions of the decisive words in ``words``).

    With probability ``neutral_frac`` the sentiment word is a neutral one instead ("the movie was
    not long"): label -1 (trained towards 50/50), no decisive words."""
    neutral = rng.random() < neutral_frac
    positive = rng.random() < 0.5
    negated = rng.random() < 0.5
    ADJ = NEU_ADJ if neutral else POS_ADJ if positive else NEG_ADJ  # noqa: N806
    VERB = NEU_VERB if neutral else POS_VERB if positive else NEG_VERB  # noqa: N806
    maybe = lambda p, seq: seq if rng.random() < p else []  # noqa: E731
    template = rng.randrange(6)
    words: list[str]
    if template in (0, 1):      # the movie was [not] [very] good [at all]
        adj = rng.choice(ADJ)
        pre = rng.choice(SUBJECTS).split() + [rng.choice(COPULAS)]
        neg = [rng.choice(NEGATORS)] if negated else []
        mid = maybe(0.4, [rng.choice(INTENSIFIERS)])
        words = pre + neg + mid + [adj] + maybe(0.4, rng.choice(TAILS).split())
        s = len(pre) + len(neg) + len(mid)
        n = len(pre) if negated else None
    elif template == 2:         # it was [not] a [truly] great film
        adj = rng.choice(ADJ)
        pre = ["it", rng.choice(COPULAS)]
        neg = [rng.choice(NEGATORS)] if negated else []
        words = pre + neg + ["a", adj, rng.choice(NOUNS)] + maybe(0.3, rng.choice(TAILS).split())
        s = len(pre) + len(neg) + 1
        n = len(pre) if negated else None
    elif template == 3:         # i [really] liked the acting / i never liked the plot
        past = rng.choice(list(VERB))
        if negated:
            if rng.random() < 0.5:
                pre = ["i", "never"] + maybe(0.3, [rng.choice(["really", "truly"])])
                n = 1
            else:
                pre = ["i", "did", "not"] + maybe(0.3, [rng.choice(["really", "truly"])])
                n = 2
                past = VERB[past]
        else:
            pre = ["i"] + maybe(0.5, [rng.choice(["really", "truly", "quite"])])
            n = None
        words = pre + [past] + rng.choice(SUBJECTS).split() + maybe(0.3, rng.choice(TAILS).split())
        s = len(pre)
    elif template == 4:         # what a [truly] great movie  /  what a not so great movie
        adj = rng.choice(ADJ)
        neg = ["not", "so"] if negated else maybe(0.4, [rng.choice(INTENSIFIERS)])
        words = ["what", "a"] + neg + [adj, rng.choice(NOUNS)]
        s = 2 + len(neg)
        n = 2 if negated else None
    else:                       # this film is [not] bad at all  (tail first-class)
        adj = rng.choice(ADJ)
        pre = rng.choice(SUBJECTS).split() + [rng.choice(COPULAS)]
        neg = [rng.choice(NEGATORS)] if negated else []
        words = pre + neg + [adj] + rng.choice(TAILS).split()
        s = len(pre) + len(neg)
        n = len(pre) if negated else None
    assert s - (n if n is not None else s) <= 2
    assert len(words) <= SEQ_LEN - 1, words
    if neutral:
        return words, -1, []
    return words, int(positive != negated), sorted([s] + ([n] if n is not None else []))


def make_dataset(n_train: int, n_test: int, seed: int, neutral_frac: float):
    """Unique sentences; the test sentences never occur in the training set. The training set has
    a fraction ``neutral_frac`` of neutral sentences (label -1), the test set none."""
    rng = random.Random(seed)
    seen, data = set(), []
    while len(data) < n_train + n_test:
        words, label, dec = make_sentence(rng, neutral_frac)
        key = " ".join(words)
        if key in seen or (label < 0 and len(data) >= n_train):
            continue
        seen.add(key)
        data.append((words, label, dec))
    return data[:n_train], data[n_train:]


def build_tokenizer(vocab: list[str]):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.add_special_tokens(SPECIALS)
    tok.post_processor = TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", vocab.index("[CLS]"))])
    return tok


def encode(data, tok) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    pad = tok.token_to_id("[PAD]")
    ids = np.full((len(data), SEQ_LEN), pad, np.int64)
    labels = np.zeros(len(data), np.int64)
    decisive = np.zeros((len(data), SEQ_LEN), bool)
    negated = np.zeros(len(data), bool)
    for i, (words, label, dec) in enumerate(data):
        enc = tok.encode(" ".join(words)).ids
        assert len(enc) == len(words) + 1 and tok.token_to_id("[UNK]") not in enc, words
        ids[i, :len(enc)] = enc
        labels[i] = label
        decisive[i, [d + 1 for d in dec]] = True   # +1: [CLS] in front
        negated[i] = len(dec) == 2
        if dec:
            assert words[dec[-1]] not in FILLER and (len(dec) == 1 or words[dec[0]] in NEGATORS), words
    return ids, labels, decisive, negated


SENT_CONFIG = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                   hidden_act="gelu", max_position_embeddings=MAX_POSITIONS, type_vocab_size=1,
                   hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0, num_labels=2,
                   pad_token_id=0, classifier_dropout=0.1)
SENT_TRAIN = dict(n_train=6000, n_test=1000, epochs=20, batch_size=64, lr=1e-3, weight_decay=0.1,
                  warmup_epochs=1, optimizer="AdamW", label_smoothing=0.0, filler_swap=0.3,
                  neutral_frac=0.2,
                  padding="each batch padded with [PAD] to a random length in [longest, 12], no "
                          "attention mask, so the model also works unpadded")
# Two training choices make the attributions of this demo model land on the decisive words;
# without them the model still reaches 100 % test accuracy but is a poorer LRP demo:
# filler_swap: each neutral (non-decisive, non-special) training token is replaced, with this
#   probability, by a random neutral word (the label depends only on the decisive words). Without
#   it the model routed the sentiment of "i liked the music" / "it was not a good film" through
#   the neighbouring "the" / "a", and AttnLRP's top token was a decisive word in 88-92 % of the
#   test sentences.
# neutral_frac: 20 % of the training sentences carry a neutral word instead of the sentiment word
#   ("the movie was not long") and are trained towards 50/50. Without them some seeds learned
#   "positive (or negative) unless there is evidence against it", with the relevance of the
#   default class on [CLS]: over seeds 0-3 the AttnLRP bar was 99/99/96/82 %; with them (and
#   20 epochs) seeds 0/2/4 gave 100/98/100 %.


def build_sentiment_model(vocab_size: int) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification
    cfg = BertConfig(vocab_size=vocab_size, **SENT_CONFIG)
    cfg._attn_implementation = "eager"
    return BertForSequenceClassification(cfg)


def train_sentiment() -> dict:
    seed_everything(SENT_SEED)
    t0 = time.time()
    vocab = vocabulary()
    tok = build_tokenizer(vocab)
    hp = SENT_TRAIN
    train, test = make_dataset(hp["n_train"], hp["n_test"], SENT_SEED, hp["neutral_frac"])
    xtr, ytr, dtr, _ = encode(train, tok)
    filler_ids = torch.tensor([tok.token_to_id(w) for w in FILLER])
    swappable = torch.from_numpy(~dtr & (xtr != tok.token_to_id("[PAD]")) & (xtr != tok.token_to_id("[CLS]")))
    xte, yte, dte, nte = encode(test, tok)
    lens_tr = (xtr != 0).sum(1)

    model = build_sentiment_model(len(vocab))
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    loss_fn = nn.CrossEntropyLoss(label_smoothing=hp["label_smoothing"])
    g = torch.Generator().manual_seed(SENT_SEED)
    rng = np.random.default_rng(SENT_SEED)
    steps_per_epoch = int(np.ceil(len(train) / hp["batch_size"]))
    total, warmup = hp["epochs"] * steps_per_epoch, hp["warmup_epochs"] * steps_per_epoch
    # targets as probabilities: one-hot, or 50/50 for the neutral sentences (label -1)
    ytr_t = torch.from_numpy(np.where(ytr[:, None] < 0, 0.5, np.eye(2)[np.maximum(ytr, 0)])).float()
    xtr_t, xte_t = torch.from_numpy(xtr), torch.from_numpy(xte)
    step = 0
    for epoch in range(hp["epochs"]):
        model.train()
        perm = torch.randperm(len(train), generator=g)
        for b in range(steps_per_epoch):
            j = perm[b * hp["batch_size"]:(b + 1) * hp["batch_size"]]
            longest = int(lens_tr[j.numpy()].max())
            length = int(rng.integers(longest, SEQ_LEN + 1))
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, warmup, hp["lr"])
            xb = xtr_t[j, :length]
            if hp["filler_swap"] > 0:  # replace neutral words by random neutral words
                swap = swappable[j, :length] & (torch.rand(xb.shape, generator=g) < hp["filler_swap"])
                xb = torch.where(swap, filler_ids[torch.randint(0, len(filler_ids), xb.shape, generator=g)], xb)
            loss = loss_fn(model(input_ids=xb).logits, ytr_t[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        if (epoch + 1) % 5 == 0:
            model.eval()
            with torch.no_grad():
                acc = (model(input_ids=xte_t).logits.argmax(-1).numpy() == yte).mean()
            print(f"[sentiment] epoch {epoch + 1:3d} loss {loss.item():.3f} test acc {acc:.4f}", flush=True)
    train_s = time.time() - t0

    model.eval()
    wrapped = Wrapper(model, "input_ids").eval()
    with torch.no_grad():
        torch_logits = wrapped(xte_t).numpy()
        # the same sentences without padding (one forward per length)
        lens_te = (xte != 0).sum(1)
        unpadded_pred = np.empty(len(test), np.int64)
        for L in np.unique(lens_te):
            m = lens_te == L
            unpadded_pred[m] = wrapped(xte_t[torch.from_numpy(m), :L]).argmax(-1).numpy()
    DEMO.mkdir(exist_ok=True)
    path = DEMO / "sentiment.onnx"
    proto = export_onnx(wrapped, xte_t[:2], path, "input_ids",
                        {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", min=2, max=MAX_POSITIONS)},
                        ["negative", "positive"])
    onnx_logits = ort_logits(path, {"input_ids": xte})
    acc_torch = float((torch_logits.argmax(-1) == yte).mean())
    acc_onnx = float((onnx_logits.argmax(-1) == yte).mean())
    acc_unpadded = float((unpadded_pred == yte).mean())
    acc_negated = float((onnx_logits.argmax(-1) == yte)[nte].mean())
    tok_path = DEMO / "sentiment_tokenizer.json"
    tok.save(str(tok_path), pretty=True)
    save_npz(DEMO / "sentiment_test.npz", {"input_ids": xte, "labels": yte, "decisive": dte, "negated": nte})
    print(f"[sentiment] test accuracy torch {acc_torch:.4f} onnx {acc_onnx:.4f} (negated {acc_negated:.4f}, "
          f"unpadded {acc_unpadded:.4f})  ort-vs-torch {rel_err(onnx_logits, torch_logits):.2e}  "
          f"train {train_s:.1f}s", flush=True)
    return {
        **file_entry(path),
        "task": "binary sentiment of a synthetic language with negation (one sentiment word per "
                "sentence, optionally negated by 'not'/'never' 1-2 words before it); the training "
                "set also has neutral sentences (neutral_frac) trained towards 50/50, the test set none",
        "architecture": "transformers.BertForSequenceClassification (eager attention, post-LN, "
                        "pooler on [CLS], no attention mask)",
        "config": {"vocab_size": len(vocab), **SENT_CONFIG},
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "preprocessing": "tokenizers.Tokenizer.from_file('sentiment_tokenizer.json').encode(text).ids "
                         "([CLS] prepended); optionally pad with [PAD] (id 0) at the end up to 12",
        "train_size": len(train), "test_size": len(test), "seq_len_test_set": SEQ_LEN,
        "max_seq": MAX_POSITIONS,
        "training": hp, "train_seconds": round(train_s, 1),
        "test_accuracy": acc_onnx, "test_accuracy_torch": acc_torch,
        "test_accuracy_negated": acc_negated, "test_accuracy_unpadded": acc_unpadded,
        "ort_vs_torch_rel_err": rel_err(onnx_logits, torch_logits),
        "seeds": {"torch/numpy/random": SENT_SEED, "sentence generator": SENT_SEED},
        "inputs": io_summary(proto.graph.input), "outputs": io_summary(proto.graph.output),
        "op_types": op_types(proto), "opset": OPSET, "exporter": "torch.onnx.export(dynamo=True)",
        "class_names": ["negative", "positive"],
        "tokenizer": tok_path.name, "tokenizer_sha256": hashlib.sha256(tok_path.read_bytes()).hexdigest(),
        "vocabulary": vocab,
        "test_set": "sentiment_test.npz (input_ids [n, 12], labels [n], decisive bool [n, 12], negated [n])",
        "examples": [" ".join(w) + f" -> {['negative', 'positive'][lab]}" for w, lab, _ in test[:8]],
    }


# -------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["digits", "sentiment"], help="train just this model")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)  # deterministic float reductions; the models are tiny
    import transformers
    transformers.logging.set_verbosity_error()  # e.g. 'pass an attention_mask': deliberate
    DEMO.mkdir(exist_ok=True)
    manifest_path = DEMO / "MANIFEST.json"
    manifest = {"generator": "python tools/train_demo_models.py", "models": {}}
    if manifest_path.exists():
        manifest["models"] = json.loads(manifest_path.read_text()).get("models", {})
    todo = [args.only] if args.only else ["digits", "sentiment"]
    for name in todo:
        entry = {"digits": train_digits, "sentiment": train_sentiment}[name]()
        entry.update(torch=torch.__version__, transformers=transformers.__version__, onnx=onnx.__version__)
        manifest["models"][name] = entry
    manifest["models"] = dict(sorted(manifest["models"].items()))
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    for name in todo:
        e = manifest["models"][name]
        print(f"{name:10s} {e['file']:20s} {e['size_bytes'] / 1024:7.1f} KiB  test acc {e['test_accuracy']:.4f}  "
              f"train {e['train_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
