"""Helpers that several command families share (``train`` and ``eval`` both use them).

Each family imports from here, never from another family: training and evaluation do not
import each other, and nothing here imports a family.
"""
