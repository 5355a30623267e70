"""The paper's FCN and its multi-modal variants."""

from .dual_stream import STREAM_PARTS, MultiModalFCN, parameter_modality, use_blended_statistics

__all__ = ["MultiModalFCN", "STREAM_PARTS", "parameter_modality", "use_blended_statistics"]
