"""The layout maths (``fxconv.layouts``), pinned on numpy arrays: no graph, no IR.

Every step list a layout gives is applied to numbers (``fxconv.onnx.emit.apply_to_array``, the same
steps the builders turn into nodes) and compared with the identity it stands for.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fxconv.layouts import KEEP, MapLayout, apply_to_shape, compose, inverse, layout_for, vectors
from fxconv.onnx.emit import apply_to_array

RNG = np.random.default_rng(0)
LAYOUTS = [(rank, folded) for rank in (2, 3, 4, 5) for folded in (True, False) if rank == 2 or folded]


def test_each_step_means_what_apply_to_shape_says():
    x = RNG.standard_normal((2, 3, 4))
    for steps, want in [
        ([("permute", (2, 0, 1))], x.transpose(2, 0, 1)),
        ([("unsqueeze", (0, 2))], x[None, :, None]),
        ([("unsqueeze", (0, 0))], x[None, None]),  # one after the other: two leading 1s
        ([("squeeze", (0,))], x[:1].squeeze(0)),
        ([("reshape", (KEEP, -1))], x.reshape(2, 12)),
        ([("unflatten", 2, (2, 2))], x.reshape(2, 3, 2, 2)),
        ([("flatten", 1)], x.reshape(2, 12)),
    ]:
        source = x[:1] if steps[0][0] == "squeeze" else x
        got = apply_to_array(source, steps)
        np.testing.assert_array_equal(got, want)
        assert apply_to_shape(source.shape, steps) == got.shape


@pytest.mark.parametrize(("rank", "folded"), LAYOUTS)
def test_a_position_layout_enters_and_leaves_and_knows_where_each_dim_goes(rank, folded):
    layout = layout_for(rank, folded)
    shape = (3, *range(2, rank), 5)  # (N, *positions, C)
    x = RNG.standard_normal(shape)
    form = apply_to_array(x, layout.enter_steps())
    assert form.shape == layout.form_shape(shape)
    np.testing.assert_array_equal(apply_to_array(form, layout.leave_steps()), x)
    assert form.shape[1] == 5 and layout.channel_dim == 1  # the Linear's features on the channel axis
    for d in range(rank):  # every dim of the value is one dim of the form
        assert form.shape[layout.form_dim(d)] == shape[d]
    # A Linear at every position is the 1x1 convolution of the form: W (out, C) as (out, C, 1, ...).
    w = RNG.standard_normal((7, 5))
    conv_w = apply_to_array(w, layout.weight_steps(5))
    y_form = np.einsum("oc...,nc...->no...", conv_w.reshape(7, 5), form)
    np.testing.assert_allclose(apply_to_array(y_form, layout.leave_steps()), x @ w.T)


@settings(max_examples=60, deadline=None)
@given(
    rank=st.integers(3, 5),
    order=st.permutations(range(5)),
    folded=st.booleans(),
)
def test_a_permute_of_a_form_is_one_permute_and_the_convnext_pair_cancels(rank, order, folded):
    order = tuple(d for d in order if d < rank)
    layout = layout_for(rank, folded)
    x = RNG.standard_normal((2, *range(2, rank), 3))
    form = apply_to_array(x, layout.enter_steps())
    steps = layout.permuted_steps(order)
    assert sum(s[0] == "permute" for s in steps) <= 1
    np.testing.assert_array_equal(apply_to_array(form, steps), x.transpose(order))
    # Entering x.permute(order) needs no permute exactly when the layout's own undoes it.
    assert layout.cancels(order) == (compose(order, layout.perm) == tuple(range(rank)))
    # NCHW -> NHWC (ConvNeXt), and (N, C, L) -> (N, L, C) of a patch embedding: the form is the input.
    assert layout.cancels((0, *range(2, rank), 1))


@settings(max_examples=60, deadline=None)
@given(
    rank=st.integers(2, 5),
    folded=st.booleans(),
    data=st.data(),
)
def test_a_constant_is_laid_out_to_broadcast_against_the_form(rank, folded, data):
    layout = layout_for(rank, folded)
    shape = (2, *range(2, rank), 3)
    operand_shape = tuple(data.draw(st.sampled_from([1, s])) for s in shape[data.draw(st.integers(0, rank - 1)):])
    x, c = RNG.standard_normal(shape), RNG.standard_normal(operand_shape)
    steps = layout.constant_steps(operand_shape)
    form = apply_to_array(x, layout.enter_steps()) * apply_to_array(c, steps)
    np.testing.assert_allclose(apply_to_array(form, layout.leave_steps()), x * c)
    padded = (1,) * (rank - len(operand_shape)) + operand_shape
    if sum(s != 1 for s in padded) <= 1:  # a per-channel scale and the like: one reshape, no permute
        assert [s[0] for s in steps] == ["reshape"]


@settings(max_examples=60, deadline=None)
@given(
    features=st.lists(st.integers(1, 4), min_size=2, max_size=4).map(tuple),
    n=st.integers(1, 3),
    channels_last=st.booleans(),
    folded=st.booleans(),
    mode=st.sampled_from(["kernel", "1x1", "channels-last"]),
)
def test_a_linear_on_a_flattened_map_is_a_convolution_over_its_form(features, n, channels_last, folded, mode):
    """``W`` over ``flatten(map.permute(perm))`` equals the convolution of the map's form with the weight
    viewed by ``weight_steps`` (for ``channels-last``, the Linear on the form), and the form leaves to the
    flattened value."""
    r = len(features) + 1
    perm = (0, *range(2, r), 1) if channels_last else tuple(range(r))
    layout = MapLayout(features, perm, folded, mode)
    m = RNG.standard_normal((n, *features))
    flat = m.transpose(perm).reshape(n, -1)
    form = apply_to_array(m, layout.enter_steps())
    np.testing.assert_array_equal(apply_to_array(form, layout.leave_steps()), flat)
    w = RNG.standard_normal((5, math.prod(features)))
    conv_w = apply_to_array(w, layout.weight_steps(w.shape[1]))
    if mode == "channels-last":  # no convolution: the Linear reads the map's channels-last flattening
        assert layout.out is None and form.shape == (n, w.shape[1])
        np.testing.assert_array_equal(form, m.transpose(0, *range(2, r), 1).reshape(n, -1))
        np.testing.assert_allclose(form @ conv_w.T, flat @ w.T, atol=1e-12)
        return
    got = _conv(form, conv_w, layout.strides)
    assert got.shape == apply_to_shape((n, 5), layout.out.enter_steps())  # the vector layout the head goes on in
    np.testing.assert_allclose(apply_to_array(got, layout.out.leave_steps()), flat @ w.T, atol=1e-12)


def test_vectors_fold_the_batch_along_the_width_or_keep_it_first():
    assert vectors(2, True).form_shape((5, 8)) == (1, 8, 1, 5)
    assert vectors(2, False).form_shape((5, 8)) == (5, 8, 1, 1)
    assert vectors(1, True).form_shape((5, 8)) == (1, 8, 5)
    assert vectors(3, True).form_shape((5, 8)) == (1, 8, 1, 1, 5)
    assert layout_for(6, True) is None  # no conv4d
    assert inverse((2, 0, 1)) == (1, 2, 0) and compose((2, 0, 1), inverse((2, 0, 1))) == (0, 1, 2)


def _conv(x: np.ndarray, w: np.ndarray, strides) -> np.ndarray:
    """A convolution without padding, in numpy (enough for kernels that tile the input)."""
    spatial = x.shape[2:]
    kernel = w.shape[2:]
    out = [(s - k) // t + 1 for s, k, t in zip(spatial, kernel, strides, strict=True)]
    y = np.zeros((x.shape[0], w.shape[0], *out))
    for position in np.ndindex(*out):
        window = tuple(slice(p * t, p * t + k) for p, t, k in zip(position, strides, kernel, strict=True))
        patch = x[(slice(None), slice(None), *window)]
        y[(slice(None), slice(None), *position)] = patch.reshape(len(x), -1) @ w.reshape(len(w), -1).T
    return y
