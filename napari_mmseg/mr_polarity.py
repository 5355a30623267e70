"""Which way round an MR scan's grey levels read best: as given, or inverted.

MR sequences differ in which tissues are bright. The networks learned MR from T2-SPIR
(fluid, spleen and kidneys bright, fat dark); a T1 or gradient-echo scan has them the other
way round (fat bright, kidneys and spleen dark), and the network then takes the bright
perirenal fat for kidney. Read with its grey levels inverted inside the body, such a scan
looks more like what the MR stream was trained on. The network is asked both ways, and the
reading it is surer of — by a margin — gives the labels. Only for MR: a CT's Hounsfield units
have one meaning in every scan.

On the 8 held-out T2 patients of fold 0 (a network trained without them) the rule read 1 of
64 scans inverted — as they are, under gamma, bias field and thick slices, with the spleen
enlarged, cut to slabs — and that one (gamma 2) went from 0.45 to 0.75 mean Dice; it read 7
of 8 inverted scans inverted (0.795 → 0.845), and TotalSegmentator's example MR (T1-like)
inverted (0.680 → 0.809) (docs/results.md, "Eighth session").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The inverted reading must be surer of its organs by more than this (mean top probability
# over the voxels labelled an organ). On held-out T2 scans where it was the worse reading it
# was at most 0.0062 surer (fold 0); on the same scans inverted, 0.011 or more in 7 of 8; on
# the training scans inverted, 0.005 or more with every shipped network.
INVERSION_MARGIN = 0.007


def organ_confidence(probs: np.ndarray) -> float:
    """The network's mean top probability over the voxels it labels an organ (0 when none)."""
    top = probs.max(axis=0)
    organ = probs.argmax(axis=0) > 0
    return float(top[organ].mean(dtype=np.float64)) if organ.any() else 0.0


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
