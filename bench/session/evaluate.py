"""The defended pipeline's verdict on a session's images: per-image correctness (every draw of a
randomized defense must be right) and the denoising loss, from one forward pass, under seeds
isolated from the caller's RNG.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bench.accel import precision_scope, to_device, to_memory_format
from bench.defense import MODEL, Defense
from bench.runtime import batches, check_finite, rng_isolated
from bench.seeds import derive_seed
from bench.session.slice import TestSlice


class Evaluator:
    """Judges images of a session's slice by the defended pipeline.

    Args:
        data: the evaluated slice (labels, and the clean images a denoising loss compares to).
        classifier: the target classifier, loaded (or trained) on first call.
        batch_size: the session's batch size, asked per call.
        device: where the pipeline runs.
        eval_draws: forward passes per image through a randomized defense.
        channels_last: weights and batches in channels-last memory format.
    """

    def __init__(self, data: TestSlice, classifier: Callable[[], nn.Module],
                 batch_size: Callable[[], int], device: torch.device, eval_draws: int,
                 channels_last: bool) -> None:
        self.data = data
        self._classifier = classifier
        self._batch_size = batch_size
        self.device = device
        self.eval_draws = eval_draws
        self.channels_last = channels_last

    def draws(self, defense: Defense) -> int:
        """Forward passes per image when ``defense`` is evaluated: ``eval_draws`` for a
        randomized defense, else 1."""
        return self.eval_draws if defense.randomized and not defense.identity else 1

    def evaluate(self, defense: Defense, x_in: torch.Tensor, seed: int,
                 denoising_loss: bool = False, index: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The defended pipeline on ``x_in`` (the slice's clean or adversarial images, N x C x H x
        W in [0,1]; with ``index``, the images of the slice at those positions): per-image
        correctness (bool, N) and, when asked and the defense is a preprocessor, its per-image
        denoising loss against the clean images (from the same forward pass).

        A randomized defense is run :meth:`draws` times per image; an image is correct only when
        every draw classifies it correctly (what an attacker who may query again sees); the loss
        is the first draw's. Draw ``r`` of batch ``i`` runs with torch's RNG seeded from ``(seed,
        i, r)``, isolated from the caller's, so a randomized defense gives the same result for
        the same ``seed`` whatever ran before.
        """
        x_clean, y = self.data.test
        rows = torch.arange(len(y)) if index is None else index
        classifier = self._classifier().eval()  # loaded (or trained) outside no_grad
        defense.eval()
        to_memory_format(classifier, self.channels_last)
        to_memory_format(defense, self.channels_last)
        correct, losses = [], []
        with rng_isolated(self.device), torch.no_grad(), precision_scope(self.device, "fp32"):
            for i, idx in enumerate(batches(len(x_in), self._batch_size())):
                xb, where = to_device(x_in[idx], self.device, self.channels_last), rows[idx]
                ok = torch.ones(len(where), dtype=torch.bool)
                for r in range(self.draws(defense)):
                    torch.manual_seed(derive_seed(seed, i, r) if r else derive_seed(seed, i))
                    if defense.identity:
                        logits = classifier(xb)
                    elif defense.kind == MODEL:
                        logits = defense(xb)
                    else:
                        x_hat = check_finite(defense(xb), "the defense")
                        logits = classifier(x_hat)
                        if denoising_loss and r == 0:
                            losses.append(defense.denoising_loss(
                                x_hat, to_device(x_clean[where], self.device)).float().cpu())
                    check_finite(logits, "the evaluated model")
                    ok &= logits.argmax(1).cpu() == y[where]
                correct.append(ok)
        empty = torch.zeros(0, dtype=torch.bool)
        return (torch.cat(correct) if correct else empty), (torch.cat(losses) if losses else None)

    @torch.no_grad()
    def apply(self, defense: Defense, x: torch.Tensor) -> torch.Tensor:
        """Defense outputs for ``x`` in batches (preprocessors only), on CPU."""
        out = [check_finite(defense(x[idx].to(self.device)), "the defense").cpu()
               for idx in batches(len(x), self._batch_size())]
        return torch.cat(out)
