"""A model as a detector, wherever it runs:

detector   load_detector(uri): typed detections from a registered version, a run or a file; ensembles
fusion     weighted-box fusion of several models' boxes of one image
export     ONNX export, logged beside the weights
pyfunc     the registered model's MLflow pyfunc (models-from-code)
"""

from facemask import public_parts

__getattr__, __all__ = public_parts(
    __name__,
    {
        "load_detector": "detector",
        "resolve_model": "detector",
        "Detection": "detector",
        "Detector": "detector",
        "EnsembleDetector": "detector",
        "export_onnx": "export",
    },
)
