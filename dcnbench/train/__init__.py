"""`dcnbench train`: a small deformable network trained through each backend against float64
(parity.py), and the scaled-digits experiment of the seeds' table (experiment.py).

data.py holds the digits, model.py the network, trainer.py one SGD run, render.py the tables.
"""
