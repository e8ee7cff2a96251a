"""The command line's shared options, and how what they set becomes a :class:`RunConfig`
(the command line first, then ``--config``'s file, then the command's own defaults, then the
dataclass defaults)."""

from __future__ import annotations

import argparse
from typing import Any

from bench.config import EXECUTORS, PRECISIONS, RunConfig, parse_options, split_list
from bench.errors import BenchError
from bench.plugin_files import load_plugins


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def batch_size_arg(text: str) -> int | str:
    return "auto" if text.strip().lower() == "auto" else positive_int(text)


def plugins_option(p: argparse.ArgumentParser) -> None:
    """``--plugins PATH``: plugin files or folders to import first (bench.plugin_files)."""
    p.add_argument("--plugins", action="append", metavar="PATH",
                   help="a plugin file (.py with decorated plugins) or a folder of them, "
                        "imported first (repeatable; also $BENCH_PLUGINS)")


def common_options(p: argparse.ArgumentParser) -> None:
    """Options shared by run, train and plot. Defaults are None: the value then comes from the
    config file, else from :class:`RunConfig`'s defaults (the precedence of ``--config``)."""
    plugins_option(p)
    p.add_argument("--dataset", default=None, help="comma list (default: digits, embedded)")
    p.add_argument("--model", default=None, help="comma list (default: the dataset's model)")
    p.add_argument("--data-root", default=None, help="data folder (or $BENCH_DATA_ROOT)")
    p.add_argument("--download", action="store_true", default=None,
                   help="let torchvision download data")
    p.add_argument("--device", default=None,
                   help="auto (default: CUDA when present), cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--batch-size", type=batch_size_arg, default=None,
                   help="default 250; auto: the batch of the best attack throughput that fits "
                        "(probed by doubling on this device, cached, recorded in each row)")
    p.add_argument("--train-precision", choices=PRECISIONS, default=None,
                   help="defenses' training: fp32 (default, strict), tf32 or bf16 (autocast); "
                        "part of the weight key")
    p.add_argument("--attack-precision", choices=PRECISIONS, default=None,
                   help="attacks: fp32 (default, strict), tf32 or bf16; recorded in the cell "
                        "(evaluation is always fp32)")
    p.add_argument("--channels-last", action="store_true", default=None,
                   help="channels-last weights and batches (faster convolutions on GPUs)")
    p.add_argument("--no-deterministic", dest="deterministic", action="store_false",
                   default=None, help="allow CUDA's nondeterministic algorithms (cuDNN "
                                      "autotuning); default: deterministic")
    p.add_argument("--fit-images", type=positive_int, default=None,
                   help="training images of a defense's recipe (default: the dataset's)")
    p.add_argument("--defense-opt", action="append", metavar="[NAME.]KEY=VALUE",
                   help="defense option, e.g. epochs=5 or lgd.epochs=5 (repeatable)")
    p.add_argument("--model-opt", action="append", metavar="[NAME.]KEY=VALUE",
                   help="classifier option, e.g. epochs=2, pretrained=false, weights=PATH; "
                        "cnn3x3.epochs=2 for one model only")


def grid_options(p: argparse.ArgumentParser) -> None:
    """The options of a grid of cells run through an executor (``run``, ``plot sweep``)."""
    p.add_argument("--defense", default=None, help="comma list of defenses (default: none)")
    p.add_argument("--attack", default=None, help="comma list of attacks (required)")
    p.add_argument("--threat", default=None,
                   help="oblivious,whitebox,transfer (default: oblivious,whitebox)")
    p.add_argument("--source-model", default=None,
                   help="transfer threat: the model attacks are crafted on (default: the "
                        "dataset's second model)")
    p.add_argument("--eot", type=positive_int, default=None,
                   help="EOT draws of a whitebox gradient attack on a randomized defense "
                        "(default 20)")
    p.add_argument("--eval-draws", type=positive_int, default=None,
                   help="forward passes per image evaluating a randomized defense (default 10)")
    p.add_argument("--eps", default=None, help="comma list, e.g. 0.2 or 8/255")
    p.add_argument("--n", type=int, default=None, help="evaluate the first n test images")
    p.add_argument("--alpha", default=None, help="attack step size, e.g. 0.01 or 2/255")
    p.add_argument("--targeted", choices=["random", "least-likely"], default=None)
    p.add_argument("--attack-opt", action="append", metavar="[NAME.]KEY=VALUE")
    p.add_argument("--results", default=None, help="SQLite store (default results/bench.sqlite)")
    p.add_argument("--config", default=None, help="JSON file of RunConfig fields")
    executor_options(p)


