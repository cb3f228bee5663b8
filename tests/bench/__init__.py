"""Tests of the bench scripts, which are files, not packages: :func:`load_bench` imports one as a module."""
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_bench(stem: str, name: str) -> ModuleType:
    """``bench/<stem>.py`` imported under ``name``, registered in ``sys.modules`` first (dataclasses look
    their module up there)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
