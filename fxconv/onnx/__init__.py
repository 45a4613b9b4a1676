"""The ONNX front end: ``convert_onnx`` rewrites an ONNX file's Linears with the engine (``convert``),
reading the graph through ``read.OnnxView`` and building nodes with ``emit.OnnxBuilder``."""
