"""Between a SimpleITK volume and what a viewer displays, and back, without resampling.

On the way in, the volume is reoriented with `sitk.DICOMOrient(image, "LPS")`: an exact
permutation and flip of the voxel array, never an interpolation. Its array (z, y, x) then
shows axial slices as radiologists read them: patient right on screen left, anterior up.
The layer's scale is the spacing, its translate the origin (both in z, y, x order), and a
residual oblique direction, if larger than `OBLIQUE_TOLERANCE_DEG`, goes into the layer's
affine. The source file's grid is kept as plain data (`DisplayGeometry`), so labels drawn on
the displayed array are written back with exactly the scan's size, spacing, origin and
direction (`labels_to_source`).

This module knows nothing of Qt or napari: transforms are plain numbers and 4 × 4 matrices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from napari_mmseg.errors import ScanError

DISPLAY_ORIENTATION = "LPS"
# A residual rotation smaller than this (scanner rounding, sub-degree table tilt) is left out
# of the display transform: napari would otherwise warn about non-orthogonal slicing on every
# such scan. The overlay stays exact (labels share the image's grid) and saved files keep the
# exact direction; only the world coordinates napari reports are off by that tiny rotation.
OBLIQUE_TOLERANCE_DEG = 1.0


@dataclass(frozen=True)
class Grid:
    """A voxel grid in SimpleITK's (x, y, z) order and LPS world frame, as plain numbers."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 3 × 3, row-major, as SimpleITK's GetDirection()

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        return cls(
            tuple(int(n) for n in image.GetSize()),
            tuple(float(v) for v in image.GetSpacing()),
            tuple(float(v) for v in image.GetOrigin()),
            tuple(float(v) for v in image.GetDirection()),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """The numpy array shape (z, y, x) of a volume on this grid."""
        return tuple(reversed(self.size))

    @property
    def orientation(self) -> str:
        """Three-letter code (`LPS`, `RAS`, ...): where increasing x, y, z index point."""
        return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(self.direction)

    @property
    def rotation_deg(self) -> float:
        """Angle of the direction matrix seen as a rotation away from the LPS axes."""
        cos = (np.trace(np.reshape(self.direction, (3, 3))) - 1.0) / 2.0
        return math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))

    def image(self, array: np.ndarray) -> sitk.Image:
        """`array` (z, y, x) as a SimpleITK image on this grid."""
        if tuple(array.shape) != self.shape:
            raise ScanError(f"An array of shape {tuple(array.shape)} does not fit a volume of shape {self.shape}.")
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


@dataclass(frozen=True)
class DisplayGeometry:
    """Where a displayed array came from: the file's grid and the displayed (reoriented) grid.

    Frozen plain data, so it can sit in a napari layer's metadata and travel with the layer.
    """

    source: Grid
    display: Grid

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.display.shape

    @property
    def oblique(self) -> bool:
        """Whether the displayed grid's residual rotation is large enough to be displayed."""
        return self.display.rotation_deg > OBLIQUE_TOLERANCE_DEG

    def layer_transform(self) -> dict[str, np.ndarray | None]:
        """`scale`, `translate` and `affine` for a napari layer (z, y, x order).

        napari maps data to world as affine(translate + scale * index); SimpleITK as
        origin + direction @ (spacing * index). With the residual rotation R in the affine,
        the affine's translation part (origin - R origin) makes the two agree.
        """
        scale = np.array(self.display.spacing[::-1])
        translate = np.array(self.display.origin[::-1])
        affine = None
        if self.oblique:
            rotation = np.reshape(self.display.direction, (3, 3))[::-1, ::-1]
            affine = np.eye(4)
            affine[:3, :3] = rotation
            affine[:3, 3] = translate - rotation @ translate
        return {"scale": scale, "translate": translate, "affine": affine}


def to_display(image: sitk.Image) -> tuple[np.ndarray, DisplayGeometry]:
    """The volume's array reoriented for display, and the geometry to go back."""
    if image.GetDimension() != 3:
        raise ScanError(f"A {image.GetDimension()}-D image cannot be shown as a 3-D volume.")
    shown = sitk.DICOMOrient(image, DISPLAY_ORIENTATION)
    return sitk.GetArrayFromImage(shown), DisplayGeometry(Grid.of(image), Grid.of(shown))


def image_from_layer(data: np.ndarray, geometry: DisplayGeometry) -> sitk.Image:
    """The displayed array as a SimpleITK image on the displayed grid (what `segment_image` takes)."""
    return geometry.display.image(np.asarray(data))


def labels_to_source(array: np.ndarray, geometry: DisplayGeometry) -> sitk.Image:
    """Labels drawn on the displayed array, back on the source file's exact grid.

    The reorientation is undone with the inverse `DICOMOrient`; the exact source numbers then
    replace the recomputed ones, which may differ in the last bits of a float.
    """
    shown = geometry.display.image(np.asarray(array))
    back = sitk.DICOMOrient(shown, geometry.source.orientation)
    recomputed = Grid.of(back)
    src = geometry.source
    if recomputed.size != src.size or not (
        np.allclose(recomputed.direction, src.direction, atol=1e-6)
        and np.allclose(recomputed.origin, src.origin, atol=1e-3)
    ):
        raise ScanError(
            f"The labels' grid {recomputed} does not map back onto the scan's grid {src}: "
            "the layer's geometry metadata belongs to another scan."
        )
    back.SetSpacing(src.spacing)
    back.SetOrigin(src.origin)
    back.SetDirection(src.direction)
    return back


def geometry_from_matrix(shape: tuple[int, ...], data_to_world: np.ndarray) -> DisplayGeometry:
    """The grid a layer's 4 × 4 data-to-world matrix (z, y, x order) describes.

    For layers that did not come from our reader (a numpy array, another plugin's file):
    the displayed grid is then also the source grid. Shear or non-uniform scaling within the
    matrix cannot be a scan's grid and is refused.
    """
    if len(shape) != 3:
        raise ScanError(f"The layer is {len(shape)}-D {tuple(shape)}: a 3-D volume is needed.")
    matrix = np.asarray(data_to_world, dtype=float)
    linear = matrix[:3, :3][::-1, ::-1]  # to SimpleITK's x, y, z order
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise ScanError("The layer's transform has a zero scale: it is not a voxel grid.")
    direction = linear / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ScanError("The layer's transform has a shear: it cannot be saved as a scan's grid.")
    grid = Grid(
        tuple(int(n) for n in shape[::-1]),
        tuple(float(v) for v in spacing),
        tuple(float(v) for v in matrix[:3, 3][::-1]),
        tuple(float(v) for v in direction.ravel()),
    )
    return DisplayGeometry(grid, grid)
