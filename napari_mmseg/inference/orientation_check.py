"""Whether a scan reached the network with left and right swapped: a file whose orientation
metadata is wrong (an x direction cosine negated, a header rewritten by a converter).

A network that has learned where organs lie labels such a scan by position: "liver" on the
patient's right, where that scan has its spleen and stomach, and "spleen" over the real
liver. The review's side check (`review/flags.py`) cannot see that, every label being on its
expected side, and its volume check only when the false liver comes out small. The network
itself can tell: run once more on the left–right mirror image, it is surer of the liver in
whichever of the two looks like an abdomen. Its certainty, not the liver's size: a spleen
larger than the liver, mirrored, fills the liver's place and is called liver, but less
surely than the real one (docs/results.md#mirror-check).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_mmseg.organs import ORGAN_BY_NAME

LIVER = ORGAN_BY_NAME["liver"].label
# The mirror image must be surer of its liver by more than this. As given, the liver's mean
# probability beat the mirror image's by 0.053 or more on every whole scan of ours (40
# training scans and TotalSegmentator's two, with every shipped network), so a mirrored one
# is flagged; with the spleen enlarged to twice the liver's size the mirror image was
# sometimes the surer, by up to 0.038 (docs/results.md#mirror-check). A narrow gap:
# a spleen larger still may raise the flag on a scan that is right.
CONFIDENCE_MARGIN = 0.04
# Below this much liver in both images the comparison says nothing: in 60 mm slabs at the
# kidneys, where a sliver of liver is in view, the mirror image was often the surer.
MIN_LIVER_ML = 400.0


@dataclass(frozen=True)
class LiverFound:
    ml: float  # voxels labelled liver
    confidence: float  # mean liver probability over them (0 when none)


def liver_found(probs: np.ndarray, voxel_ml: float) -> LiverFound:
    """The liver in class probabilities (classes first, our ids): its volume and the
    network's mean probability over it."""
    liver = probs.argmax(axis=0) == LIVER
    n = int(liver.sum())
    return LiverFound(n * voxel_ml, float(probs[LIVER][liver].mean(dtype=np.float64)) if n else 0.0)


@dataclass(frozen=True)
class MirrorCheck:
    given: LiverFound  # in the scan as given (the sliding windows, before any context pass)
    mirrored: LiverFound  # in its left–right mirror image

    @property
    def suspected(self) -> bool:
        return (self.mirrored.confidence > self.given.confidence + CONFIDENCE_MARGIN
                and max(self.given.ml, self.mirrored.ml) >= MIN_LIVER_ML)

    @property
    def flag(self) -> str | None:
        """What the reviewer is told when the mirror image looks more like an abdomen."""
        if not self.suspected:
            return None
        return (f"left and right look swapped: the network is surer of the liver in the scan's mirror image "
                f"(confidence {self.mirrored.confidence:.2f} against {self.given.confidence:.2f}). Check the "
                "file's orientation before trusting which organ is which")
