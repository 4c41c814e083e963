"""The composition root: the `ranker` console script (one module per command group) and the demo.

The only package that imports training, serving and the simulator together.
"""
