"""Liver, spleen and kidney segmentation in abdominal CT and MRI with the dual-stream
networks of Valindria et al., "Multi-Modal Learning from Unpaired Images" (WACV 2018).

The compute core (I/O, preprocessing, networks, inference, training, metrics) lives in
this package and never imports Qt or napari; the napari plugin is `napari_mmseg.plugin`.
"""

__version__ = "0.1.0"
