"""The ``oscar`` command (``main.py``): argparse lives here and nowhere else; each verb
builds its family's typed config and calls that family's ``run``."""
