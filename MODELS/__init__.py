"""SimCLR encoders (BadEncoder key names), safe checkpoints, NT-Xent loss (the early stop lives in INVERSION)."""
from __future__ import annotations

from UTILS.lazy import lazy_exports

# name -> the module that defines it. Imported on first use, so that a light submodule (the names
# the command line is checked against) does not pull in torch through this package.
_EXPORTS = {
    "MODEL_NAMES": "MODELS.names",
    "Backbone": "MODELS.simclr",
    "SimCLR": "MODELS.simclr",
    "build_model": "MODELS.simclr",
    "VisualEncoder": "MODELS.visual",
    "resolve_model": "MODELS.names",
    "load_checkpoint": "MODELS.checkpoint",
    "load_encoder": "MODELS.checkpoint",
    "save_checkpoint": "MODELS.checkpoint",
    "sanity_check_frozen": "MODELS.checkpoint",
    "nt_xent": "MODELS.losses",
}
__all__ = list(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
