"""vcorr: video action recognition with correspondence and correlation models.

The installed package ``vcorr`` maps the repository's folders (setup.py ``package_dir``):
``vcorr.cli`` is ``vcorr_cli/`` (the command line), ``vcorr.models`` is ``models/`` and
``vcorr.pipelines`` is ``pipelines/``. ``python -m vcorr ...`` runs the ``vcorr`` command.
"""
