"""The only module that talks to nnsight.

One function, :func:`run`, walks a model's modules in forward order inside an nnsight trace and, at each site, hands
the site's value to a caller-supplied ``edit`` (read it, add a gradient tap, replace it). The same walk applies the
RelP replacement-model rules when asked. Everything is undone when the trace ends: nothing is registered on the model.

The same trace can run on a remote worker through nnsight's remote (NDIF) backend (:func:`on_remote`, docs/scale.md):
its body, :func:`_walk`, reads only its arguments, and what a caller needs back (values, gradients) is returned from
the trace by ``then``. :class:`Loopback` plays the worker in a separate local process.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Protocol

import nnsight
import torch
from nnsight.intervention.backends.remote import RemoteBackend, RemoteError
from nnsight.schema.request import RequestModel

from .architectures import get_path
from .sites import ERROR


def wrap(hf_model):
    """nnsight's wrapper over an already-loaded HF model; users can run their own traces on it (``model.nn``)."""
    return nnsight.NNsight(hf_model)


@dataclass(frozen=True)
class RelPRules:
    """The replacement model's backward rules (docs/method.md §2). Forward values never change.

    gate: "identity" (act(z) -> z * stopgrad(act(z)/z)), "stopgrad" (the paper's "no gate rule": no gradient through
    the gate, factor 1 on up) or "none" (the true gradient of the nonlinearity).
    half: split the gradient of gate*up in half (False = "no half rule": the product rule).
    """

    norm: bool = True
    attention: bool = True
    gate: str = "identity"
    half: bool = True

    def __post_init__(self):
        if self.gate not in ("identity", "stopgrad", "none"):
            raise ValueError(f"RelPRules.gate must be 'identity', 'stopgrad' or 'none', got {self.gate!r}")


class Edit(Protocol):
    def __call__(self, site: str, layer: int, value: torch.Tensor) -> torch.Tensor | None: ...


