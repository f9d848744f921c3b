"""Using a trained model on raw videos: class predictions (``vcorr predict``, and from Python
:class:`Predictor`) and features (``vcorr extract``)."""
from vcorr.pipelines.predict.api import Prediction, Predictor
from vcorr.pipelines.predict.inputs import VideoInput, collect_inputs
from vcorr.pipelines.predict.predict import PredictSettings, predict_videos

__all__ = ["PredictSettings", "Prediction", "Predictor", "VideoInput", "collect_inputs",
           "predict_videos"]
