"""Export a detector to ONNX, and run the exported file with onnxruntime (``pip install fpn[onnx]``).

:func:`~fpn.export.onnx_export.export_onnx` writes the whole detector (pre-processing, networks, box decoding,
per-level top-k, NMS) as one ONNX graph and checks it against PyTorch before it reports success;
:class:`~fpn.export.runtime.OnnxDetector` runs such a file with the calling convention of
:class:`~fpn.detection.FasterRCNN`, so ``fpn detect``, ``fpn eval`` and ``fpn bench`` take it as a model.
onnx and onnxruntime are imported only when a file is written or run (docs/export.md).
"""
