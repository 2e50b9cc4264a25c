"""neuronlib: trace neuron circuits in language models (Arora et al., "Language Model Circuits Are Sparse in the
Neuron Basis"), on top of nnsight.

Public verbs: :func:`load_model`, :func:`attribute`, :func:`ablate`, :func:`patch`, :func:`steer`,
:func:`evaluate_circuit`; nodes are :class:`Node` (site, layer, position, unit).
"""
import importlib

# The public names and the module each lives in. They load on first use (PEP 562), so that `python -m neuronlib
# reproduce`, which only drives papermill, does not hold torch in memory next to the notebook kernels.
_PUBLIC = {
    "Attribution": "attribution", "attribute": "attribution",
    "CircuitGraph": "graph", "attribute_edges": "edges", "evaluate_edge_pruning": "pruning",
    "evaluate_circuit": "evaluation",
    "Intervened": "interventions", "ablate": "interventions", "patch": "interventions", "steer": "interventions",
    "DEFAULT_MODEL": "registry", "known_models": "registry", "Model": "models", "load_model": "models",
    "Neuron": "neurons", "SITES": "sites", "Node": "sites", "RelPRules": "tracing",
}


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    try:  # a submodule, as `neuronlib.tracing` worked when this file imported everything
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__():
    return sorted({*globals(), *_PUBLIC})


__version__ = "0.1.0"

__all__ = [
    "Attribution", "CircuitGraph", "DEFAULT_MODEL", "Intervened", "Model", "Neuron", "Node", "RelPRules", "SITES",
    "ablate", "attribute", "attribute_edges",
    "evaluate_circuit", "evaluate_edge_pruning", "known_models", "load_model", "patch", "steer",
]
