"""Built-in defense plugins: one module per family, each registering its named variants."""

from bench.plugins import import_submodules

import_submodules(__name__)
