"""Regenerate the user guide's screenshots from real runs in the real napari window.

    xvfb-run -a -s "-screen 0 1600x1200x24" python docs/img/screenshots.py [NAME ...] [--out DIR]

NAME is any of the pictures below (default: all). Uses the embedded samples and the bundled
default weights (`msbn`) on the CPU: a few minutes on two cores. napari loads the plugin that `import
napari_mmseg` finds: the installed one, or the checkout given first in PYTHONPATH. Each picture's caption in
docs/user-guide.md says what it shows; the script prints the numbers it saw (flags, Dice).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from napari.qt import get_qapp
from PIL import Image

from napari_mmseg.organs import ORGAN_BY_NAME
from napari_mmseg.plugin.conventions import CONVENTIONS, to_our_ids
from napari_mmseg.plugin.dice_panel import DicePanel
from napari_mmseg.plugin.launch import open_viewer
from napari_mmseg.plugin.widget import SegmentationWidget

HERE = Path(__file__).parent
WINDOW = (1500, 1100)
KIDNEY_RIGHT = ORGAN_BY_NAME["kidney_right"].label


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


SAMPLES = {"ct": ("example_ct", "TotalSegmentator"), "mr_t2": ("chaos_t2_patient_2", "CHAOS"),
           "mr_other": ("example_mr", "TotalSegmentator")}


def start(sample: str):
    """The `mmseg-napari` window on a sample, at the axial slice with most kidney."""
    scan, convention = SAMPLES[sample]
    viewer = open_viewer(sample)
    viewer.window._qt_window.resize(*WINDOW)
    reference = viewer.layers[f"{scan} reference ({convention})"]
    ours = to_our_ids(np.asarray(reference.data), CONVENTIONS[convention])
    kidney = (ours == KIDNEY_RIGHT) | (ours == ORGAN_BY_NAME["kidney_left"].label)
    z = int(np.argmax(kidney.sum(axis=(1, 2))))
    viewer.dims.set_point(0, viewer.layers[scan].data_to_world((z, 0, 0))[0])
    viewer.reset_view()
    viewer.scene.camera.zoom *= 0.85  # the canvas is taller than wide: the whole width in view
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


def as_opened(out: Path) -> None:
    """`mmseg-napari` as it opens: the CT sample and its reference, ready to run."""
    viewer, _, _ = start("ct")
    save(viewer, out / "start.png")
    viewer.close()


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


PICTURES: dict[str, Callable[[Path], None]] = {
    "start": as_opened,
    "ct-review": after_a_run("ct-review", "ct", "CT"),
    "mr-review": after_a_run("mr-review", "mr_t2", "MR"),
    "wrong-modality": after_a_run("wrong-modality", "mr_t2", "CT"),  # warned before, flagged after
    "uncertainty": after_a_run("uncertainty", "ct", "CT", show_uncertainty),
    "annotator-dice": after_a_run("annotator-dice", "ct", "CT", paint_missed_kidney),
    "mirrored-review": mirrored,
    "t1-review": after_a_run("t1-review", "mr_other", "MR"),  # read with its grey levels inverted
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
