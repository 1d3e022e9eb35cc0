"""The ranking service: `create_app(model_uri, features_dir, products)` (FastAPI) and `serve(...)` (uvicorn).

Shared with `ltr.evaluate`: `load_ranker` (registry alias -> ranker, version, cross-encoder) and
`FeatureAssembler` (online store + request-time features -> the model's feature frame).
"""
from .assemble import FeatureAssembler
from .model import LoadedModel, ServingError, load_ranker

__all__ = ["FeatureAssembler", "LoadedModel", "ServingError", "create_app", "load_ranker", "serve"]


def __getattr__(name: str):  # FastAPI/uvicorn only imported when the service is used
    if name == "create_app":
        from .app import create_app
        return create_app
    if name == "serve":
        from .server import serve
        return serve
    raise AttributeError(name)
