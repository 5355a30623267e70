"""Segmenting a scan: canonical resampling, normalisation, sliding windows with Gaussian
weighting (MONAI), a context pass at twice the spacing where the weights have one, stray
pieces of organs dropped, and labels back on the scan's own grid.

Progress goes out through a plain callback `progress(fraction, stage)` and a `cancel()`
callable is polled between windows, so any front end (tqdm, napari) can drive it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk
import torch

from napari_mmseg.contrast_shifts import invert
from napari_mmseg.device import mixed_precision, place, resolve_device, tune_cpu
from napari_mmseg.errors import Cancelled
from napari_mmseg.inference.context_grid import coarsen, refine, with_context
from napari_mmseg.inference.mr_polarity import PolarityChoice, organ_confidence, was_read_inverted
from napari_mmseg.inference.organ_pieces import without_stray_pieces
from napari_mmseg.inference.orientation_check import LiverFound, MirrorCheck, liver_found
from napari_mmseg.models.dual_stream import MultiModalFCN
from napari_mmseg.models.weights import LoadedModel
from napari_mmseg.organs import check_modality
from napari_mmseg.preprocessing import IntensityNorm, body_mask, guess_modality, probabilities_to_native, to_canonical
from napari_mmseg.review.confidence import probability_maps
from napari_mmseg.review.flags import ScanReview, review_image

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


@dataclass(frozen=True)
class InferenceOptions:
    overlap: float = 0.5
    device: str = "auto"
    crop_to_body: bool = True
    windows_per_batch: int = 2
    mixed_precision: bool = True  # float16 on CUDA; CPU inference stays float32
    uncertainty: bool = True  # per-voxel confidence and uncertainty maps (and per-organ confidence)
    drop_stray_pieces: bool = True  # pieces of an organ far smaller than its largest: background
    # run the network on the left–right mirror image too, to flag a scan whose orientation
    # metadata swaps left and right (`orientation_check.py`); costs a second sliding-window pass
    check_orientation: bool = True
    # MR only: read the scan with its grey levels inverted too, and keep the reading the network
    # is surer of (`mr_polarity.py`: T1-like sequences); costs one more pass on MR
    try_inverted_mr: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError("overlap must be in [0, 1)")

    def reads_inverted(self, modality: str) -> bool:
        """Whether a scan of `modality` is also read with its grey levels inverted."""
        return self.try_inverted_mr and modality == "MR"


@dataclass
class Segmentation:
    labels: sitk.Image  # uint8, on the input scan's grid
    device: str
    variant: str
    modality: str
    review: ScanReview  # volumes, confidence and plausibility flags per organ
    # on the scan's grid, float32; None with InferenceOptions(uncertainty=False)
    confidence: sitk.Image | None = None  # largest class probability per voxel
    uncertainty: sitk.Image | None = None  # normalised entropy per voxel, 0 (sure) to 1
    timings: dict[str, float] = field(default_factory=dict)
    # the context pass found an organ much larger than the windows did, and was taken in
    # (blended, or filling the windows' background: `context_grid.with_context`)
    context_blended: bool = False
    polarity: PolarityChoice | None = None  # MR: the scan read as given and inverted

    @property
    def read_inverted(self) -> bool:
        return was_read_inverted(self.polarity)

    @property
    def notes(self) -> tuple[str, ...]:
        """For the user: how the labels were made, where that was not the plain way."""
        context = ("an organ looked larger than the sliding windows could see whole: the whole-abdomen "
                   "context pass was used for it")
        return tuple(n for n in (context if self.context_blended else "",
                                 self.polarity.note if self.polarity else "") if n)


def body_box(values: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of the voxels brighter than air (plus a margin): windows outside it are
    empty, so the network need not see them."""
    mask = body_mask(values)
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=others))
        box.append(slice(max(0, hit[0] - margin), min(values.shape[axis], hit[-1] + 1 + margin)))
    return tuple(box)


def window_count(shape: tuple[int, ...], patch: int, overlap: float) -> int:
    """How many windows MONAI's sliding window visits on a volume of `shape`."""
    interval = max(1, int(patch * (1 - overlap)))
    return math.prod(1 if n <= patch else math.ceil((n - patch) / interval) + 1 for n in shape)


