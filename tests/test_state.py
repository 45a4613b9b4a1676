"""State a forward writes in place survives conversion, and every conversion proves itself (fxconv.verify).

Modules of our own shapes — a KV cache written by ``index_copy_``, by assignment and by ``scatter_``, a
recurrent state by ``copy_``, running statistics by ``mul_``/``add_``, a step counter — under every capture
and target, each run for several calls beside the original with its buffers compared.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxconv
from fxconv import VerificationError
from fxconv.verify import STEPS


class IndexCopyCache(nn.Module):
    """A decode step: writes one token's key into its cache at ``pos``, attends over the cache (batch 1)."""

    def __init__(self, width=16, length=6):
        super().__init__()
        self.q, self.k = nn.Linear(width, width), nn.Linear(width, width)
        self.register_buffer("cache", torch.zeros(1, length, width))
        self.register_buffer("pos", torch.zeros((), dtype=torch.long))

    def forward(self, x):  # (1, 1, width)
        self.cache.index_copy_(1, self.pos.view(1), self.k(x))
        self.pos.add_(1)
        return self.q(x) @ self.cache.transpose(1, 2)  # reads what the writes left: never a constant


class AssignedCache(nn.Module):
    """``cache[:, i] = k``: an assignment into the cache, then a Linear on all of it."""

    def __init__(self, width=8, length=4):
        super().__init__()
        self.k, self.out = nn.Linear(width, width), nn.Linear(width, 3)
        self.register_buffer("cache", torch.zeros(1, length, width))
        self.register_buffer("steps", torch.zeros(1, dtype=torch.long))

    def forward(self, x):  # (1, 1, width)
        self.cache[:, 1] = self.k(x)[:, 0]
        self.steps += 1
        return self.out(self.cache)


class ScatteredCache(nn.Module):
    """``scatter_`` of a Linear's output into a buffer, read back by another Linear."""

    def __init__(self, width=8, length=5):
        super().__init__()
        self.k, self.out = nn.Linear(width, width), nn.Linear(width, width)
        self.register_buffer("cache", torch.zeros(2, length, width))

    def forward(self, x):  # (2, 1, width)
        index = torch.zeros(2, 1, self.cache.shape[2], dtype=torch.long) + 2
        self.cache.scatter_(1, index, self.k(x))
        return self.out(self.cache.mean(1, keepdim=True) + x)


class Recurrent(nn.Module):
    """A streaming cell: the state a call leaves is the next call's input."""

    def __init__(self, width=8):
        super().__init__()
        self.cell = nn.Linear(width, width)
        self.register_buffer("state", torch.zeros(2, width))

    def forward(self, x):  # (2, width)
        new = torch.tanh(self.cell(x) + self.state)
        self.state.copy_(new)
        return new


class RunningMean(nn.Module):
    """Running statistics and a step counter, any batch."""

    def __init__(self, width=8):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, x):  # (N, L, width)
        y = self.fc(x)
        self.mean.mul_(0.9).add_(0.1 * y.mean((0, 1)))
        self.count.add_(1)
        return y - self.mean


class ViewWrite(nn.Module):
    """Writes through a view of its buffer (``acc[:, :2].mul_(...)``): the buffer is written all the same."""

    def __init__(self, width=8):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.register_buffer("acc", torch.zeros(2, 4, width))

    def forward(self, x):  # (2, width)
        window = self.acc[:, :2]
        window.mul_(0.5).add_(self.fc(x).unsqueeze(1))
        return self.fc(self.acc.sum(1))


STATEFUL = [  # (module, example, the buffers it writes)
    (IndexCopyCache, (1, 1, 16), ["cache", "pos"]),
    (AssignedCache, (1, 1, 8), ["cache", "steps"]),
    (ScatteredCache, (2, 1, 8), ["cache"]),
    (Recurrent, (2, 8), ["state"]),
    (RunningMean, (2, 3, 8), ["count", "mean"]),
    (ViewWrite, (2, 8), ["acc"]),
]


