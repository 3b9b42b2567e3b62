"""Learning commands of the ``medforensics`` command line, registered on the top-level app when
imported: ``train`` (:mod:`._cli_train`) and ``evaluate`` (:mod:`._cli_evaluate`)."""
from . import _cli_train, _cli_evaluate  # noqa: F401