def predict_probabilities(
    model: MultiModalFCN,
    volume: np.ndarray,
    modality: str,
    patch: int,
    device: torch.device,
    options: InferenceOptions = InferenceOptions(),
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    timings: dict[str, float] | None = None,
) -> np.ndarray:
    """Class probabilities (float32, classes × z × y × x) for a normalised volume on the
    model's grid: softmax of overlapping windows, averaged with Gaussian weights."""
    from monai.inferers import sliding_window_inference  # slow to import: only when needed
    n_windows = window_count(volume.shape, patch, options.overlap)
    done = 0
    network_s = 0.0
    autocast = mixed_precision(device, training=False) if options.mixed_precision else nullcontext()

    def predictor(x: torch.Tensor) -> torch.Tensor:
        nonlocal done, network_s
        if cancel is not None and cancel():
            raise Cancelled("Segmentation cancelled.")
        t = time.perf_counter()
        with autocast:
            out = torch.softmax(model(place(x, device), modality).float(), dim=1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        network_s += time.perf_counter() - t
        done += x.shape[0]
        if progress is not None:
            progress(min(done / n_windows, 1.0), f"windows {min(done, n_windows)} of {n_windows}")
        return out

    place(model, device).eval()
    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None].to(device)
    if progress is not None:
        progress(0.0, f"windows 0 of {n_windows}")  # the first batch is the slowest: say it has begun
    t0 = time.perf_counter()
    with torch.inference_mode():
        probs = sliding_window_inference(
            x, (patch,) * 3, options.windows_per_batch, predictor, overlap=options.overlap,
            mode="gaussian", padding_mode="constant", cval=float(volume.min()),
        )
        probs = probs[0].float().cpu().numpy()
    if timings is not None:
        timings["network"] = timings.get("network", 0.0) + network_s
        timings["stitching"] = timings.get("stitching", 0.0) + time.perf_counter() - t0 - network_s
    return probs


