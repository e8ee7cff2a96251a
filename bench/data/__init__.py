"""Datasets: images in [0,1] (float32, N x C x H x W) and integer labels.

:mod:`.base` holds the contract (:class:`BenchDataset`, :class:`DatasetInfo`), :func:`gather` and
:func:`get_dataset`; one module per dataset registers it: :mod:`.digits` (embedded, no files),
:mod:`.mnist`, :mod:`.cifar`, :mod:`.svhn`, :mod:`.imagenet`. Importing the package registers them.
"""

from __future__ import annotations

from bench.data.base import SPLITS, BenchDataset, DatasetInfo, gather, get_dataset
from bench.data.cifar import CIFAR10
from bench.data.digits import Digits
from bench.data.imagenet import ImageNet
from bench.data.mnist import MNIST
from bench.data.svhn import SVHN

__all__ = ["CIFAR10", "MNIST", "SPLITS", "SVHN", "BenchDataset", "DatasetInfo", "Digits",
           "ImageNet", "gather", "get_dataset"]
