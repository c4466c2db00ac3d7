"""``oscar train``: ``job.run(TrainConfig)`` trains a model through the stage plan of
``trainer.py`` (``config.py``, ``data.py``, ``losses.py``, ``decoder.py``, ``dist.py``);
``configs/`` holds the training configs of the shipped model."""
