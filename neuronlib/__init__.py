"""neuronlib: trace neuron circuits in language models (Arora et al., "Language Model Circuits Are Sparse in the
Neuron Basis"), on top of nnsight.

Public verbs: :func:`load_model`, :func:`attribute`; nodes are :class:`Node` (site, layer, position, unit).
"""
from .attribution import Attribution, attribute
from .models import DEFAULT_MODEL, Model, known_models, load_model
from .sites import SITES, Node
from .tracing import RelPRules

__version__ = "0.1.0"

__all__ = ["Attribution", "DEFAULT_MODEL", "Model", "Node", "RelPRules", "SITES", "attribute", "known_models", "load_model"]