@pytest.mark.parametrize("target", fxconv.TARGETS)
@pytest.mark.parametrize("capture", fxconv.CAPTURES)
@pytest.mark.parametrize(("cls", "shape", "state"), STATEFUL, ids=[s[0].__name__ for s in STATEFUL])
def test_state_written_in_place_survives_every_capture_and_target(cls, shape, state, capture, target):
    torch.manual_seed(0)
    model, reference = cls().eval(), cls().eval()
    reference.load_state_dict(model.state_dict())
    module, report = fxconv.convert(model, torch.randn(shape), scope="all", target=target, capture=capture)
    assert report.state == state
    assert report.verified.calls == STEPS and sorted(report.verified.state) == state
    assert all(torch.count_nonzero(b) == 0 for b in model.buffers())  # fxconv's own runs gave every buffer back
    assert all(torch.count_nonzero(b) == 0 for b in module.buffers() if b.dtype != torch.bool)
    for _ in range(STEPS + 1):  # each call reads what the ones before wrote
        x = torch.randn(shape)
        torch.testing.assert_close(module(x), reference(x))
    buffers = dict(module.named_buffers())
    for name, buffer in reference.named_buffers():
        torch.testing.assert_close(buffers[name], buffer)


def test_the_report_names_the_state_and_what_was_verified():
    model = RunningMean().eval()
    module, report = fxconv.convert(model, torch.randn(2, 3, 8), scope="all", capture="fx")
    text = str(report)
    assert "state      count, mean: written in place by the forward" in text
    assert f"verified: batches 2 and 1, {STEPS} calls in a row, max abs diff" in text
    assert report.to_dict()["verified"]["batches"] == (2, 1)


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


def test_a_stateless_model_is_verified_at_two_batches_once_each():
    module, report = fxconv.convert(Head().eval(), torch.randn(2, 3, 6, 6))
    assert report.verified.batches == (2, 1) and report.verified.calls == 1 and report.verified.state == ()
    assert 0 < report.verified.max_abs_diff < 1e-4
    assert str(report).splitlines()[-1].startswith("  verified: batches 2 and 1, max abs diff")


def test_verify_false_says_not_verified_loudly():
    _, report = fxconv.convert(Head().eval(), torch.randn(2, 3, 6, 6), verify=False)
    assert report.verified is None
    assert "NOT VERIFIED: verify=False" in str(report)


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_a_wrong_rewrite_is_caught_before_convert_returns(monkeypatch, capture):
    from fxconv.fx.emit import FxBuilder

    conv = FxBuilder.conv

    def off_by_a_little(self, x, linear, weight_steps, kernel, strides):  # every conv 1 % too large
        return self.binary("mul", conv(self, x, linear, weight_steps, kernel, strides), 1.01)

    monkeypatch.setattr(FxBuilder, "conv", off_by_a_little)
    model = Head().eval()
    with pytest.raises(VerificationError, match=r"output at batch 2: the converted module differs from the model by"):
        fxconv.convert(model, torch.randn(2, 3, 6, 6), capture=capture)


def test_a_dropped_write_is_caught(monkeypatch):
    """What the rewrite did before: fx's dead-code pass took the unread in-place writes away."""
    from fxconv.fx import emit

    monkeypatch.setattr(emit, "is_side_effect", lambda node: node.is_impure())
    with pytest.raises(VerificationError, match=r"buffer 'state' at batch 2, call 1: the model writes it, the "
                                                r"converted module does not"):
        fxconv.convert(Recurrent().eval(), torch.randn(2, 8), scope="all", capture="fx")


def test_a_module_that_fails_at_another_batch_is_caught(monkeypatch):
    from fxconv.fx.emit import FxBuilder

    finish = FxBuilder.finish

    def finish_at_one_batch(self):  # a result that runs at the example's batch only
        finish(self)
        forward = self.gm.forward
        self.gm.forward = lambda x: forward(x) if x.shape[0] == 2 else x.view(-1, 7)

    monkeypatch.setattr(FxBuilder, "finish", finish_at_one_batch)
    with pytest.raises(VerificationError, match="the converted module fails at batch 1, where the model runs"):
        fxconv.convert(Head().eval(), torch.randn(2, 3, 6, 6), capture="fx")