def executor_options(p: argparse.ArgumentParser) -> None:
    """How the grid's cells run (never what they compute: the store is the same)."""
    p.add_argument("--executor", choices=list(EXECUTORS), default=None,
                   help="local (default: one cell after another here) or ray (a task per "
                        "dataset x model x defense on a Ray cluster, this process writing the "
                        "store)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (default $RAY_ADDRESS, else a local instance)")
    p.add_argument("--ray-cpus", type=positive_int, default=None,
                   help="CPUs per Ray task, its torch thread count (default 1)")


def analysis_options(p: argparse.ArgumentParser) -> None:
    """The options of a plot of preprocessing defenses on one oblivious adversarial set."""
    common_options(p)
    p.add_argument("--defense", required=True, help="comma list of preprocessing defenses")
    p.add_argument("--attack", required=True, help="the oblivious attack, e.g. ifgsm4")
    p.add_argument("--eps", default=None, help="one eps (default: the dataset's)")
    p.add_argument("--n", type=positive_int, default=None, help="test images (default 500)")
    p.add_argument("--out", default=None, help="folder (default results/plots)")


# argparse destination -> RunConfig field, and how the text becomes the field's value
FIELDS = {
    "dataset": ("datasets", split_list), "model": ("models", split_list),
    "defense": ("defenses", split_list), "attack": ("attacks", split_list),
    "threat": ("threats", split_list), "eps": ("eps", split_list), "n": ("n", None),
    "seed": ("seed", None), "alpha": ("alpha", None), "targeted": ("targeted", None),
    "batch_size": ("batch_size", None), "device": ("device", None),
    "download": ("download", None), "data_root": ("data_root", None),
    "results": ("results", None), "fit_images": ("fit_images", None),
    "source_model": ("source_model", None), "eot": ("eot", None),
    "eval_draws": ("eval_draws", None),
    "defense_opt": ("defense_opts", parse_options), "attack_opt": ("attack_opts", parse_options),
    "model_opt": ("model_opts", parse_options),
    "executor": ("executor", None), "ray_address": ("ray_address", None),
    "ray_cpus": ("ray_cpus", None),
    "train_precision": ("train_precision", None), "attack_precision": ("attack_precision", None),
    "channels_last": ("channels_last", None), "deterministic": ("deterministic", None),
    "plugins": ("plugins", None),
}


def run_config(args: argparse.Namespace, **defaults: Any) -> RunConfig:
    """The command's RunConfig: what the command line sets, then ``--config``'s file, then
    ``defaults`` (the command's own), then the dataclass defaults."""
    given = {}
    for dest, (name, convert) in FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            given[name] = convert(value) if convert else value
    cfg = RunConfig.resolve(given, getattr(args, "config", None), defaults)
    load_plugins(cfg.plugins)  # a config file's plugins (the command line's are loaded already)
    return cfg


def from_config_file(args: argparse.Namespace, message: str) -> str:
    """``message`` with the config file named when the option it is about was set there (option
    values are checked after the file is read, when the plugins are built)."""
    path = getattr(args, "config", None)
    if not path or "config file" in message:
        return message
    try:
        raw = RunConfig.read_file(path)
    except BenchError:
        return message
    keys = {k for f in ("defense_opts", "attack_opts", "model_opts")
            if isinstance(raw.get(f), dict) for k in raw[f]}
    named = any(k.rpartition(".")[2] + "=" in message or k + "=" in message for k in keys)
    return f"{message} (set in config file {path})" if named else message
