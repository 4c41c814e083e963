"""The online ranking service: FastAPI on ONNX Runtime, A/B routing, hot-swapped models.

Imports only the torch-free part of `ranker`. Entry points: `serving.app.create_app(settings)` and
`serving.server.run(settings)`; see docs/serving.md.
"""
