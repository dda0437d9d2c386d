"""The MLflow pyfunc of a registered detector, logged as models-from-code.

MLflow loads this file (it is never imported by the package), so `mlflow.pyfunc.load_model`
and MLflow's model tooling can call any registered version without pickled code.
Input: a DataFrame with an `image` column of file paths; output: one row per detection.
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from facemask.detector import Detector
from facemask.modelref import ModelInfo
from facemask.settings import INFERENCE

COLUMNS = ["image", "label", "class_id", "confidence", "x1", "y1", "x2", "y2"]


class FacemaskModel(PythonModel):
    def load_context(self, context) -> None:
        weights = context.artifacts["weights"]
        self.detector = Detector(ModelInfo(uri=weights, weights=weights))

    def predict(self, context, model_input, params=None):
        params = params or {}
        rows = []
        detections = self.detector.predict(list(model_input["image"]), conf=float(params.get("conf", INFERENCE.conf)))
        for index, found in enumerate(detections):
            for d in found:
                rows.append([index, d.label, d.class_id, d.confidence, *d.box])
        return pd.DataFrame(rows, columns=COLUMNS)


mlflow.models.set_model(FacemaskModel())
