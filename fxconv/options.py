"""The choices fxconv's functions and command line offer, importable without torch (``fxconv --help``)."""

CONV_METHODS = ("kernel", "1x1")  # a head as convolutions: a kernel covering the map, or 1x1 on its flattening
METHODS = (*CONV_METHODS, "channels-last")  # and a Linear on the map's channels-last flattening (NHWC compilers)
LAYOUTS = ("folded", "batched")  # where the batch goes in a converted head
CAPTURES = ("auto", "fx", "export", "static")  # symbolic_trace, torch.export (dynamic batch, or static at the
# example's batch), or the first that is faithful
RUNTIMES = ("onnxruntime", "openvino")  # what check_onnx runs a file in
SCOPES = ("heads", "all")  # which Linears convert: those fed by a flattened map, or every one
TARGETS = ("onnxruntime", "ethos-u", "coreml")  # the compiler the choices are made for (fxconv.targets)
OLDEST_OPSET = 13  # the oldest ONNX opset fxconv writes (fxconv.export.OPSETS: to the installed onnx's newest)
# The artifacts' own choices (fxconv.artifacts): an Ethos-U configuration Vela knows
# (ethosu.vela.architecture_features.Accelerator), a Core ML minimum deployment target (ML programs run from
# iOS 15) and compute precision.
DEVICES = (
    "ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u65-512",
    "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024", "ethos-u85-2048",
)  # fmt: skip
DEPLOYMENTS = ("iOS15", "iOS16", "iOS17", "iOS18", "iOS26")
PRECISIONS = ("float16", "float32")
