"""The classifier lifecycle: build, load pretrained or cached weights, else train once and cache.

Models without pretrained weights are trained by the harness with their ``recipe`` and cached by a
hash of everything that determined the weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from bench.accel import precision_scope
from bench.cache import Cache, stable_hash, tensors_digest
from bench.data import BenchDataset
from bench.errors import CheckpointError, ConfigError
from bench.models.zoo import Classifier
from bench.registry import MODELS
from bench.runtime import check_finite, rng_isolated
from bench.train import train_classifier

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A ready classifier plus the hash that identifies its weights (for downstream cache keys)."""

    name: str
    model: Classifier
    key: str
    meta: dict[str, Any]


RECIPE_OPTIONS = ("epochs", "lr", "batch_size", "train_images")
PROBE_IMAGES = 1000  # test images whose correctness verifies cached weights on every load


def recipe_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The training-recipe part of model options (what also applies to surrogate models)."""
    return {k: v for k, v in opts.items() if k in RECIPE_OPTIONS}


def check_recipe(model: str, recipe: dict[str, Any]) -> dict[str, Any]:
    """``recipe`` with each option checked (a one-line ConfigError naming it otherwise): epochs
    and batch_size integers >= 1, lr a number > 0, train_images an integer >= 1 or null (all).
    Zero epochs would cache and evaluate an untrained classifier."""
    out = dict(recipe)
    for name in ("epochs", "batch_size", "train_images"):
        value = out.get(name)
        if name == "train_images" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
                or value < 1:
            raise ConfigError(f"--model-opt {name}={value!r} for {model} must be an integer >= "
                              f"1: pass e.g. --model-opt {model}.{name}="
                              f"{Classifier.recipe.get(name, 1000)}.")
        out[name] = int(value)
    lr = out.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ConfigError(f"--model-opt lr={lr!r} for {model} must be a number > 0: pass e.g. "
                          f"--model-opt {model}.lr=0.001.")
    return out


def correct_on(model: Classifier, dataset: BenchDataset, split: str, n: int | None,
               device: torch.device, batch_size: int = 500) -> torch.Tensor:
    """Per-image correctness of ``model`` on the first ``n`` images of ``split`` (all when
    None), decoded and classified one batch at a time: memory does not grow with the split
    (ImageNet val is 54 GB at 299 px)."""
    was = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for x, y in dataset.iter_tensors(split, n, batch_size):
            logits = check_finite(model(x.to(device)), type(model).__name__)
            out.append(logits.argmax(1).cpu() == y)
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def probe(model: Classifier, dataset: BenchDataset, device: torch.device) -> dict[str, int]:
    """How many of the first :data:`PROBE_IMAGES` test images ``model`` classifies correctly:
    recorded when the weights are trained and checked whenever they are loaded again."""
    return probe_of(correct_on(model, dataset, "test", PROBE_IMAGES, device))


def probe_of(correct: torch.Tensor) -> dict[str, int]:
    """:func:`probe` read off the per-image correctness of the whole test split (bool; from
    :func:`correct_on`, whose batches start at image 0 either way, so the first
    :data:`PROBE_IMAGES` flags are the ones :func:`probe` computes, bit for bit)."""
    ok = correct[:PROBE_IMAGES]
    return {"images": len(ok), "correct": int(ok.sum())}


class PendingClassifier:
    """Classifier ``name`` for ``dataset``, built but not yet loaded: :attr:`key` (the hash its
    weights are cached under) is known without training; :meth:`load` loads pretrained or cached
    weights, else trains them once (a visible progress bar) and caches them.

    Lets a caller that only needs the key (e.g. the cache key of a defense trained against this
    model) avoid training a classifier that nothing will run.
    """

    def __init__(self, name: str, dataset: BenchDataset, *, cache: Cache, device: torch.device,
                 seed: int = 0, **opts: Any) -> None:
        info = dataset.info
        self.name, self.dataset, self.cache = name, dataset, cache
        self.device, self.seed = device, seed
        self.entry = MODELS.get(name)
        base_recipe = {"train_images": None, **getattr(self.entry.builder, "recipe",
                                                       Classifier.recipe)}
        self.recipe = check_recipe(name, {**base_recipe, **{k: v for k, v in opts.items()
                                                            if k in base_recipe}})
        self.arch_opts = {k: v for k, v in opts.items() if k not in base_recipe}
        with rng_isolated(device):  # building draws initial weights: not from the caller's stream
            self._built: Classifier | None = self._build()  # what load() fills; None once loaded
        self.spec = {"model": name, "opts": opts, "dataset": info.name, "shape": info.input_shape,
                     "recipe": self.recipe, "seed": seed, "pretrained": self._built.pretrained}
        if self._built.pretrained:  # the weights themselves (hub or file) name the classifier
            self.spec["weights"] = tensors_digest(self._built.state_dict(), {})
        self.key = stable_hash(self.spec)
        self._loaded: LoadedModel | None = None

    def _build(self) -> Classifier:
        info = self.dataset.info
        return self.entry.build(input_shape=info.input_shape, num_classes=info.num_classes,
                                **self.arch_opts)

    def load(self) -> LoadedModel:
        """The classifier with its weights (trained and cached on the first call if needed)."""
        if self._loaded is None:
            # Training seeds itself; isolating it keeps the caller's random stream the same whether
            # this model came from the cache or was trained just now (a cold and a warm cache must
            # give the same defense weights under the same cache key).
            # Strict fp32 whatever scope the caller runs in (a defense's bf16 fit that makes its
            # surrogates on first use): the weight key names no precision.
            with rng_isolated(self.device), precision_scope(self.device, "fp32"):
                self._loaded, self._built = self._load(), None
        return self._loaded

    def _load(self) -> LoadedModel:
        info, model = self.dataset.info, self._built
        assert model is not None  # only load() calls this, once
        if model.pretrained:
            return LoadedModel(self.name, model.to(self.device).eval(), self.key,
                               {"pretrained": True})
        meta = self.cache.load_module(model, "classifiers", f"{info.name}-{self.name}", self.spec)
        if meta is not None:
            meta = {**meta, "probe_verified": self._verify(model.to(self.device).eval(), meta)}
        else:
            log.info("training classifier %s on %s (cached afterwards) ...", self.name, info.name)
            x, y = self.dataset.tensors("train", self.recipe["train_images"])
            torch.manual_seed(self.seed)
            model = self._build().to(self.device)
            meta = train_classifier(model, x, y, seed=self.seed,
                                    desc=f"train {self.name} on {info.name}", device=self.device,
                                    epochs=self.recipe["epochs"], lr=self.recipe["lr"],
                                    batch_size=self.recipe["batch_size"])
            ok = correct_on(model, self.dataset, "test", None, self.device)
            meta["test_acc"] = float(ok.float().mean()) if len(ok) else float("nan")
            meta["probe"] = probe_of(ok)  # the same images, already classified above
            log.info("%s on %s: test accuracy %.4f", self.name, info.name, meta["test_acc"])
            self.cache.save_module(model, "classifiers", f"{info.name}-{self.name}", self.spec,
                                   meta)
            meta = {**meta, "probe_verified": meta["probe"]}
        return LoadedModel(self.name, model.to(self.device).eval(), self.key, meta)


    def _verify(self, model: Classifier, meta: dict[str, Any]) -> dict[str, int]:
        """Check that cached weights still classify the probe images as when they were trained,
        so that the test accuracy their metadata records (copied into result rows) is theirs."""
        path = self.cache.path("classifiers", f"{self.dataset.info.name}-{self.name}", self.spec)
        recorded = meta.get("probe")
        if not isinstance(recorded, dict):
            raise CheckpointError(f"Cached classifier {path} records no probe accuracy, so its "
                                  f"test accuracy cannot be verified. Delete it to retrain.")
        now = probe(model, self.dataset, self.device)
        slack = max(1, now["images"] // 200)  # a device may flip a borderline image or two
        if now["images"] != recorded.get("images") or \
                abs(now["correct"] - int(recorded.get("correct", -10**9))) > slack:
            raise CheckpointError(
                f"Cached classifier {path} gets {now['correct']}/{now['images']} of the first test "
                f"images right but recorded {recorded.get('correct')}/{recorded.get('images')}: "
                f"the weights or the test data changed. Delete it to retrain.")
        return now


def load_classifier(name: str, dataset: BenchDataset, *, cache: Cache, device: torch.device,
                    seed: int = 0, **opts: Any) -> LoadedModel:
    """Build classifier ``name`` for ``dataset``; load pretrained or cached weights, else train.

    Training (a visible progress bar) happens at most once per configuration: the weights are
    cached under a hash of (model, options, dataset, recipe, seed).
    """
    return PendingClassifier(name, dataset, cache=cache, device=device, seed=seed, **opts).load()
