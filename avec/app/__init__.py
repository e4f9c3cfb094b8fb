"""The presentation layer: the ``avec`` command line (``avec.app.cli``), the tour and its HTML report
(``avec.app.tour``, ``avec.app.report``) and the local web app (``avec.app.server``).

It sits above every technique and depends on them; no technique imports it (tests/test_layers.py).
"""
