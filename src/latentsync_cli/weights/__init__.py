"""The model weights: where their files are (files.py), how a checkpoint is loaded strictly
(checkpoint.py), how a folder is checked without loading it (verify.py), and the models a run
uses (load.py: real, random or random-tiny)."""
