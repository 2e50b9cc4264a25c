"""neuronlib: trace neuron circuits in language models (Arora et al., "Language Model Circuits Are Sparse in the
Neuron Basis"), on top of nnsight.

Public verbs: :func:`load_model`, :func:`attribute`, :func:`ablate`, :func:`patch`, :func:`steer`,
:func:`evaluate_circuit`; nodes are :class:`Node` (site, layer, position, unit).
"""
from .attribution import Attribution, attribute
from .edges import CircuitGraph, attribute_edges, evaluate_edge_pruning
from .evaluation import evaluate_circuit
from .interventions import Intervened, ablate, patch, steer
from .models import DEFAULT_MODEL, Model, known_models, load_model
from .neurons import Neuron
from .sites import SITES, Node
from .tracing import RelPRules

__version__ = "0.1.0"

__all__ = [
    "Attribution", "CircuitGraph", "DEFAULT_MODEL", "Intervened", "Model", "Neuron", "Node", "RelPRules", "SITES",
    "ablate", "attribute", "attribute_edges",
    "evaluate_circuit", "evaluate_edge_pruning", "known_models", "load_model", "patch", "steer",
]
