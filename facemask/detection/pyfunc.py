"""The MLflow pyfunc of a registered detector, logged as models-from-code.

MLflow loads this file (it is never imported by the package), so `mlflow.pyfunc.load_model`
and MLflow's model tooling can call any registered version without pickled code.
Input: a DataFrame with an `image` column of file paths; output: one row per detection.
"""

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from facemask.core.modelref import ModelInfo, find_weights
from facemask.detection.detector import make_detector

COLUMNS = ["image", "label", "class_id", "confidence", "x1", "y1", "x2", "y2"]


class FacemaskModel(PythonModel):
    def load_context(self, context) -> None:
        weights = context.artifacts["weights"]
        if Path(weights).is_dir():  # an ensemble: its members and the file that names them
            weights = str(find_weights(Path(weights)))
        self.detector = make_detector(ModelInfo(uri=weights, weights=weights))

    def predict(self, context, model_input, params=None):
        params = params or {}
        rows = []
        conf = params.get("conf")  # none given: the model's own thresholds
        detections = self.detector.predict(list(model_input["image"]), conf=None if conf is None else float(conf))
        for index, found in enumerate(detections):
            for d in found:
                rows.append([index, d.label, d.class_id, d.confidence, *d.box])
        return pd.DataFrame(rows, columns=COLUMNS)


mlflow.models.set_model(FacemaskModel())
