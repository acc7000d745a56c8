"""The ``corral`` command line: a thin shell over the SDK (see :mod:`corral.cli.main`)."""
