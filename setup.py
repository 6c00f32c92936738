"""Build script for fastasd (the fastasd._C operator library is added by the operators issue)."""
from setuptools import setup

setup()