def _straight_through(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass (bit-identical: s - s is exactly 0), the gradient of ``surrogate`` backward."""
    surrogate = surrogate.to(value.dtype)
    return value.detach() + (surrogate - surrogate.detach())


def _frozen_norm(envoy, arch) -> None:
    """RMSNorm with its normalisation scale held constant: y = x * stopgrad(rsqrt(mean x^2 + eps)) * w."""
    x = envoy.input
    y = envoy.output
    module = envoy._module
    eps = getattr(module, arch.norm_eps_attr)
    xf = x.float()
    scale = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps).detach()
    weight = module.weight.float() + arch.norm_weight_offset
    envoy.output = _straight_through(y, xf * scale * weight)


def _apply(edit, site, layer, value):
    if edit is None:
        return value
    new = edit(site, layer, value)
    return value if new is None else new


def _visit(plan, edit, base: str, layer: int, value):
    """The edit of a base site, then of its SAE site (latents and error node), if requested."""
    if base in plan.sites:
        value = _apply(edit, base, layer, value)
    sae_site = "sae_" + base
    if sae_site in plan.sites:
        from .saes import sae_site_reconstruct, sae_site_values

        sae = plan.saes[sae_site][layer]
        latents, error = sae_site_values(sae, value)
        latents = _apply(edit, sae_site, layer, latents)
        error = _apply(edit, sae_site + ERROR, layer, error)
        value = sae_site_reconstruct(sae, latents, error)  # bit-identical to ``value`` when nothing was edited
    return value


def _wants(sites, base):
    return base in sites or "sae_" + base in sites


@dataclass(frozen=True)
class _Plan:
    """What one walk needs besides the model's modules: plain data, so a remote request carries it, not the model."""

    arch: object
    sites: frozenset
    relp: RelPRules | None
    gate_ratio: Callable | None
    need_layers: bool
    saes: dict | None  # the SAEs of the requested SAE sites (local runs only)
    all_positions: bool = False  # the metric sees every position's logits [B, T, V], not the last one's [B, V]


def _walk(lm, plan: _Plan, edit, metric, then):
    """The body of every trace: the modules in forward order, each site handed to ``edit``, then ``metric`` on the
    last position's logits (every position's with ``plan.all_positions``) and ``then`` on its value. Runs where the
    model is (here, or on a remote worker), so it reads nothing but its arguments."""
    arch, sites, relp, gate_ratio = plan.arch, plan.sites, plan.relp, plan.gate_ratio
    if "embed" in sites:
        embed = get_path(lm, arch.embed)
        embed.output = _apply(edit, "embed", -1, embed.output)
    layers = get_path(lm, arch.layers) if plan.need_layers else []
    for i, layer in enumerate(layers):
        if relp is not None and relp.norm:
            for name in arch.norms_before_attn:
                _frozen_norm(getattr(layer, name), arch)
        attn = getattr(layer, arch.attn)
        if relp is not None and relp.attention:
            # A constant attention pattern: q and k carry no gradient; masks and values are untouched.
            q_proj = getattr(attn, arch.q_proj)
            q_proj.output = q_proj.output.detach()
            k_proj = getattr(attn, arch.k_proj)
            k_proj.output = k_proj.output.detach()
        if _wants(sites, "attn_out"):
            o_proj = getattr(attn, arch.o_proj)
            o_proj.input = _visit(plan, edit, "attn_out", i, o_proj.input)
        if relp is not None and relp.norm:
            for name in arch.norms_after_attn:
                _frozen_norm(getattr(layer, name), arch)
        mlp = getattr(layer, arch.mlp)
        if relp is not None or "mlp_acts" in sites:
            down = getattr(mlp, arch.down_proj)
            if relp is not None and (relp.gate != "none" or relp.half):
                act = getattr(mlp, arch.gate_act)
                z = act.input if gate_ratio is not None else None
                a = act.output
                if gate_ratio is not None:
                    a = _straight_through(a, z * gate_ratio(z).detach())
                    act.output = a
                u = getattr(mlp, arch.up_proj).output
                h = down.input
                if relp.gate == "stopgrad":
                    surrogate = a.detach() * u
                elif relp.half:
                    surrogate = 0.5 * (a * u.detach()) + 0.5 * (a.detach() * u)
                else:
                    surrogate = a * u
                h = _straight_through(h, surrogate)
            else:
                h = down.input
            down.input = _apply(edit, "mlp_acts", i, h) if "mlp_acts" in sites else h
        if _wants(sites, "mlp_out"):
            mlp.output = _visit(plan, edit, "mlp_out", i, mlp.output)
        if relp is not None and relp.norm:
            for name in arch.norms_after_mlp:
                _frozen_norm(getattr(layer, name), arch)
        if _wants(sites, "resid"):
            out = layer.output
            if isinstance(out, tuple):
                layer.output = (_visit(plan, edit, "resid", i, out[0]), *out[1:])
            else:
                layer.output = _visit(plan, edit, "resid", i, out)
    if relp is not None and relp.norm:
        _frozen_norm(get_path(lm, arch.final_norm), arch)
    value = None
    if metric is not None:
        out = get_path(lm, arch.unembed).output
        value = metric(out if plan.all_positions else out[:, -1, :])
    return value if then is None else then(value)


def _detached(value):
    """What a remote run sends back: tensors without their autograd graph (it stays on the worker)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def run(
    model,
    inputs: dict[str, torch.Tensor],
    *,
    metric: Callable[[torch.Tensor], torch.Tensor] | None = None,
    edit: Edit | None = None,
    sites: tuple[str, ...] = (),
    relp: RelPRules | None = None,
    inputs_embeds: torch.Tensor | None = None,
    then: Callable | None = None,
    all_positions: bool = False,
):
    """One forward pass. Returns ``metric(last_logits_BV)`` (a [B] tensor that keeps its autograd graph), or None;
    with ``then``, what ``then(metric value)`` returns. ``all_positions=True``: the metric gets every position's
    logits ``[B, T, V]`` (next-token losses over a whole text) instead of the last position's.

    ``edit(site, layer, value)`` is called for every site in ``sites`` in forward order; what it returns (if not
    None) replaces the value for the rest of the forward pass. An SAE site calls it twice: with its latents under
    the site's name and with its error vectors under ``site + "/error"``. Gradients flow only where the caller made a leaf that
    requires grad (parameters are frozen), so a caller taps a site by returning ``value + delta``.

    ``then`` runs inside the trace, where the forward's graph is: a caller that needs gradients or values its
    ``edit`` collected returns them from ``then``. That is what makes a call remote-ready: on a model bound with
    :func:`on_remote`, the edit, the metric and ``then`` run on the worker, and only ``then``'s (detached) result
    comes back, never state the closures changed.
    """
    sites = frozenset(sites)
    remote = getattr(model, "remote", None)
    sae_sites = sorted(s for s in sites if s.startswith("sae_"))
    if remote is not None and sae_sites:
        raise ValueError(f"SAE sites {sae_sites} cannot run remotely: the worker has the model but not your SAEs, "
                         "and their weights would travel in every request; run them locally")
    gate_ratio = model.arch.gate_ratio(model.config) if relp is not None and relp.gate == "identity" else None
    plan = _Plan(arch=model.arch, sites=sites, relp=relp, gate_ratio=gate_ratio,
                 need_layers=bool(sites - {"embed"}) or relp is not None,
                 saes={s: model.saes[s] for s in sae_sites} or None, all_positions=bool(all_positions))
    kwargs = dict(attention_mask=inputs["attention_mask"], logits_to_keep=0 if all_positions else 1, use_cache=False)
    if inputs_embeds is not None:
        kwargs["inputs_embeds"] = inputs_embeds
    else:
        kwargs["input_ids"] = inputs["input_ids"]
    if remote is not None:
        then = _detached if then is None else _compose(then)
        kwargs["backend"] = _RemoteBackend(remote)
    lm = model.nn
    with lm.trace(**kwargs):
        result = _walk(lm, plan, edit, metric, then)
        nnsight.save(result)
    return result


def _compose(then):
    return lambda value: _detached(then(value))


def logits(model, inputs: dict[str, torch.Tensor], *, relp: RelPRules | None = None) -> torch.Tensor:
    """Last-position logits [B, V] (through the same walk, so RelP's forward can be compared bit for bit)."""
    with torch.no_grad() if relp is None else torch.enable_grad():
        out = run(model, inputs, metric=lambda x: x, relp=relp)
    return out.detach()


# --- Remote execution: nnsight's remote (NDIF) backend ---------------------------------------------------------------

NDIF_MODEL_CLASS = "nnsight.modeling.transformers.TransformersModel"  # the wrapper NDIF serves hub models as


@dataclass(frozen=True)
class Remote:
    """Where a verb's traces run instead of here: nnsight's remote backend, the model named by ``model_key``.

    ``model_key``: NDIF's key (``"nnsight.modeling.transformers.TransformersModel:{...}"``); ``host``/``api_key``
    default to nnsight's config. ``transport``, if given, replaces the network: ``transport(payload, compressed)``
    takes the request payload nnsight built and returns the result blob an NDIF worker would (see :class:`Loopback`).
    """

    model_key: str
    host: str | None = None
    api_key: str | None = None
    transport: Callable[[bytes, bool], bytes] | None = None


def ndif_model_key(repo_id: str, *, revision: str = "main", task: str = "text-generation") -> str:
    """NDIF's key for a Hugging Face hub model, as nnsight's ``TransformersModel.to_model_key`` writes it."""
    return f"{NDIF_MODEL_CLASS}:" + json.dumps({"repo_id": repo_id, "revision": revision, "task": task})


def on_remote(model, remote):
    """``model`` with its traces sent through nnsight's remote backend, or ``model`` itself when ``remote`` is None.

    ``remote``: a :class:`Remote`, an NDIF model key (``"module.Class:{json}"``) or a hub id (``"meta-llama/..."``).
    A copy of ``model`` carries the choice, so nothing shared changes; the verbs call this with their ``remote=``."""
    if remote is None:
        return model
    if isinstance(remote, str):
        if not remote:
            raise ValueError("remote= must name a model: an NDIF model key or a Hugging Face hub id, got ''")
        remote = Remote(remote if ":" in remote else ndif_model_key(remote))
    if not isinstance(remote, Remote):
        raise ValueError(f"remote= must be None, an NDIF model key, a hub id or neuronlib.tracing.Remote, got "
                         f"{type(remote).__name__}")
    return replace(model, remote=remote)


@contextmanager
def _shipped_by_value(module):
    """``module``'s functions and classes travel as source in a request (an NDIF worker has no neuronlib), for the
    duration of one serialization only."""
    import cloudpickle  # nnsight's serializer; nnsight requires it (not pinned here on its own)

    registered = module.__name__ in cloudpickle.list_registry_pickle_by_value()
    if not registered:
        cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        if not registered:
            cloudpickle.unregister_pickle_by_value(module)


class _RemoteBackend(RemoteBackend):
    """nnsight's remote backend with neuronlib's code shipped by value; ``Remote.transport`` replaces the network."""

    def __init__(self, remote: Remote):
        super().__init__(remote.model_key, host=remote.host, api_key=remote.api_key)
        self.transport = remote.transport

    def _serialize(self, tracer) -> bytes:
        import neuronlib

        with _shipped_by_value(neuronlib):
            blob = RequestModel.serialize(tracer, self.compress)
        self._log(f"payload: {len(blob):,} bytes")
        return blob

    def request(self, request: RequestModel, tracer):
        if self.transport is None:
            return super().request(request, tracer)
        return self.finalize(self.transport(self._serialize(tracer), self.compress))


# --- Loopback: a worker process standing in for an NDIF worker ---------------------------------------------------------

class Loopback:
    """A separate Python process that plays an NDIF worker for ``Remote(transport=...)``.

    It loads the model itself (``neuronlib.load_model(name, seed=seed)``: tiny models are rebuilt from their seed),
    then forgets neuronlib (its modules dropped, its import blocked) as a worker that has only torch, transformers and
    nnsight would. Per request it does what the worker does: ``RequestModel.deserialize(payload, persistent_objects)``
    against its own modules, ``tracer.execute(tracer.info.code)``, and ``torch.save`` of the values the block saved.
    ``sizes`` records (payload bytes, result bytes) per request. Use as a context manager, or ``close()``.
    """

    def __init__(self, name: str, *, seed: int = 0):
        import subprocess
        import sys

        # the caller's thread count: float sums split over other threads differ in the last bits
        code = f"from neuronlib.tracing import _serve; _serve({name!r}, {int(seed)}, {torch.get_num_threads()})"
        self.process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.sizes: list[tuple[int, int]] = []
        ready = _read_frame(self.process.stdout)
        if ready != b"ready":
            self.close()
            raise RuntimeError(f"loopback worker for {name!r} did not start (exit {self.process.returncode})")

    def __call__(self, payload: bytes, compress: bool) -> bytes:
        _write_frame(self.process.stdin, bytes([compress]) + payload)
        status, result = _read_frame(self.process.stdout), _read_frame(self.process.stdout)
        if status != b"ok":
            why = result.decode(errors="replace") if status else f"exited ({self.process.poll()})"
            raise RemoteError(f"loopback worker: {why}")
        self.sizes.append((len(payload), len(result)))
        return result

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)

    def __enter__(self) -> "Loopback":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _write_frame(stream, data: bytes) -> None:
    stream.write(len(data).to_bytes(8, "little") + data)
    stream.flush()


def _read_frame(stream) -> bytes:
    head = stream.read(8)
    if len(head) < 8:
        return b""
    return stream.read(int.from_bytes(head, "little"))


class _NoNeuronlib:
    """A meta-path entry that refuses neuronlib, so a request that needs it (not shipped by value) fails here as it
    would on NDIF."""

    def find_spec(self, name, path=None, target=None):
        if name == "neuronlib" or name.startswith("neuronlib."):
            raise ModuleNotFoundError(f"No module named {name!r} (the loopback worker has no neuronlib)")
        return None


def _serve(name: str, seed: int, threads: int) -> None:
    """The loopback worker's loop (see :class:`Loopback`): frames in on stdin, frames out on stdout."""
    torch.set_num_threads(threads)
    import io
    import os
    import sys
    import traceback

    from nnsight.tracing.tracer import _saves, dec, inc

    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr  # keep the frame channel clean of prints
    import neuronlib

    lm = neuronlib.load_model(name, seed=seed).nn
    # What the worker resolves persistent ids against: its own interleaver and modules.
    persistent = {"Interleaver": lm.interleaver, f"Module:{lm.path}": lm._module}
    persistent.update({f"Module:{e.path}": e._module for e in lm.modules()})
    for module in [m for m in sys.modules if m == "neuronlib" or m.startswith("neuronlib.")]:
        del sys.modules[module]
    sys.meta_path.insert(0, _NoNeuronlib())
    _write_frame(out, b"ready")
    stdin = sys.stdin.buffer
    while True:
        request = _read_frame(stdin)
        if not request:
            return
        compress, payload = bool(request[0]), request[1:]
        try:
            tracer = RequestModel.deserialize(payload, persistent, compress=compress)
            inc()
            try:
                tracer.execute(tracer.info.code)
                saved = {k: v for k, v in tracer.info.frame.f_locals.items() if id(v) in _saves()}
            finally:
                dec()
            buffer = io.BytesIO()
            torch.save(saved, buffer)
            result = buffer.getvalue()
            if compress:
                import zstandard  # nnsight's compression; nnsight requires it

                result = zstandard.ZstdCompressor(level=6).compress(result)
            _write_frame(out, b"ok")
            _write_frame(out, result)
        except Exception:
            _write_frame(out, b"error")
            _write_frame(out, traceback.format_exc(limit=-3).encode())
