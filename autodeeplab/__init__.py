"""Auto-DeepLab: hierarchical neural architecture search for semantic segmentation."""

from autodeeplab.genotype import GENOTYPES, RELEASED, Genotype, get_genotype
from autodeeplab.network import AutoDeepLab, NetworkConfig
from autodeeplab.saved_model import LoadedModel, SavedModelConfig, load_model, save_model
from autodeeplab.supernet import SearchNetwork

__version__ = "0.1.0"

__all__ = [
    "GENOTYPES",
    "RELEASED",
    "AutoDeepLab",
    "Genotype",
    "LoadedModel",
    "NetworkConfig",
    "SavedModelConfig",
    "SearchNetwork",
    "__version__",
    "get_genotype",
    "load_model",
    "save_model",
]