class Many(nn.Module):
    """Outputs of every kind: floats, integers, booleans, a plain number, None, a dict."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        y = self.fc(x.flatten(1))
        return {"logits": y, "label": y.argmax(1), "positive": y > 0, "rows": y.shape[0], "none": None}


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_integer_boolean_and_plain_outputs_are_compared(capture):
    module, report = fxconv.convert(Many().eval(), torch.randn(2, 3, 2, 2), capture=capture)
    assert report.verified.batches == (2, 1) and len(report.converted) == 1


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.drop = nn.Linear(8, 16), nn.Linear(16, 8), nn.Dropout(0.5)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_dropout_in_training_mode_is_compared_under_one_seed_or_in_eval_mode(capture):
    model = Noisy().train()
    module, report = fxconv.convert(model, torch.randn(2, 5, 8), scope="all", capture=capture)
    assert report.verified.compared
    assert report.verified.note == "" or report.verified.note.startswith("compared in eval mode")
    assert model.training  # given back in its own mode


class Sampler(nn.Module):
    """Noise drawn in the forward, shaped like a value the conversion lays out otherwise."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h + torch.rand_like(h))


def test_random_draws_are_compared_under_one_seed():
    module, report = fxconv.convert(Sampler().eval(), torch.randn(2, 5, 8), scope="all", capture="fx")
    verified = report.verified
    assert (verified.compared and verified.max_abs_diff < 1e-4) or verified.note.startswith("the forward draws")
    assert str(verified).startswith("verified" if verified.compared else "NOT VERIFIED")


def test_a_buffer_read_as_a_weight_follows_a_loaded_state_dict():
    """symbolic_trace used to freeze what is computed from a buffer alone as a constant of the graph."""

    class Projection(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("basis", torch.randn(6, 4))

        def forward(self, x):  # (N, 6, 1, 1) -> flatten -> @ basis
            return x.flatten(1) @ self.basis.t().t()

    model = Projection().eval()
    module, report = fxconv.convert(model, torch.randn(2, 6, 1, 1), capture="fx")
    module.load_state_dict({"basis": torch.ones(6, 4)})
    x = torch.randn(3, 6, 1, 1)
    torch.testing.assert_close(module(x), x.flatten(1) @ torch.ones(6, 4))


class Reassigned(nn.Module):
    """``self.h = ...``: the forward gives its buffer a new tensor."""

    def __init__(self):
        super().__init__()
        self.cell = nn.Linear(8, 8)
        self.register_buffer("h", torch.zeros(2, 8))

    def forward(self, x):
        self.h = torch.tanh(self.cell(x) + self.h)
        return self.h * 2


def test_a_buffer_assigned_anew_is_state_through_torch_export_and_refused_by_symbolic_trace():
    with pytest.raises(fxconv.TraceError, match=r"assigns its buffer 'h' \(self.h = \.\.\.\), a write symbolic_trace "
                                                r"cannot record"):
        fxconv.convert(Reassigned().eval(), torch.randn(2, 8), capture="fx")
    model = Reassigned().eval()
    module, report = fxconv.convert(model, torch.randn(2, 8), scope="all")
    assert report.capture == "torch.export" and report.state == ["h"] and report.verified.calls == STEPS
    assert torch.count_nonzero(model.h) == 0  # given back, the tensor it had included


class MaskedAttention(nn.Module):
    """Self-attention under a padding mask, called with rows whose keys are all masked (left padding)."""

    def __init__(self, width=16, heads=2):
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(width, 3 * width), nn.Linear(width, width)

    def forward(self, x, keep):  # x (N, L, C), keep (N, 1, L, L) boolean
        n, length, width = x.shape
        qkv = self.qkv(x)
        q, k, v = (qkv[..., i * width:(i + 1) * width].view(n, length, self.heads, -1).transpose(1, 2)
                   for i in range(3))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        return self.out(y.transpose(1, 2).reshape(n, length, width))


@pytest.mark.parametrize("boolean", [True, False], ids=["boolean", "additive"])
@pytest.mark.parametrize("capture", ["fx", "export"])
@pytest.mark.parametrize("target", fxconv.TARGETS)
def test_a_query_whose_keys_are_all_masked_attends_to_nothing_as_in_pytorch(target, capture, boolean):
    torch.manual_seed(0)
    keep = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    keep[0, :, :2] = False  # the first two queries of row 0 see no key: sdpa gives them 0, not NaN
    keep[0, :, :, :2] = False
    mask = keep if boolean else torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    model, x = MaskedAttention().eval(), torch.randn(2, 5, 16)
    module, report = fxconv.convert(model, (x, mask), scope="all", target=target, capture=capture)
    assert report.verified.compared
    got = module(x, mask)
    assert not got.isnan().any()
    torch.testing.assert_close(got, model(x, mask))


class WideValues(nn.Module):
    """Attention whose value heads are wider than its query and key heads (timm's TinyViT: attn_ratio)."""

    def __init__(self, width=16, heads=2, key_dim=4, value_dim=12):
        super().__init__()
        self.heads, self.key_dim, self.value_dim = heads, key_dim, value_dim
        self.q, self.k = nn.Linear(width, heads * key_dim), nn.Linear(width, heads * key_dim)
        self.v, self.out = nn.Linear(width, heads * value_dim), nn.Linear(heads * value_dim, width)

    def forward(self, x):
        n, length, _ = x.shape
        q, k = (p(x).view(n, length, self.heads, self.key_dim).transpose(1, 2) for p in (self.q, self.k))
        v = self.v(x).view(n, length, self.heads, self.value_dim).transpose(1, 2)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(n, length, -1))


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_value_heads_wider_than_query_heads_convert_for_core_ml(capture):
    model, x = WideValues().eval(), torch.randn(2, 5, 16)
    module, report = fxconv.convert(model, x, target="coreml", capture=capture, strict=True)
    assert report.verified.batches == (2, 1)
    einsums = [n for n in module.graph.nodes if n.target is torch.einsum]
    assert len(einsums) == 4  # split per head: two einsums each
    x = torch.randn(4, 5, 16)
    torch.testing.assert_close(module(x), model(x))


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_export_onnx_refuses_a_module_with_state_in_one_line(capture, tmp_path):
    model = IndexCopyCache().eval()
    module, _ = fxconv.convert(model, torch.randn(1, 1, 16), scope="all", capture=capture)
    with pytest.raises(fxconv.OnnxError, match=r"writes the buffers 'cache', 'pos' in its forward .* an ONNX file "
                                               r"runs each call from the same constants") as refused:
        fxconv.export_onnx(module, torch.randn(1, 1, 16), tmp_path / "step.onnx")
    assert "\n" not in str(refused.value) and not list(tmp_path.iterdir())  # nothing written
    with pytest.raises(fxconv.OnnxError, match="writes the buffers 'cache', 'pos'"):  # the model itself too
        fxconv.export_onnx(model, torch.randn(1, 1, 16), tmp_path / "model.onnx")


