"""Hugging Face ``transformers`` image classifiers, built from their default configs (random weights, no
download). None of them can be captured by symbolic_trace (control flow on shapes and config flags), so
each goes through torch.export: outputs equal at two batch sizes, the head converted, the ONNX file checked.
"""

from __future__ import annotations

import pytest
import torch

import fxconv

transformers = pytest.importorskip("transformers")

# (config, model class, input size, Linears left alone): the CNNs have none; ConvNext and Swin keep
# the per-position Linears of their blocks (not-2d), which scope="heads" does not convert.
MODELS = {
    "resnet": ("ResNetConfig", "ResNetForImageClassification", 64),
    "convnext": ("ConvNextConfig", "ConvNextForImageClassification", 64),
    "mobilenet_v1": ("MobileNetV1Config", "MobileNetV1ForImageClassification", 64),
    "mobilenet_v2": ("MobileNetV2Config", "MobileNetV2ForImageClassification", 64),
    "regnet": ("RegNetConfig", "RegNetForImageClassification", 64),
    "swin": ("SwinConfig", "SwinForImageClassification", 224),
}
# torch.onnx.export (torch 2.14) fails on the graph of ExportedProgram.module() for Swin even unconverted
# (an aten.view of a transposed tensor under a symbolic batch): its ONNX step is a torch limitation.
NO_ONNX = {"swin"}


