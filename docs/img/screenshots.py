"""Regenerate the user guide's screenshots from real runs in the real napari window.

    xvfb-run -a -s "-screen 0 1920x1200x24" python docs/img/screenshots.py [NAME ...] [--out DIR]

NAME is any of the pictures below (default: all). Uses the embedded samples and the bundled
default weights (`msbn`, and the correction model) on the CPU: a few minutes on two cores.
napari starts with a fresh configuration of its own (no window size remembered from earlier
use), so `start` is the window exactly as `mmseg-napari` first opens; nothing is zoomed or
re-fitted by hand. napari loads the plugin that `import napari_mmseg` finds: the installed
one, or the checkout given first in PYTHONPATH. Each picture's caption in docs/user-guide.md
says what it shows; the script prints the numbers it saw (flags, Dice, seconds per click).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("NAPARI_CONFIG", str(Path(tempfile.mkdtemp()) / "settings.yaml"))  # before napari loads

import numpy as np  # noqa: E402
from napari.qt import get_qapp  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

from napari_mmseg.organs import ORGAN_BY_NAME  # noqa: E402
from napari_mmseg.plugin.conventions import CONVENTIONS, to_our_ids  # noqa: E402
from napari_mmseg.plugin.correction import CorrectionPanel  # noqa: E402
from napari_mmseg.plugin.dice_panel import DicePanel  # noqa: E402
from napari_mmseg.plugin.launch import open_viewer  # noqa: E402
from napari_mmseg.plugin.widget import SegmentationWidget  # noqa: E402

HERE = Path(__file__).parent
WINDOW = (1500, 1100)
KIDNEY_RIGHT = ORGAN_BY_NAME["kidney_right"].label
SPLEEN = ORGAN_BY_NAME["spleen"].label


def settle(seconds: float = 1.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        get_qapp().processEvents()
        time.sleep(0.02)


def save(viewer, path: Path) -> None:
    """A 128-colour PNG of the whole window: the dark UI compresses to well under 250 KB."""
    settle()
    pixels = viewer.screenshot(canvas_only=False, flash=False)
    Image.fromarray(pixels[..., :3]).quantize(colors=128).save(path, optimize=True)
    print(f"wrote {path}")


def panels(viewer) -> tuple[SegmentationWidget, DicePanel]:
    docked = list(viewer.window.dock_widgets.values())
    return (next(w for w in docked if isinstance(w, SegmentationWidget)),
            next(w for w in docked if isinstance(w, DicePanel)))


def correction_panel(viewer) -> CorrectionPanel:
    return next(w for w in viewer.window.dock_widgets.values() if isinstance(w, CorrectionPanel))


SAMPLES = {"ct": ("example_ct", "TotalSegmentator"), "mr_t2": ("chaos_t2_patient_2", "CHAOS"),
           "mr_other": ("example_mr", "TotalSegmentator")}


def start(sample: str, window: tuple[int, int] | None = WINDOW):
    """The `mmseg-napari` window on a sample (at `window`'s size; None: as it opens), at the
    axial slice with most kidney. The launcher keeps the scan fitted to the canvas."""
    scan, convention = SAMPLES[sample]
    viewer = open_viewer(sample)
    if window is not None:
        viewer.window.resize(*window)
    reference = viewer.layers[f"{scan} reference"]
    ours = to_our_ids(np.asarray(reference.data), CONVENTIONS[convention])
    kidney = (ours == KIDNEY_RIGHT) | (ours == ORGAN_BY_NAME["kidney_left"].label)
    z = int(np.argmax(kidney.sum(axis=(1, 2))))
    viewer.dims.set_point(0, viewer.layers[scan].data_to_world((z, 0, 0))[0])
    settle()
    return viewer, reference, z


def run(viewer, modality: str):
    """Press Run in the segmentation widget, with the model it offers first (the default),
    and wait for the result layer."""
    widget, _ = panels(viewer)
    widget["modality"].value = modality
    variant = widget["model"].value
    widget["device"].value = "cpu"
    widget["run"].native.click()
    while widget.running:
        settle(0.2)
    settle()
    print(widget.status)
    print(widget["organs"].value)
    print(widget.flags or "no flags")
    if not widget.status.startswith("Done"):
        raise SystemExit(f"the run did not finish: {widget.status}")
    return viewer.layers[f"{widget['scan'].value.name} {variant}"]


def as_opened(name: str, window: tuple[int, int] | None):
    """`mmseg-napari` as it opens (None: napari's own first window size), the CT sample and
    its reference, ready to run."""

    def take(out: Path) -> None:
        viewer, _, _ = start("ct", window)
        save(viewer, out / f"{name}.png")
        viewer.close()

    return take


def after_a_run(name: str, sample: str, modality: str, then: Callable[..., None] | None = None):
    """A picture of a run of the default model on a sample (reference hidden), after `then(viewer, result,
    reference, z)` if given."""

    def take(out: Path) -> None:
        viewer, reference, z = start(sample)
        reference.visible = False
        result = run(viewer, modality)
        if then is not None:
            then(viewer, result, reference, z)
        save(viewer, out / f"{name}.png")
        viewer.close()

    return take


def show_uncertainty(viewer, result, _reference, _z) -> None:
    """The uncertainty layer shown, the organs as outlines above it."""
    result.contour = 1
    viewer.layers[f"{result.name} uncertainty"].visible = True


def paint_missed_kidney(viewer, result, reference, z) -> None:
    """The right kidney the reference has and the result missed, on the slice shown and its
    two neighbours, painted in as three strokes would; the Dice panel follows."""
    _, dice = panels(viewer)
    before = dice.scores[KIDNEY_RIGHT - 1].dice
    slices = slice(z - 1, z + 2)
    ours = to_our_ids(np.asarray(reference.data[slices]), CONVENTIONS["TotalSegmentator"])
    planes, rows, cols = np.nonzero((ours == KIDNEY_RIGHT) & (np.asarray(result.data[slices]) != KIDNEY_RIGHT))
    result.data_setitem((planes + z - 1, rows, cols), KIDNEY_RIGHT)
    result.mode = "paint"
    result.selected_label = KIDNEY_RIGHT
    settle(1.5)
    print(f"right kidney Dice {before:.3f} → {dice.scores[KIDNEY_RIGHT - 1].dice:.3f} after painting "
          f"{rows.size} voxels on slices {z - 1}–{z + 1}")


def mirrored(out: Path) -> None:
    """The CT sample saved with its x direction negated (orientation metadata that swap left
    and right), opened and run: the network labels by position, the review says so."""
    import tempfile

    import SimpleITK as sitk

    from napari_mmseg.plugin.sample_data import fetch

    image = sitk.ReadImage(str(fetch("totalsegmentator/example_ct_sm.nii.gz")))
    direction = np.reshape(image.GetDirection(), (3, 3)).copy()
    direction[0] *= -1
    image.SetDirection(direction.ravel().tolist())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "example_ct_mirrored.nii.gz"
        sitk.WriteImage(image, str(path))
        viewer, _, z = start("ct")
        viewer.layers.clear()
        (layer,) = viewer.open(str(path), plugin="napari-mmseg")
        viewer.dims.set_point(0, layer.data_to_world((z, 0, 0))[0])
        panels(viewer)[0]["scan"].value = layer
        run(viewer, "CT")
        save(viewer, out / "mirrored-review.png")
        viewer.close()


def click_on_screen(viewer, layer, voxel) -> None:
    """A real left click of the mouse on the canvas, where `voxel` of `layer` is drawn."""
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest

    camera = viewer.scene.camera
    world = np.asarray(layer.data_to_world(voxel))[-2:]
    row, col = (world - np.asarray(camera.center[-2:])) * camera.zoom + np.asarray(viewer.canvas.size) / 2
    canvas = viewer.window._qt_viewer.canvas.native  # napari has no public handle on the canvas widget
    QTest.mouseClick(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(round(col), round(row)))


def correct_missed_spleen(out: Path) -> None:
    """The default msbn's result on the CT sample with its spleen erased (one paint step, as a
    network that missed it would leave it); in correct mode, one click in the middle of the
    spleen: before and after, the Dice panel against the reference beside them."""
    viewer, reference, _ = start("ct")
    reference.visible = False
    result = run(viewer, "CT")
    dice = panels(viewer)[1]
    spleen = np.asarray(result.data) == SPLEEN
    if not spleen.any():
        raise SystemExit("the result has no spleen to erase")
    result.data_setitem(np.nonzero(spleen), 0)
    z = int(np.argmax(spleen.sum(axis=(1, 2))))
    depth = ndimage.distance_transform_edt(spleen[z])
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    viewer.dims.set_point(0, result.data_to_world((z, 0, 0))[0])
    panel = correction_panel(viewer)
    panel.native.parent().raise_()  # its tab in front
    panel["labels"].value = result
    panel["organ"].value = SPLEEN
    panel["correct"].value = True
    settle(1.5)
    print(f"before: spleen Dice {dice.scores[SPLEEN - 1].dice:.3f}")
    save(viewer, out / "correct-before.png")
    click_on_screen(viewer, result, (z, int(y), int(x)))
    while panel.busy or not panel.seconds:
        settle(0.1)
    settle(1.5)
    print(f"after one click: spleen Dice {dice.scores[SPLEEN - 1].dice:.3f}; {panel.status}")
    save(viewer, out / "correct-after.png")
    viewer.close()


PICTURES: dict[str, Callable[[Path], None]] = {
    "start": as_opened("start", None),
    "start-1600x1000": as_opened("start-1600x1000", (1600, 1000)),
    "ct-review": after_a_run("ct-review", "ct", "CT"),
    "mr-review": after_a_run("mr-review", "mr_t2", "MR"),
    "wrong-modality": after_a_run("wrong-modality", "mr_t2", "CT"),  # warned before, flagged after
    "uncertainty": after_a_run("uncertainty", "ct", "CT", show_uncertainty),
    "annotator-dice": after_a_run("annotator-dice", "ct", "CT", paint_missed_kidney),
    "mirrored-review": mirrored,
    "t1-review": after_a_run("t1-review", "mr_other", "MR"),  # read with its grey levels inverted
    "correct": correct_missed_spleen,  # correct-before.png and correct-after.png
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(PICTURES)}")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    unknown = set(args.names) - set(PICTURES)
    if unknown:
        parser.error(f"no picture named {', '.join(sorted(unknown))}")
    for name in args.names or PICTURES:
        PICTURES[name](args.out)


if __name__ == "__main__":
    main()
