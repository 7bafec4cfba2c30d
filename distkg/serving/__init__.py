"""Putting a trained run to work: answer named queries (predict), ship it (export, ONNX), serve it (Ray Serve)."""
