"""Encoders, fusion modules and the multimodal model that joins them."""
from .multimodal import MultimodalModel, Output, build_model

__all__ = ["MultimodalModel", "Output", "build_model"]
