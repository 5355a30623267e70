"""Wiring of every variant: which parameters each modality trains, and output shapes."""

import pytest
import torch

from napari_mmseg.config import PRESETS, VARIANTS, NetworkConfig
from napari_mmseg.models.dual_stream import STREAM_PARTS, MultiModalFCN, parameter_modality, use_blended_statistics

SMALL = NetworkConfig(filters=(4, 8, 8, 16, 16), units_per_scale=2)


def make(variant, config=SMALL):
    modalities = ("CT",) if variant == "individual" else ("CT", "MR")
    return MultiModalFCN(variant, config, modalities)


def grads_after(model, modality):
    model.zero_grad(set_to_none=True)
    model.train()
    model(torch.randn(2, 1, 16, 16, 16), modality).square().mean().backward()
    return {n: p.grad for n, p in model.named_parameters()}


def nonzero(g):
    return g is not None and bool(g.abs().sum() > 0)


@pytest.mark.parametrize("variant", ["joint", "v1", "v2", "v3", "v4", "msbn"])
def test_each_modality_trains_only_its_own_and_the_shared_parameters(variant):
    model = make(variant)
    by_mod = {m: grads_after(model, m) for m in ("MR", "CT")}
    owners = {n: parameter_modality(n) for n, _ in model.named_parameters()}
    for m, other in (("MR", "CT"), ("CT", "MR")):
        for name, g in by_mod[m].items():
            if owners[name] == other:
                assert not nonzero(g), f"{m} batch moved {other}-only parameter {name}"
            else:
                assert nonzero(g), f"{m} batch left {name} without gradient"
    shared = [n for n, o in owners.items() if o is None]
    assert shared, "every variant shares something"
    if variant in ("joint", "msbn"):
        assert all(o is None for n, o in owners.items() if "norms" not in n)
    else:
        assert any(o == "CT" for o in owners.values()) and any(o == "MR" for o in owners.values())


@pytest.mark.parametrize(
    "variant, streamed",
    [
        ("v1", {"stem", "scale1", "scale2", "scale3", "bottleneck"}),
        ("v2", {"stem", "scale1"}),
        ("v3", {"decoder"}),
        ("v4", {"stem", "scale1", "scale2", "scale3", "decoder"}),
    ],
)
def test_streams_follow_the_paper(variant, streamed):
    model = make(variant)
    assert set(STREAM_PARTS[variant]) == streamed
    for part in ("stem", "scale1", "scale2", "scale3", "bottleneck", "decoder"):
        names = [n for n, _ in getattr(model, part).named_parameters()]
        has_streams = any(n.startswith("streams.") for n in names)
        assert has_streams == (part in streamed), part


def test_v4_bottleneck_is_one_copy_used_by_both():
    model = make("v4")
    ct, mr = grads_after(model, "CT"), grads_after(model, "MR")
    name = next(n for n, _ in model.named_parameters() if n.startswith("bottleneck.") and "conv" in n)
    assert nonzero(ct[name]) and nonzero(mr[name])


def test_msbn_keeps_batch_statistics_per_modality():
    model = make("msbn")
    model.train()
    model(torch.randn(2, 1, 16, 16, 16) + 5.0, "CT")
    bn = model.scale1.units[0].norm_a.norms
    assert not torch.allclose(bn["CT"].running_mean, bn["MR"].running_mean)


@pytest.mark.parametrize("variant", ["v1", "v2", "v3", "v4"])
def test_shared_bn_of_dual_stream_evaluates_with_its_modalitys_statistics(variant):
    """Training batches hold one modality, so a shared BN normalises with that modality's
    batch statistics; evaluation must use the same modality's running statistics."""
    model = make(variant)
    shared = next(m for n, m in model.named_modules() if n.endswith("skip_norm") and "streams" not in n) \
        if variant in ("v1", "v2") else model.bottleneck.units[0].norm_a
    model.train()
    with torch.no_grad():
        for _ in range(20):
            model(torch.randn(2, 1, 16, 16, 16) * 3 + 5, "CT")
            model(torch.randn(2, 1, 16, 16, 16), "MR")
    assert not torch.allclose(shared.running_mean_CT, shared.running_mean_MR)
    model.eval()
    x = torch.randn(1, 1, 16, 16, 16) * 3 + 5
    with torch.no_grad():
        own = model(x, "CT")
        use_blended_statistics(model)
        assert not torch.allclose(own, model(x, "CT"))
        use_blended_statistics(model, False)
        assert torch.equal(own, model(x, "CT"))


def test_streamed_parts_keep_no_statistics_for_the_other_modality():
    names = [n for n, _ in make("v4").named_buffers()]
    assert not any("streams.CT" in n and n.endswith("_MR") for n in names)
    assert any(n.startswith("bottleneck.") and n.endswith("running_mean_MR") for n in names)


def test_joint_ignores_modality_in_eval():
    model = make("joint").eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x, "CT"), model(x, "MR"))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [(8, 16, 24), (32, 16, 8)])
def test_output_shape_matches_input(variant, shape):
    model = make(variant).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, *shape), "CT")
    assert out.shape == (1, 5, *shape)


def test_sizes_not_multiple_of_eight_are_rejected():
    with pytest.raises(ValueError, match="multiples of 8"):
        make("v4")(torch.randn(1, 1, 12, 16, 16), "CT")


def test_individual_serves_one_modality():
    with pytest.raises(ValueError, match="serves CT"):
        make("individual")(torch.randn(1, 1, 8, 8, 8), "MR")


def test_paper_preset_is_the_papers_network():
    net = PRESETS["paper"].network
    assert net.filters == (16, 64, 128, 256, 512) and net.strides == (1, 2, 2, 2, 1)
    assert net.units_per_scale == 3
    light = PRESETS["light"].network
    assert light.strides == net.strides and len(light.filters) == 5


def test_interpolate_upsampling_option_gives_same_shapes():
    cfg = NetworkConfig(filters=(4, 8, 8, 8, 8), units_per_scale=1, upsample="interpolate", strided_kernel=4)
    out = MultiModalFCN("v4", cfg)(torch.randn(1, 1, 16, 16, 16), "MR")
    assert out.shape == (1, 5, 16, 16, 16)
