"""The app layer: the ``nasty`` command line (:mod:`nasty.app.cli`), the demo (:mod:`nasty.app.demo`)
and how the command line says what went wrong (:mod:`nasty.app.cli_errors`).

Three layers, each built on the ones below and never on those above (``tests/test_layers.py``):

1. the library, ``nasty`` outside ``nasty.app``: data, models, trainers, checkpoints, defences;
2. ``attacks``: the thieves, the audit and its reports, built on the library;
3. the app (this package): the only code that imports both the library and ``attacks``.
"""
