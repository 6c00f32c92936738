"""fastasd: fast anomalous sound detection for machine condition monitoring.

Quick use::

    import fastasd
    detector = fastasd.train("path/to/dcase_root", out_dir="model")
    records = detector.score("path/to/dcase_root")       # one record per test clip
    detector = fastasd.load("model")

Sign convention everywhere: a higher anomaly score means more anomalous.
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "train": ("fastasd.api", "train"),
    "load": ("fastasd.api", "load"),
    "score": ("fastasd.api", "score"),
    "Detector": ("fastasd.api", "Detector"),
    "Config": ("fastasd.config", "Config"),
    "export_onnx": ("fastasd.export", "export_onnx"),
    "load_onnx": ("fastasd.onnx_detector", "load_onnx"),
    "tune_allocator": ("fastasd.allocator", "tune_allocator"),
}


def __getattr__(name: str):
    # Lazy so that `import fastasd` (and the CLI's --help) does not import torch.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'fastasd' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
