"""Low-level operators shared by the models: the correlation operator of CorrNet and DCF."""
from vcorr.models.ops.correlation import *  # noqa: F401,F403  (its __all__ is the public API)
from vcorr.models.ops.correlation import __all__  # noqa: F401
