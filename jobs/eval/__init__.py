"""``oscar eval``: ``job.run(EvalConfig)`` compares OSCAR with classic codecs at matched bpp
(``compare.py``, ``codecs.py``, ``metrics.py``, ``summary.py``, ``plots.py``);
``autoencoder.py`` is ``oscar eval-autoencoder``, the latent autoencoder's own round trip."""
