"""Package layout only; the metadata lives in pyproject.toml.

The built-in plugins sit in the top-level folders ``defenses/`` and ``attacks/`` but install as
``bench.defenses`` and ``bench.attacks``: a folder of a user's named ``defenses`` or ``attacks`` in
the current directory then cannot shadow them. ``[tool.setuptools.packages.find]`` cannot map a
folder to another package name, so the packages are computed here: a new family folder needs no
list entry.
"""

from setuptools import find_packages, setup

PLUGIN_FOLDERS = ("defenses", "attacks")

setup(
    packages=find_packages(include=["bench", "bench.*"])
    + [f"bench.{p}" for f in PLUGIN_FOLDERS for p in find_packages(include=[f, f"{f}.*"])],
    package_dir={f"bench.{f}": f for f in PLUGIN_FOLDERS},
)
