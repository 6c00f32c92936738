"""The tiny synthetic set and config shared by the API and training tests: the demo's ``--quick``
sizes (2 machine types x 1 section, 8 + 2 training and 8 test clips, 0.5-s clips) and the demo
preset shrunk the same way (batch 4, 1 epoch), on CPU."""
from fastasd.config import Config
from fastasd.cli.demo import QUICK_OVERRIDES, QUICK_SYNTH

TINY = QUICK_SYNTH


def tiny_config(**overrides) -> Config:
    """``Config.preset("demo")`` with the demo's --quick overrides, on CPU, then ``overrides``."""
    return Config.preset("demo").replace(**{**QUICK_OVERRIDES, "device": "cpu", **overrides})
