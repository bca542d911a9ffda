"""Training of the bundled mini prior: procedural shape data, VAE and flow-matching trainers, export."""

from .config import STAGES, DataConfig, MiniPriorConfig, StageTraining, smoke_config
from .main import add_train_arguments, train_main, train_mini_prior

__all__ = [
    "STAGES",
    "DataConfig",
    "MiniPriorConfig",
    "StageTraining",
    "add_train_arguments",
    "smoke_config",
    "train_main",
    "train_mini_prior",
]
