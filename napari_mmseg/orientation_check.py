"""Whether a scan reached the network with left and right swapped: a file whose orientation
metadata is wrong (an x direction cosine negated, a header rewritten by a converter).

A network that has learned where organs lie labels such a scan by position: "liver" on the
patient's right, where that scan has its spleen and stomach, and "spleen" over the real
liver. The review's side check (`review.py`) cannot see that, every label being on its
expected side, and its volume check only when the false liver comes out small, which a
large real spleen or a small abdomen can prevent. The network itself can tell: run once
more on the left–right mirror image, it finds a larger and more certain liver in whichever
of the two looks like an abdomen. On the 40 training scans, TotalSegmentator's two and
their 60 mm slabs, the scan as given won for every shipped network (docs/results.md,
"Seventh session"); mirrored, they lost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .organs import ORGAN_BY_NAME

LIVER = ORGAN_BY_NAME["liver"].label
# Below this much liver in both images the comparison says nothing: in a 60 mm slab at the
# kidneys, where little liver is in view, the mirror image gave up to 320 ml of it (and won
# on 5 of 147 such slabs), while the whole scans and the slabs through the liver as given
# held 385 ml and more (docs/results.md, "Seventh session").
MIN_LIVER_ML = 400.0


def liver_evidence_ml(probs: np.ndarray, voxel_ml: float) -> float:
    """The liver's volume weighted by the network's certainty: the sum of the liver's
    probability over the voxels labelled liver (classes first, our ids), in ml."""
    liver = probs.argmax(axis=0) == LIVER
    return float(probs[LIVER][liver].sum(dtype=np.float64) * voxel_ml)


@dataclass(frozen=True)
class MirrorCheck:
    liver_ml: float  # `liver_evidence_ml` of the scan as given
    liver_ml_mirrored: float  # the same on its left–right mirror image

    @property
    def suspected(self) -> bool:
        return self.liver_ml_mirrored > max(self.liver_ml, MIN_LIVER_ML)

    @property
    def flag(self) -> str | None:
        """What the reviewer is told when the mirror image looks more like an abdomen."""
        if not self.suspected:
            return None
        return (f"left and right look swapped: the network finds more liver in the scan's mirror image "
                f"({self.liver_ml_mirrored:.0f} ml against {self.liver_ml:.0f} ml). Check the file's orientation "
                "before trusting which organ is which")
