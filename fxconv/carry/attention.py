"""Attention in the channels-first layout, split per head as Apple's Neural Engine wants it (``SPLIT_EINSUM``).

Before (``q``, ``k``, ``v`` (N, H, L, D): a projection's (N, L, C) output reshaped to heads and transposed)::

    F.scaled_dot_product_attention(q, k, v, mask) ─ transpose(1, 2) ─ reshape(N, L, C) ─ out_proj ─▶

After (``Q``, ``K``, ``V`` the projections' forms (N, C, 1, L) — the reshape and transposes that made the
heads cost nothing, ``fxconv.layouts.SplitLayout``)::

    Kᵀ = K.transpose(1, 3)                                                  (N, S, 1, C): once
    for each head h:  w = einsum("bchq,bkhc->bkhq", Q[:, h·D:(h+1)·D], Kᵀ[..., h·D:(h+1)·D]) · scale + maskᵀ
                      w = softmax(w, dim=1)                                 (N, S, 1, L): keys along dim 1
                      o_h = einsum("bkhq,bchk->bchq", w, V[:, h·Dv:(h+1)·Dv])  (N, Dv, 1, L)
    O = cat(o_h, dim=1)                                                     (N, H·Dv, 1, L) ─ out_proj ─▶

(D a query's and key's head dims, Dv a value's: TinyViT's value heads are wider.)

The two einsums are the equations Apple's ml-ane-transformers and ml-stable-diffusion use; coremltools
maps them to batched matmuls with no transpose (measured: one MIL transpose per attention, the Kᵀ).
``softmax(q·kᵀ·scale + mask)·v`` is the same sum per head, query and key, so the output is exact. Grouped
heads (GQA: fewer key/value heads) read their group's slice; a boolean mask is its additive 0/-inf, and a
query whose keys are all masked (a left-padded batch's padding) attends to nothing — 0, as sdpa's safe
softmax gives, where softmax over -inf alone is NaN (``where(isnan(w), 0, w)``); a causal
one (``is_causal=True``, as Hugging Face's decoders call sdpa without a mask) is the constant (1, S, 1, L)
mask that is 0 where key k <= query q and -inf after it, sdpa's own (top-left aligned). Not carried: dropout.
"""

from __future__ import annotations

from typing import ClassVar

from ..layouts import SplitLayout
from .rule import Moved, Rule

_HEADS = ("N", 0, "L", 1)  # (N, H, L, D): heads, positions, a head's dims


class Attention(Rule):
    name = "attention"
    torch = ("F.scaled_dot_product_attention",)
    aten = ("scaled_dot_product_attention",)
    not_at: ClassVar[dict[str, str]] = {
        "onnx": "ONNX files hold attention as MatMul and Softmax nodes (opset 23's Attention aside), which the "
                "PyTorch op's rewrite would have to be matched from first",
    }

    def read_fx(self, node, ctx) -> dict | None:
        mask, causal = ctx.arg(3, "attn_mask"), ctx.arg(5, "is_causal", False)
        if ctx.arg(4, "dropout_p", 0.0) or not isinstance(causal, bool):
            return None
        qkv = [ctx.arg(0, "query"), ctx.arg(1, "key"), ctx.arg(2, "value")]
        params = {"mask": mask, "boolean": mask is not None and ctx.is_bool(mask), "scale": ctx.arg(6, "scale"),
                  "causal": causal}  # fmt: skip
        return {**params, "inputs": qkv + ([mask] if mask is not None else [])}

    def check(self, op, layout, formed) -> str | None:
        q, k, v = (i.value for i in op.inputs[:3])
        if not all(formed(t) for t in (q, k, v)):
            return "its queries, keys and values are not all a projection's channels split into heads"
        if not isinstance(layout, SplitLayout) or layout.order != _HEADS:
            return "its queries are not laid out (N, heads, L, head dim)"
        heads, kv_heads = op.inputs[0].shape[1], op.inputs[1].shape[1]
        return None if heads % kv_heads == 0 else "its heads are not groups of its key/value heads"

    def rewrite(self, op, layout, ctx, build) -> Moved:
        q, k, v = (ctx.form(i.value) for i in op.inputs[:3])
        heads, dim, value_dim = op.inputs[0].shape[1], op.inputs[0].shape[-1], op.inputs[2].shape[-1]
        kv_heads = op.inputs[1].shape[1]
        scale = op.params["scale"] if op.params["scale"] is not None else dim**-0.5
        keys = build.apply(k, [("permute", (0, 3, 2, 1))])  # (N, S, 1, C): the one transpose
        mask = op.params["mask"]
        if mask is not None:  # (N | 1, H | 1, L, S) -> (N | 1, S, H | 1, L): keys along dim 1, as the scores
            mask_heads = ctx.shape(mask)[1] if len(ctx.shape(mask)) == 4 else 1
            steps, boolean = _mask_steps(ctx.shape(mask)), op.params["boolean"]
            laid = ctx.once(("attention mask", mask), lambda: build.apply(ctx.original(mask), steps))
            mask = ctx.once(("additive mask", mask), lambda: _additive(build, laid, boolean))
        if op.params["causal"]:  # sdpa's is_causal: query q attends to keys 0..q (top left), as (1, S, 1, L)
            queries, keys_ = op.inputs[0].shape[2], op.inputs[1].shape[2]
            rows = [[[0.0 if k <= q else float("-inf") for q in range(queries)]] for k in range(keys_)]
            like = ctx.original(op.inputs[0].value)
            mask = ctx.once(("causal mask", queries, keys_), lambda: build.tensor([rows], like))
            mask_heads = 1
        outputs = []
        for h in range(heads):
            g = h // (heads // kv_heads)  # grouped queries read their group's keys and values
            q_h = build.slice(q, 1, h * dim, (h + 1) * dim, 1)
            k_h = build.slice(keys, 3, g * dim, (g + 1) * dim, 1)
            w = build.binary("mul", build.einsum("bchq,bkhc->bkhq", q_h, k_h), scale)
            if mask is not None:
                w = build.binary("add", w, build.slice(mask, 2, h, h + 1, 1) if mask_heads > 1 else mask)
            w = build.along("softmax", w, 1)
            if op.params["mask"] is not None:  # a row whose keys are all masked: sdpa gives 0, softmax NaN
                w = build.where(build.unary("isnan", w), 0.0, w)
            v_h = build.slice(v, 1, g * value_dim, (g + 1) * value_dim, 1)  # a value head may be wider (TinyViT)
            outputs.append(build.einsum("bkhq,bchk->bchq", w, v_h))
        return Moved(build.cat(outputs, 1), SplitLayout(_HEADS, (heads, value_dim)))


def _additive(build, mask, boolean: bool):
    """A boolean mask (True: attend) as the additive one sdpa means by it: 0 or -inf."""
    return build.where(mask, 0.0, float("-inf")) if boolean else mask


def _mask_steps(shape) -> list:
    """A mask broadcastable to (N, H, L, S) as (N | 1, S, H | 1, L)."""
    steps = [("unsqueeze", (0,) * (4 - len(shape)))] if len(shape) < 4 else []
    return [*steps, ("permute", (0, 3, 1, 2))]
