"""genaug models: pure-PyTorch class-conditional generators (CVAE, CGAN) and their checkpoints."""

from models.blocks import ARCH_OPTIONS, SUPPORTED_CHANNELS, SUPPORTED_SIZES, base_resolution, diff_augment
from models.cgan import CGAN, CGANConfig, Discriminator, GANDOutput, GANGOutput, Generator, d_loss, g_loss
from models.checkpoint import (
    CHECKPOINT_FILES,
    MODEL_TYPES,
    LoadedCheckpoint,
    build_model,
    checkpoint_hash,
    load_checkpoint,
    model_type_of,
    save_checkpoint,
)
from models.cvae import CVAE, CVAEConfig, CVAEOutput

__all__ = [
    "ARCH_OPTIONS",
    "CGAN",
    "CHECKPOINT_FILES",
    "CVAE",
    "CGANConfig",
    "CVAEConfig",
    "CVAEOutput",
    "Discriminator",
    "GANDOutput",
    "GANGOutput",
    "Generator",
    "LoadedCheckpoint",
    "MODEL_TYPES",
    "SUPPORTED_CHANNELS",
    "SUPPORTED_SIZES",
    "base_resolution",
    "build_model",
    "checkpoint_hash",
    "d_loss",
    "diff_augment",
    "g_loss",
    "load_checkpoint",
    "model_type_of",
    "save_checkpoint",
]
