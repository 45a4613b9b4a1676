"""The torch.fx front end: graphs from symbolic_trace (torch level) or torch.export (ATen level).

``read.FxView`` answers the engine's questions about a GraphModule (shapes from shape propagation,
never from parsing arguments; Linear spellings as data), ``emit.FxBuilder`` makes its nodes, and
``dense`` is dense mode, which works on the engine's result.
"""
