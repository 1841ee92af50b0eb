"""Auto-DeepLab: hierarchical neural architecture search for semantic segmentation."""

from autodeeplab.genotype import GENOTYPES, RELEASED, Genotype, get_genotype

__version__ = "0.1.0"

__all__ = ["GENOTYPES", "RELEASED", "Genotype", "__version__", "get_genotype"]