def logits(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_a_transformers_classifier_converts_through_torch_export(name, tmp_path):
    config, cls, size = MODELS[name]
    torch.manual_seed(0)
    model = getattr(transformers, cls)(getattr(transformers, config)()).eval()
    x = torch.randn(2, 3, size, size)
    method = "kernel" if len(name) % 2 else "1x1"
    module, report = fxconv.convert(model, x, method)
    assert report.capture == "torch.export"
    assert "symbolic_trace failed in" in report.capture_note  # names the module and line
    assert [c.name.split(".")[0] for c in report.converted] == ["classifier"]  # HF ResNet: classifier.1
    assert {s.code for s in report.skipped} <= {"not-2d"}, str(report)
    with torch.no_grad():
        for batch in (x, x[:1]):
            torch.testing.assert_close(logits(module(batch)), logits(model(batch)))
    if name in NO_ONNX:
        return
    check = fxconv.check_onnx(fxconv.export_onnx(module, x, tmp_path / f"{name}.onnx"), model, x)
    assert check.passed, check
    assert "Gemm" not in check.ops


# Small configs of the transformer families (and a text model: BERT's attention and MLP are Linears on
# (N, L, C) tokens too): scope="all" converts every Linear, through torch.export.
SMALL = {
    "vit": ("ViTConfig", "ViTForImageClassification", dict(image_size=32, patch_size=8, hidden_size=32,
            num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)),
    "swin": ("SwinConfig", "SwinForImageClassification", dict(image_size=32, patch_size=4, embed_dim=16,
             depths=[1, 1], num_heads=[1, 2], window_size=4)),
    "convnext": ("ConvNextConfig", "ConvNextForImageClassification", dict(num_stages=2, hidden_sizes=[16, 32],
                 depths=[1, 1])),
    "bert": ("BertConfig", "BertForSequenceClassification", dict(vocab_size=100, hidden_size=32,
             num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)),
}  # fmt: skip


@pytest.mark.parametrize("name", SMALL)
def test_scope_all_converts_every_linear_of_a_transformers_model(name):
    config, cls, options = SMALL[name]
    torch.manual_seed(0)
    model = getattr(transformers, cls)(getattr(transformers, config)(**options)).eval()
    x = torch.randint(0, 100, (2, 7)) if name == "bert" else torch.randn(2, 3, 32, 32)
    module, report = fxconv.convert(model, x, scope="all", strict=True)
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert len(report.converted) == linears, str(report)
    with torch.no_grad():
        torch.testing.assert_close(logits(module(x)), logits(model(x)))


def test_a_model_given_a_tokenizers_keyword_inputs_converts_and_exports(tmp_path):
    """``model(**tokens)``: input ids, attention mask and token types passed by keyword, as a tokenizer's
    output is; the ONNX file takes the three, the check feeds them by keyword to the model."""
    config, cls, options = SMALL["bert"]
    torch.manual_seed(0)
    model = getattr(transformers, cls)(getattr(transformers, config)(**options)).eval()
    tokens = {"input_ids": torch.randint(0, 100, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long),
              "token_type_ids": torch.zeros(2, 7, dtype=torch.long)}  # fmt: skip
    tokens["attention_mask"][1, 5:] = 0  # the second sentence is padded
    module, report = fxconv.convert(model, tokens, scope="all", strict=True)
    assert report.capture == "torch.export" and report.fixed_batch is None
    with torch.no_grad():
        torch.testing.assert_close(logits(module(**tokens)), logits(model(**tokens)))
    path = fxconv.export_onnx(module, tokens, tmp_path / "bert.onnx")
    assert len(fxconv.load_onnx(path).graph.input) == 3
    check = fxconv.check_onnx(path, model, tokens)
    assert check.passed and "Gemm" not in check.ops, check


class Logits(torch.nn.Module):
    """A causal LM's logits for token ids."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, ids):
        return self.lm(input_ids=ids).logits


def decoder(name: str) -> Logits:
    """A 2-layer causal LM of Hugging Face's family ``name`` (4 heads, 2 key/value heads), random weights."""
    config = getattr(transformers, f"{name}Config")(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, use_cache=False,
    )  # fmt: skip
    torch.manual_seed(0)
    return Logits(getattr(transformers, f"{name}ForCausalLM")(config).eval()).eval()


@pytest.mark.parametrize("name", ["Llama", "Qwen2"])
def test_a_decoder_runs_its_norms_and_mlps_in_the_token_layout(name, tmp_path):
    """Every Linear of a 2-layer Llama / Qwen2 (GQA, rotary, RMSNorm, SwiGLU) converts. With RMSNorm (written
    by hand in transformers: pow, mean over the channels, rsqrt, scale) carried, the residual stream stays
    in (N, C, 1, L): the graph leaves it for q, k and v and comes back for o_proj, 4 layout changes a
    layer, plus the way in and out (it was 22 for these 15 Linears before RMSNorm and slices were carried)."""
    from test_scope import layout_changes

    model = decoder(name)
    ids = torch.randint(0, 64, (2, 7))
    module, report = fxconv.convert(model, ids, scope="all", strict=True)
    assert len(report.converted) == 15
    original = torch.export.export(model, (ids,)).module()
    assert layout_changes(module) - layout_changes(original) == 2 + 4 * 2
    with torch.no_grad():
        for batch in (ids, ids[:1], torch.randint(0, 64, (3, 7))):
            torch.testing.assert_close(module(batch), model(batch))
    path = fxconv.export_onnx(module, ids, tmp_path / "decoder.onnx")
    check = fxconv.check_onnx(path, model, ids)
    assert check.passed, str(check)
    assert check.ops["Conv"] == 15 and "Gemm" not in check.ops


def test_levit_s_pooled_batchnorm_head_converts_under_torch_export():
    """LeViT's head (tokens pooled, BatchNorm1d, Linear) is converted by torch.export as by symbolic_trace."""
    config = transformers.LevitConfig(
        image_size=64, hidden_sizes=[32, 48, 64], num_attention_heads=[1, 2, 2], depths=[1, 1, 1],
        key_dim=[8, 8, 8], mlp_ratio=[2, 2, 2], attention_ratio=[2, 2, 2], num_labels=10,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LevitForImageClassification(config).eval()
    x = torch.randn(2, 3, 64, 64)
    module, report = fxconv.convert(model, x, capture="export")
    assert [c.name for c in report.converted] == ["classifier.linear"] and report.converted[0].method == "kernel"
    with torch.no_grad():
        for batch in (x, x[:1], torch.cat([x, x[:1]])):
            torch.testing.assert_close(logits(module(batch)), logits(model(batch)))


def test_a_model_returning_its_cache_is_refused_in_one_line_that_names_use_cache():
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    model, ids = transformers.GPT2Model(config).eval(), torch.randint(0, 50, (1, 8))
    with pytest.raises(fxconv.TraceError, match=r"returns a DynamicCache .*use_cache=False") as refused:
        fxconv.convert(model, ids, scope="all")
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 250
    model.config.use_cache = False  # as the message says
    module, report = fxconv.convert(model, ids, scope="all")
    assert not report.skipped and len(report.converted) == 4  # GPT-2's Conv1D: c_attn, c_proj, c_fc, c_proj
    with torch.no_grad():
        for batch in (ids, ids.repeat(2, 1)):
            torch.testing.assert_close(module(batch)[0], model(batch)[0])


def test_a_forward_whose_signature_symbolic_trace_cannot_rebuild_is_named():
    """transformers' decorated forwards (``can_return_tuple``) stop symbolic_trace before any model code:
    the note names the forward and its line, not only "co_varnames is too small"."""
    config = transformers.T5Config(num_layers=1, d_model=32, d_ff=64, num_heads=2, d_kv=16, vocab_size=100)
    model = transformers.T5Model(config).eval()  # seq2seq: without decoder inputs torch.export fails too
    with pytest.raises(fxconv.TraceError) as refused:
        fxconv.convert(model, torch.randint(0, 100, (1, 8)))
    assert "symbolic_trace failed on the signature of T5Model.forward (modeling_t5.py:" in str(refused.value)
    assert "You must specify exactly one of input_ids or inputs_embeds" in str(refused.value)


@pytest.mark.parametrize("name", ["Llama", "Qwen2", "StableLm"])  # StableLM: a quarter of each head rotated
def test_the_core_ml_target_carries_a_decoders_attention_split_per_head(name):
    """Hugging Face's attention with rotary embeddings (whole or partial), GQA's repeat_kv and its causal mask
    runs on the heads' channels in (N, C, 1, L): every sdpa becomes Apple's two einsums per head, no sdpa is
    left, and the outputs are the model's at every batch. (coremltools 9 takes neither the original nor the
    result: the mask code's aten.diff; tests/test_targets.py proves the same layer, written out, on it.)"""
    model = decoder(name)
    ids = torch.randint(0, 64, (1, 7))
    module, report = fxconv.convert(model, ids, target="coreml", strict=True)
    assert len(report.converted) == 15
    calls = [str(n.target) for n in module.graph.nodes if n.op == "call_function"]
    assert sum("einsum" in c for c in calls) == 2 * 4 * 2 and not any("scaled_dot_product" in c for c in calls)
    with torch.no_grad():
        for batch in (ids, torch.randint(0, 64, (3, 7))):
            torch.testing.assert_close(module(batch), model(batch))


def _static_cache_llama():
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100, use_cache=True)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(use_cache=True, cache_implementation="static", max_length=16,
                                               cache_config={"batch_size": 1, "max_cache_len": 16, "device": "cpu"})
    return model


@pytest.mark.slow
def test_a_static_cache_decode_step_converts_and_keeps_decoding():
    """Hugging Face's StaticCache decode step writes its caches with index_copy_: 15 Linears convert, and four
    decode steps of the result equal the model's, caches and all."""
    from transformers.integrations.executorch import TorchExportableModuleWithStaticCache

    step = TorchExportableModuleWithStaticCache(_static_cache_llama(), batch_size=1, max_cache_len=16)
    module, report = fxconv.convert(step, (torch.tensor([[3]]), None, torch.tensor([0])), scope="all")
    assert len(report.converted) == 15 and report.verified.calls == 3
    assert {"key_cache_0", "value_cache_1"} <= set(report.state)
    for position, token in enumerate([3, 14, 15, 92]):
        ids, at = torch.tensor([[token]]), torch.tensor([position])
        torch.testing.assert_close(module(ids, None, at), step(ids, None, at))


@pytest.mark.slow
def test_the_program_of_convert_and_export_with_cache_takes_a_positional_example():
    from transformers.integrations.executorch import convert_and_export_with_cache

    ids, at = torch.tensor([[3]]), torch.tensor([0])
    program = convert_and_export_with_cache(_static_cache_llama(), ids, at)
    converted, report = fxconv.convert(program, (ids, at), scope="all")  # input_ids, cache_position by position
    assert len(report.converted) == 15 and report.verified.calls == 3
    torch.testing.assert_close(converted.module()(input_ids=ids, cache_position=at),
                               program.module()(input_ids=ids, cache_position=at))
