"""Other inputs than ``nn.Module``: ONNX files (:mod:`prunec.frontends.onnx`)."""
