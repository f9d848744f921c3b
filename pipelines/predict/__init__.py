"""Using a trained model on raw videos: class predictions (``vcorr predict``) and features
(``vcorr extract``)."""
from vcorr.pipelines.predict.inputs import VideoInput, collect_inputs
from vcorr.pipelines.predict.predict import PredictSettings, predict_videos

__all__ = ["PredictSettings", "VideoInput", "collect_inputs", "predict_videos"]
