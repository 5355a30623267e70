"""Which way round an MR scan's grey levels read best: as given, or inverted.

MR sequences differ in which tissues are bright. The networks learned MR from T2-SPIR
(fluid, spleen and kidneys bright, fat dark); a T1 or gradient-echo scan has them the other
way round (fat bright, kidneys and spleen dark), and the network then takes the bright
perirenal fat for kidney. Read with its grey levels inverted inside the body, such a scan
looks more like what the MR stream was trained on. The network is asked both ways, and the
reading it is surer of — by a margin — gives the labels. Only for MR: a CT's Hounsfield units
have one meaning in every scan.

Surer is judged organ by organ (`organ_confidence`). Judged voxel by voxel instead, one
large organ the network is unsure of — an enlarged spleen on a T2 scan — outweighs the rest:
`joint` read such scans inverted and lost up to 0.13 of their mean Dice. On the 8 held-out
T2 patients of fold 0 (a network trained without them; 80 scans: as they are, under gamma,
inversion, bias field and thick slices, with the spleen enlarged, cut to slabs; and
TotalSegmentator's T1-like MR) the organ-by-organ rule kept the
better reading of all 81, the voxel rule missed two; on the 16 training patients (81 scans
each, the spleen enlarged and inverted among them) three `msbn` and `joint` files chose the
worse of two readings that differed by more than 0.02 in 2–3 scans, against 6–11
(docs/results.md#mr-read-both-ways-round).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The inverted reading must be surer of its organs by more than this. On held-out T2 scans
# where it was the worse reading it was at most −0.0007 surer (fold 0; 0.0062 when judged
# voxel by voxel); where it was the better one, 0.020 or more.
INVERSION_MARGIN = 0.007


def organ_confidence(probs: np.ndarray) -> float:
    """The network's mean top probability over the voxels it labels each organ, averaged over
    the organs it labels (0 when none): each organ counts once, whatever its size, so that one
    large organ it is unsure of (an enlarged spleen) does not outweigh the others."""
    labels = probs.argmax(axis=0).ravel()
    sums = np.bincount(labels, weights=probs.max(axis=0).ravel(), minlength=len(probs))[1:]
    counts = np.bincount(labels, minlength=len(probs))[1:]
    found = counts > 0
    return float((sums[found] / counts[found]).mean()) if found.any() else 0.0


@dataclass(frozen=True)
class PolarityChoice:
    given: float  # organ confidence reading the scan as given
    inverted: float  # reading it with its grey levels inverted

    @property
    def read_inverted(self) -> bool:
        return self.inverted > self.given + INVERSION_MARGIN

    @property
    def note(self) -> str:
        """For the user, when the labels come from the inverted reading ('' otherwise)."""
        if not self.read_inverted:
            return ""
        return (f"the scan was read with its grey levels inverted (a T1-like sequence: the network was surer "
                f"of the organs that way, confidence {self.inverted:.3f} against {self.given:.3f})")


def was_read_inverted(choice: PolarityChoice | None) -> bool:
    """Whether labels came from the inverted reading (no choice: the scan was read as given)."""
    return choice is not None and choice.read_inverted
