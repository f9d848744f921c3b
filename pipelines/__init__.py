"""vcorr pipelines: data preparation and loading, training, evaluation, analysis, visualisation.

Only this package and ``vcorr.cli`` read configuration files; models receive plain arguments.
"""
from vcorr.pipelines.errors import UserError

__all__ = ["UserError"]