def test_check_onnx_leaves_the_reference_model_s_state_as_it_was(tmp_path):
    x = torch.randn(2, 3, 8)
    path = fxconv.export_onnx(nn.Linear(8, 8).eval(), x, tmp_path / "fc.onnx")
    stateful = RunningMean().eval()
    fxconv.check_onnx(path, stateful, x)  # not this model's file: what matters is the model's state after
    assert int(stateful.count) == 0 and torch.count_nonzero(stateful.mean) == 0


class Shared(nn.Module):
    """One Linear called twice, and an output that is the input itself."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x))), x


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_gradients_reach_a_shared_parameter_as_before_and_an_input_passed_through_is_returned(capture):
    torch.manual_seed(0)
    model, x = Shared().eval(), torch.randn(2, 5, 8)
    module, report = fxconv.convert(model, x, scope="all", capture=capture)
    assert len(report.converted) == 2 and report.verified.batches == (2, 1)
    (got, passed), (want, _) = module(x), model(x)
    assert passed is x or torch.equal(passed, x)
    got.square().sum().backward()
    want.square().sum().backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad)


def test_a_graph_module_converted_in_place_is_compared_with_itself_as_it_was_and_put_back_on_failure(monkeypatch):
    from fxconv.fx.emit import FxBuilder

    gm = torch.fx.symbolic_trace(Head().eval())
    code, x = gm.code, torch.randn(2, 3, 6, 6)
    conv = FxBuilder.conv
    monkeypatch.setattr(FxBuilder, "conv", lambda self, *a: self.binary("mul", conv(self, *a), 1.01))
    with pytest.raises(VerificationError, match="output at batch 2: the converted module differs"):
        fxconv.convert(gm, x, inplace=True)
    assert gm.code == code and not [n for n in vars(gm) if n.startswith("_fxconv")]  # nothing half-done
    monkeypatch.undo()
    module, report = fxconv.convert(gm, x, inplace=True)
    assert module is gm and gm.code != code and report.verified.batches == (2, 1)
