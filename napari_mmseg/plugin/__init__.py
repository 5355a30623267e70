"""The napari plugin: reader, writer, sample data, the segmentation, correction and Dice panels.

Declared in `napari.yaml` (npe2). Only this package imports napari and Qt; torch is imported
inside functions, when a widget opens or a run starts, so napari itself starts fast.
"""
