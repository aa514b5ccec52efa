"""DynCIM pipeline: data, encoders, fusion, balancing methods on one training loop, evaluation."""
__version__ = "0.1.0"
