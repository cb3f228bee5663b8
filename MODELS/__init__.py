"""SimCLR encoders (BadEncoder key names), safe checkpoints, NT-Xent loss (the early stop lives in INVERSION)."""
from MODELS.checkpoint import load_checkpoint, load_encoder, sanity_check_frozen, save_checkpoint
from MODELS.losses import nt_xent
from MODELS.simclr import MODEL_NAMES, Backbone, SimCLR, build_model

__all__ = [
    "MODEL_NAMES", "Backbone", "SimCLR", "build_model",
    "load_checkpoint", "load_encoder", "save_checkpoint", "sanity_check_frozen",
    "nt_xent",
]