def predict_scan(
    model: MultiModalFCN,
    raw: np.ndarray,
    norm: IntensityNorm,
    modality: str,
    patch: int,
    device: torch.device,
    context_weight: float = 0.0,
    options: InferenceOptions = InferenceOptions(),
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    timings: dict[str, float] | None = None,
    windows_seen: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> tuple[np.ndarray, bool]:
    """Class probabilities on the model's grid for a scan's intensities there (a crop of the
    canonical scan, not yet normalised): the sliding-window pass and, when a pass on the
    context grid (twice the spacing) finds an organ much larger than the windows do, that
    pass taken in as `context_grid.with_context` says: blended by `context_weight`, the
    share the weights were trained and measured with (0: no context pass), or, when an organ
    is twice as large there, filling the windows' background. Also says whether it was used.

    A scan shorter than one window along z (a slab: a breath-hold series, a small field of
    view) gets no context pass: the windows already see all of its length, and on 60 mm slabs
    of held-out patients the pass cost Dice (docs/results.md#thin-slabs).

    `windows_seen(probs, normalised)` is shown the windows' probabilities before any blending,
    and the normalised intensities they read."""
    def normalised(values: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = norm.apply(values)
        if timings is not None:
            timings["normalise"] = timings.get("normalise", 0.0) + time.perf_counter() - t
        return out

    seen = windows_seen or (lambda p, x: None)
    fine = normalised(raw)
    if not context_weight or raw.shape[0] < patch:
        probs = predict_probabilities(model, fine, modality, patch, device, options, progress, cancel, timings)
        seen(probs, fine)
        return probs, False
    coarse = coarsen(raw)
    n_fine, n_coarse = (window_count(v.shape, patch, options.overlap) for v in (raw, coarse))
    share = n_fine / (n_fine + n_coarse)
    report = progress or (lambda f, s: None)
    probs = predict_probabilities(model, fine, modality, patch, device, options,
                                  lambda f, s: report(share * f, s), cancel, timings)
    seen(probs, fine)
    del fine
    context = predict_probabilities(model, normalised(coarse), modality, patch, device, options,
                                    lambda f, s: report(share + (1 - share) * f, f"context {s}"), cancel, timings)
    return with_context(probs, refine(context, probs.shape[1:]), context_weight)


@dataclass
class Reading:
    """Class probabilities on the model's grid, and how they were read."""
    probs: np.ndarray
    context_blended: bool
    # the windows' organ confidence before any context blending (`mr_polarity.py`), when the
    # scan is read both ways round; None otherwise
    confidence: float | None = None
    polarity: PolarityChoice | None = None  # MR read both ways; None when read only as given
    # in the windows' pass, before any context blending (for the mirror check, when it is on)
    liver: LiverFound | None = None
    # the normalised intensities the windows read (the scan's, or MR inverted), kept for the
    # mirror check, which reads their mirror image; None when it is off
    normalised: np.ndarray | None = None


def read_each_way(
    loaded: LoadedModel,
    raw: np.ndarray,
    modality: str,
    device: torch.device,
    options: InferenceOptions = InferenceOptions(),
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    timings: dict[str, float] | None = None,
) -> list[Reading]:
    """`predict_scan` on the scan as given and, for MR (`options.try_inverted_mr`), with its
    grey levels inverted: one reading each, in that order."""
    meta = loaded.meta
    passes = [("", raw)]
    if options.reads_inverted(modality):
        passes.append(("inverted MR: ", invert(raw)))
    report = progress or (lambda f, s: None)
    readings = []
    for i, (stage, values) in enumerate(passes):
        seen: list[tuple[float | None, LiverFound | None, np.ndarray | None]] = []

        def windows_seen(probs: np.ndarray, normalised: np.ndarray, seen: list = seen) -> None:
            confidence = organ_confidence(probs) if len(passes) > 1 else None
            if options.check_orientation:
                seen.append((confidence, liver_found(probs, meta.voxel_ml), normalised))
            else:
                seen.append((confidence, None, None))

        t = time.perf_counter()
        probs, blended = predict_scan(
            loaded.model, values, meta.normalization[modality], modality, meta.patch_size, device,
            meta.context_weight, options, cancel=cancel, timings=timings,
            progress=lambda f, s, i=i, stage=stage: report((i + f) / len(passes), stage + s),
            windows_seen=windows_seen,
        )
        confidence, liver, normalised = seen[0]
        readings.append(Reading(probs, blended, confidence, liver=liver, normalised=normalised))
        if i and timings is not None:
            timings["mr_polarity"] = time.perf_counter() - t  # its network time is also in "network"
    return readings


def kept_reading(readings: list[Reading]) -> Reading:
    """Of `read_each_way`'s readings, the one whose labels are given: for an MR scan read both
    ways round, the one the network is surer of (`mr_polarity.py`), judged on the sliding
    windows of each before any context blending: a blended pass is less sure by construction,
    and only one of the two may have blended."""
    if len(readings) == 1:
        return readings[0]
    polarity = PolarityChoice(*(r.confidence for r in readings))
    return replace(readings[polarity.read_inverted], polarity=polarity)


def labels_on_model_grid(probs: np.ndarray) -> np.ndarray:
    """The organ ids that `segment_image` gives, on the model's grid (for validation and studies)."""
    return without_stray_pieces(probs).argmax(axis=0).astype(np.uint8)


def segment_image(
    image: sitk.Image,
    loaded: LoadedModel,
    modality: str,
    options: InferenceOptions = InferenceOptions(),
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> Segmentation:
    """Segment a 3-D scan with a loaded model; the labels come back on the scan's grid."""
    modality = check_modality(modality)
    meta = loaded.meta
    if modality not in meta.modalities:
        raise ValueError(f"These {meta.variant} weights serve {'/'.join(meta.modalities)}, not {modality}.")
    device = resolve_device(options.device)
    if device.type == "cpu":
        tune_cpu()
    timings: dict[str, float] = {}
    report = progress or (lambda f, s: None)

    t = time.perf_counter()
    report(0.0, "resampling to the model's grid")
    canonical = to_canonical(image, meta.spacing_mm)
    raw = sitk.GetArrayFromImage(canonical)
    timings["resample"] = time.perf_counter() - t

    if guess_modality(raw) != modality:
        warnings.warn(
            f"The scan's intensities look like {guess_modality(raw)}, not {modality}: "
            "check the modality, or the labels will be poor.",
            stacklevel=2,
        )
    t = time.perf_counter()
    box = (
        body_box(raw, margin=meta.patch_size // 8)
        if options.crop_to_body
        else tuple(slice(0, n) for n in raw.shape)
    )
    timings["normalise"] = time.perf_counter() - t  # the crop (`predict_scan` adds the normalisation)

    n_passes = 1 + options.reads_inverted(modality) + options.check_orientation
    share = 0.9 * (n_passes - options.check_orientation) / n_passes  # of the progress bar: the readings
    reading = kept_reading(read_each_way(loaded, raw[box], modality, device, options,
                                         progress=lambda f, s: report(round(0.05 + share * f, 6), s),
                                         cancel=cancel, timings=timings))
    probs_crop, context_blended = reading.probs, reading.context_blended
    mirror = None
    if options.check_orientation:
        t = time.perf_counter()
        mirrored = predict_probabilities(
            loaded.model, np.ascontiguousarray(reading.normalised[:, :, ::-1]), modality,
            meta.patch_size, device, options,
            lambda f, s: report(round(0.05 + share + (0.9 - share) * f, 6), f"mirror check: {s}"), cancel, timings,
        )
        mirror = MirrorCheck(reading.liver, liver_found(mirrored, meta.voxel_ml))
        del mirrored
        timings["mirror_check"] = time.perf_counter() - t  # its network time is also in "network"
    t = time.perf_counter()
    report(0.95, "resampling back to the scan's grid")
    labelled = without_stray_pieces(probs_crop) if options.drop_stray_pieces else probs_crop
    native = probabilities_to_native(labelled, canonical, image, where=box)
    del labelled  # the copy without stray pieces: free before the uncertainty maps
    timings["resample_back"] = time.perf_counter() - t
    confidence = uncertainty = None
    if options.uncertainty:
        t = time.perf_counter()
        report(0.97, "confidence and uncertainty maps")
        confidence, uncertainty = probability_maps(probs_crop, canonical, image, where=box)
        timings["uncertainty"] = time.perf_counter() - t
    t = time.perf_counter()
    report(0.99, "checking the organs")
    review = review_image(native, confidence)
    if mirror is not None and mirror.flag:
        review = replace(review, scan_flags=(mirror.flag,))
    timings["review"] = time.perf_counter() - t
    report(1.0, "done")
    return Segmentation(native, str(device), meta.variant, modality, review, confidence, uncertainty, timings,
                        context_blended, reading.polarity)
