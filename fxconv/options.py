"""The choices fxconv's functions and command line offer, importable without torch (``fxconv --help``)."""

METHODS = ("kernel", "1x1")  # a kernel covering the map, or a 1x1 conv on the flattened features
LAYOUTS = ("folded", "batched")  # where the batch goes in a converted head
CAPTURES = ("auto", "fx", "export")  # symbolic_trace, torch.export, or the first that is faithful
RUNTIMES = ("onnxruntime", "openvino")  # what check_onnx runs a file in
SCOPES = ("heads", "all")  # which Linears convert: those fed by a flattened map, or every one
