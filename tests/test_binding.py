"""``attnlrp.lrp``: the rules inside the block, nothing left behind after it, nothing touched outside it."""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
import transformers
from _tiny import ids, reference_llama_relevance, tiny
from torch import nn
from transformers import activations, masking_utils, modeling_utils

import attnlrp
from attnlrp.engine import binding as binding_module


def _explain(model, input_ids, method="attnlrp", **kwargs):
    """(logit, per-token relevance) through the engine, called with input_ids."""
    with attnlrp.lrp(model, method=method, **kwargs) as b:
        logits = model(input_ids=input_ids).logits
        target = logits[0, -1].argmax()
        logits[0, -1, target].backward()
        return logits[0, -1, target].detach(), (b.embeddings * b.embeddings.grad).sum(-1).detach()


def _plain_pass(model, input_ids):
    """Output, gradient w.r.t. the input embeddings and w.r.t. every parameter, with plain autograd."""
    model.zero_grad(set_to_none=True)
    embeds = model.get_input_embeddings()(input_ids)
    embeds.retain_grad()
    logits = model(inputs_embeds=embeds).logits
    (logits[0, -1] * torch.linspace(-1, 1, logits.shape[-1], dtype=logits.dtype)).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return logits.detach(), embeds.grad.clone(), grads


def _module_state(model):
    """Every per-module thing a binding could leave behind."""
    state = {}
    for path, m in model.named_modules():
        state[path] = (
            dict(m._forward_hooks),
            dict(m._forward_pre_hooks),
            dict(m._backward_hooks),
            dict(getattr(m, "_backward_pre_hooks", {})),
            set(getattr(m, "_forward_hooks_always_called", {})),
            set(getattr(m, "_forward_hooks_with_kwargs", {})),
            "forward" in m.__dict__,
            "_call_impl" in m.__dict__,
            m.__dict__.get("_gradient_checkpointing_func"),
            m.training,
        )
    return state


def _assert_pristine(model, before_state, flags, own_forwards=0):
    assert _module_state(model) == before_state
    assert sum("forward" in m.__dict__ for m in model.modules()) == own_forwards
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert binding_module._bound(model) is None
    assert not any(m in binding_module._BOUND for m in model.modules())
    assert torch._C._len_torch_function_stack() == 0


@pytest.fixture(scope="module")
def llama():
    return tiny("llama")


# --- (i) inside the block: the rules ----------------------------------------------------------


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp"])
def test_relevance_equals_hand_built_reference(attn, method):
    model = tiny("llama", attn)
    x = ids(10)
    ref_logit, ref_tokens, ref_layers = reference_llama_relevance(model, x, method)
    with attnlrp.lrp(model, method=method) as b, attnlrp.Recorder(model, "model.layers.*") as rec:
        logits = model(input_ids=x).logits
        target = logits[0, -1].argmax()
        logits[0, -1, target].backward()
        tokens = (b.embeddings * b.embeddings.grad).sum(-1)
    torch.testing.assert_close(logits[0, -1, target].detach(), ref_logit)
    torch.testing.assert_close(tokens.detach(), ref_tokens, rtol=1e-6, atol=1e-7)
    for i, expected in enumerate(ref_layers):
        torch.testing.assert_close(rec.relevance[f"model.layers.{i}"], expected.float(), rtol=1e-5, atol=1e-6)


def test_cp_lrp_conserves_relevance_at_every_layer(llama):
    x = ids(12)
    with attnlrp.lrp(llama, method="cp-lrp") as b, attnlrp.Recorder(llama, ["model.layers.*", "model.norm"]) as rec:
        logits = llama(input_ids=x).logits
        logit = logits[0, -1, 7]
        logit.backward()
        total = (b.embeddings * b.embeddings.grad).sum()
    # LlamaRMSNorm computes in float32 even in a float64 model: float32 tolerance
    torch.testing.assert_close(total.detach(), logit.detach(), rtol=1e-6, atol=1e-7)
    assert set(rec.totals()) == {"model.layers.0", "model.layers.1", "model.norm"}
    for path, value in rec.totals().items():
        assert value == pytest.approx(logit.item(), rel=1e-5), path


def test_attnlrp_loses_relevance_at_softmax_only(llama):
    # AttnLRP differs from CP-LRP (the softmax rule's bias term) and is not the plain gradient
    x = ids(12)
    logit, attn = _explain(llama, x, "attnlrp")
    _, cp = _explain(llama, x, "cp-lrp")
    embeds = llama.get_input_embeddings()(x).detach().requires_grad_()
    out = llama(inputs_embeds=embeds).logits[0, -1]
    out[out.argmax()].backward()
    plain = (embeds * embeds.grad).sum(-1)
    assert not torch.allclose(attn, cp, atol=1e-4) and not torch.allclose(attn, plain, atol=1e-4)
    assert 0.05 < float(attn.sum() / logit) < 1.5


def test_documented_inputs_embeds_usage_matches_input_ids(llama):
    x = ids(9)
    _, expected = _explain(llama, x)
    with attnlrp.lrp(llama) as b:
        embeds = llama.get_input_embeddings()(x).requires_grad_()
        logits = llama(inputs_embeds=embeds).logits[0, -1]
        logits.max().backward()
        relevance = (embeds * embeds.grad).sum(-1)
        assert b.embeddings is embeds
    torch.testing.assert_close(relevance.detach(), expected)


def test_method_aliases_are_accepted(llama):
    x = ids(6)
    _, canonical = _explain(llama, x, "cp-lrp")
    for alias in ("CP_LRP", "cplrp", "Cp-Lrp"):
        _, r = _explain(llama, x, alias)
        assert torch.equal(r, canonical)
    with attnlrp.lrp(llama, method="ATTN_LRP") as b:
        assert b.method == "attnlrp"


def test_no_grad_inside_the_block_is_the_plain_forward(llama):
    x = ids(8)
    with torch.no_grad():
        expected = llama(input_ids=x).logits
    with attnlrp.lrp(llama), torch.no_grad():
        assert torch.equal(llama(input_ids=x).logits, expected)


def test_repeated_explanations_in_one_block_are_identical(llama):
    x = ids(8)
    with attnlrp.lrp(llama) as b:
        results = []
        for _ in range(2):
            logits = llama(input_ids=x).logits
            logits[0, -1, 3].backward()
            results.append((b.embeddings * b.embeddings.grad).detach())
    assert torch.equal(results[0], results[1])


# --- (ii) after the block: the model is as before ---------------------------------------------


@pytest.mark.parametrize(
    "arch,attn,frozen",
    [("llama", "sdpa", "model.layers.1.mlp.up_proj.weight"), ("gpt2", "eager", "transformer.h.0.mlp.c_fc.weight")],
)
def test_outputs_and_gradients_bit_identical_after_the_block(arch, attn, frozen):
    model = tiny(arch, attn)
    model.get_parameter(frozen).requires_grad_(False)  # a mixed set of flags to restore
    x = ids(10)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    state = _module_state(model)
    out0, g_in0, g_par0 = _plain_pass(model, x)
    embedding = next(n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight)
    assert frozen not in g_par0 and embedding in g_par0

    with attnlrp.lrp(model) as b:
        assert not any(p.requires_grad for p in model.parameters())
        logits = model(input_ids=x).logits
        logits[0, -1].max().backward()
        assert b.embeddings.grad is not None
        assert all(p.grad is None for p in model.parameters())  # nothing accumulates into .grad

    _assert_pristine(model, state, flags)
    out1, g_in1, g_par1 = _plain_pass(model, x)
    assert torch.equal(out0, out1)
    assert torch.equal(g_in0, g_in1)
    assert g_par0.keys() == g_par1.keys()
    assert all(torch.equal(g_par0[k], g_par1[k]) for k in g_par0)


def test_inline_activation_forward_and_training_mode_restored():
    model = tiny("gpt2").train()  # NewGELUActivation gets an instance forward inside the block
    act = model.transformer.h[0].mlp.act
    assert type(act).__name__ == "NewGELUActivation"
    state, flags = _module_state(model), {n: p.requires_grad for n, p in model.named_parameters()}
    x = torch.randn(3, 5, dtype=torch.float64)
    expected = act(x)
    with attnlrp.lrp(model):
        assert "forward" in act.__dict__
        model(input_ids=ids(6)).logits.sum().backward()
        assert model.training  # the engine neutralises dropout, it does not switch modes
    _assert_pristine(model, state, flags)
    assert act.forward.__func__ is type(act).forward
    assert torch.equal(act(x), expected)


def test_existing_instance_forward_and_hooks_are_kept():
    model = tiny("gpt2")
    act = model.transformer.h[1].mlp.act
    calls = []
    own_forward = act.forward
    wrapper = act.forward = lambda t: (calls.append(1), own_forward(t))[1]  # a user's instance override
    user_hook = model.transformer.h[0].register_forward_hook(lambda *a: calls.append(2))
    state, flags = _module_state(model), {n: p.requires_grad for n, p in model.named_parameters()}
    with attnlrp.lrp(model):
        model(input_ids=ids(5)).logits.sum().backward()
    assert calls.count(1) == 1 and calls.count(2) == 1
    _assert_pristine(model, state, flags, own_forwards=1)
    assert act.__dict__["forward"] is wrapper
    model(input_ids=ids(5))
    assert calls.count(1) == 2 and calls.count(2) == 2
    user_hook.remove()


# --- (iii) a second model of the same class is untouched --------------------------------------


def test_other_model_of_same_class_untouched_inside_the_block():
    a, b = tiny("llama", seed=0), tiny("llama", seed=1)
    x = ids(8)
    expected = _plain_pass(b, x)
    b_state = _module_state(b)
    b_flags = {n: p.requires_grad for n, p in b.named_parameters()}
    with attnlrp.lrp(a) as binding, warnings.catch_warnings():
        warnings.simplefilter("error")  # B's ops must not be seen (or reported) by A's binding
        a(input_ids=x).logits[0, -1].max().backward()
        a_embeddings = binding.embeddings
        assert {n: p.requires_grad for n, p in b.named_parameters()} == b_flags
        assert _module_state(b) == b_state
        got = _plain_pass(b, x)
        assert binding.embeddings is a_embeddings  # B's embedding did not replace A's
        # and interleaved: A's explanation is unchanged by B having run in between
        a(input_ids=x).logits[0, -1].max().backward()
        r_a = (binding.embeddings * binding.embeddings.grad).sum(-1).detach()
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert got[2].keys() == expected[2].keys() and all(torch.equal(got[2][k], expected[2][k]) for k in got[2])
    assert torch.equal(r_a, _explain(a, x)[1])


def test_two_models_bound_at_once_are_independent():
    a, b = tiny("llama", seed=0), tiny("llama", seed=1)
    x = ids(8)
    expected_a, expected_b = _explain(a, x, "attnlrp")[1], _explain(b, x, "cp-lrp")[1]
    with attnlrp.lrp(a, method="attnlrp") as ba, attnlrp.lrp(b, method="cp-lrp") as bb:
        la, lb = a(input_ids=x).logits[0, -1], b(input_ids=x).logits[0, -1]
        la[la.argmax()].backward()
        lb[lb.argmax()].backward()
        ra = (ba.embeddings * ba.embeddings.grad).sum(-1)
        rb = (bb.embeddings * bb.embeddings.grad).sum(-1)
    assert torch.equal(ra.detach(), expected_a) and torch.equal(rb.detach(), expected_b)


class _Product(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)

    def forward(self, x):
        return self.a(x) * self.b(x)


class _Caller(nn.Module):
    """Calls a model it holds outside its modules (in a plain list): the two can be bound each on its own."""

    def __init__(self, inner):
        super().__init__()
        self.held, self.out = [inner], nn.Linear(4, 1, bias=False)

    def forward(self, x):
        return self.out(self.held[0](x))


@pytest.mark.parametrize("order", ["outer first", "inner first"])
def test_a_bound_model_calling_another_bound_model_gets_each_rule_once(order):
    torch.manual_seed(0)
    inner = _Product().double()
    outer = _Caller(inner).double()
    x = torch.randn(1, 4, dtype=torch.float64)

    def relevance(*models):
        xi = x.clone().requires_grad_()
        with contextlib.ExitStack() as stack:
            for model in models:
                stack.enter_context(attnlrp.lrp(model, method="cp-lrp"))
            y = outer(xi).sum()
            y.backward()
        return y.detach(), (xi * xi.grad).detach()

    y, expected = relevance(inner)  # the uniform rule at the product, once: CP-LRP conserves
    assert torch.allclose(expected.sum(), y)
    _, both = relevance(*((outer, inner) if order == "outer first" else (inner, outer)))
    assert torch.allclose(both, expected)  # not the rule twice (a quarter to each factor: half of y)
    assert torch._C._len_torch_function_stack() == 0


class _ListedExperts(nn.Module):
    """Experts in a plain Python list: their weights are parameters the model does not register."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(4, 8, bias=False), nn.Linear(8, 1, bias=False)
        self.experts = [nn.Linear(8, 8, bias=False).double() for _ in range(2)]

    def forward(self, x):
        h = self.inp(x)
        return self.out(sum(expert(h) for expert in self.experts))


def test_weights_held_outside_the_modules_are_constants_and_get_their_flag_back():
    torch.manual_seed(0)
    net = _ListedExperts().double()
    for x in (torch.randn(1, 4, dtype=torch.float64).requires_grad_(), nn.Parameter(torch.randn(1, 4).double())):
        with attnlrp.lrp(net, method="cp-lrp", strict=True):
            y = net(x).sum()
            assert not any(e.weight.requires_grad for e in net.experts)  # constants, as the registered weights are
            y.backward()
        # a linear net: every weight a constant, relevance is conserved (the uniform rule gave the weights half)
        assert torch.allclose((x * x.grad).sum(), y.detach())
        assert all(e.weight.requires_grad and e.weight.grad is None for e in net.experts)
    report = attnlrp.audit(net, torch.randn(1, 4, dtype=torch.float64), method="cp-lrp")
    assert report.ok and report.rules["nn.Parameter outside the model's modules [constant]"] == 2
    assert report.rules["linear [uniform]"] == 0
    assert attnlrp.check(net, torch.randn(1, 4, dtype=torch.float64)).ok


class _TransposedExperts(nn.Module):
    """Expert matrices in a plain list, applied as ``h @ w.t()``: a linear op (t) takes each first."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(4, 8, bias=False), nn.Linear(8, 1, bias=False)
        self.experts = [nn.Parameter(torch.randn(8, 8)) for _ in range(2)]

    def forward(self, x):
        h = self.inp(x)
        return self.out(sum(h @ w.t() for w in self.experts))


@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp"])
def test_weights_held_outside_the_modules_are_constants_whatever_op_takes_them_first(method):
    torch.manual_seed(0)
    net = _TransposedExperts().double()
    net.experts = [nn.Parameter(w.detach().double()) for w in net.experts]
    x = torch.randn(1, 4, dtype=torch.float64).requires_grad_()
    with attnlrp.lrp(net, method=method):
        y = net(x).sum()
        y.backward()
    assert torch.allclose((x * x.grad).sum(), y.detach()), "w.t() took them first: the uniform rule halved it"


# --- (iv) nothing process-wide changes --------------------------------------------------------


def _ids_of(mapping) -> dict:
    return {k: id(v) for k, v in dict(mapping).items()}


def _global_snapshot(model) -> dict:
    from torch.nn.modules import module as module_module

    classes = {cls for m in model.modules() for cls in type(m).__mro__ if cls is not object}
    return {
        "F": _ids_of(vars(F)),
        "torch": {k: id(v) for k, v in vars(torch).items() if callable(v) and not isinstance(v, type(torch))},
        "Tensor": _ids_of(torch.Tensor.__dict__),
        "TensorBase": _ids_of(torch._C.TensorBase.__dict__),
        "Parameter": _ids_of(nn.Parameter.__dict__),
        "Module": _ids_of(nn.Module.__dict__),
        "calls": (
            id(nn.Module.__call__),
            id(nn.Module._call_impl),
            id(nn.Linear.forward),
            id(nn.Embedding.forward),
            id(vars(torch.autograd.Function)["apply"]),
        ),
        "classes": {cls: _ids_of(vars(cls)) for cls in classes},
        "attention": _ids_of(modeling_utils.ALL_ATTENTION_FUNCTIONS),
        "attention_local": _ids_of(modeling_utils.ALL_ATTENTION_FUNCTIONS._local_mapping),
        "masks": _ids_of(masking_utils.ALL_MASK_ATTENTION_FUNCTIONS),
        "act2cls": _ids_of(activations.ACT2CLS),
        "activations": _ids_of(vars(activations)),
        "transformers": _ids_of(vars(transformers.models.llama.modeling_llama)),
        "global_hooks": tuple(
            dict(getattr(module_module, name))
            for name in (
                "_global_forward_hooks",
                "_global_forward_pre_hooks",
                "_global_backward_hooks",
                "_global_backward_pre_hooks",
                "_global_forward_hooks_always_called",
                "_global_module_registration_hooks",
                "_global_parameter_registration_hooks",
                "_global_buffer_registration_hooks",
            )
        ),
        "modes": torch._C._len_torch_function_stack(),
        "grad": torch.is_grad_enabled(),
        "default_dtype": torch.get_default_dtype(),
    }


def test_nothing_process_wide_is_changed(llama):
    gpt2 = tiny("gpt2")
    for model in (llama, gpt2):
        before = _global_snapshot(model)
        assert before["modes"] == 0
        with attnlrp.lrp(model):
            model(input_ids=ids(6)).logits[0, -1].max().backward()
            inside = _global_snapshot(model)
        after = _global_snapshot(model)
        for key in before:
            assert inside[key] == before[key], f"{key} changed inside the block"
            assert after[key] == before[key], f"{key} changed after the block"


def test_a_finished_binding_is_freed_without_waiting_for_the_garbage_collector(llama):
    """Leaving the block leaves no reference cycle: the binding, and the input embeddings it holds, go as soon as
    nobody holds them. (Cycles wait for a full collection, which grows rarer as a long dataset run lives on.)"""
    import gc
    import weakref

    gc.collect()
    gc.disable()
    try:
        with attnlrp.lrp(llama) as binding:
            llama(input_ids=ids(5)).logits[0, -1].max().backward()
            embeddings = weakref.ref(binding.embeddings)
        assert binding.embeddings is embeddings()  # still readable after the block
        freed = weakref.ref(binding)
        del binding
        assert freed() is None and embeddings() is None
    finally:
        gc.enable()


def test_torch_function_mode_is_active_only_while_the_model_runs(llama):
    seen = []
    hook = llama.model.layers[0].mlp.register_forward_hook(lambda *a: seen.append(torch._C._len_torch_function_stack()))
    try:
        with attnlrp.lrp(llama):
            assert torch._C._len_torch_function_stack() == 0
            out = llama(input_ids=ids(5)).logits
            assert torch._C._len_torch_function_stack() == 0
            # an op of ours outside the model is not routed through the rules
            a = torch.randn(4, requires_grad=True)
            (g,) = torch.autograd.grad((a * a).sum(), a)
            assert torch.equal(g, 2 * a.detach())
            out.sum().backward()
        assert seen == [1]
    finally:
        hook.remove()


# --- (v) bad input and exceptions ---------------------------------------------------------------


@pytest.mark.parametrize("thing", ["a string", None, torch.zeros(3), lambda x: x])
def test_not_a_module_raises_type_error(thing):
    with pytest.raises(TypeError, match=r"expects a torch\.nn\.Module.*got " + type(thing).__name__):
        with attnlrp.lrp(thing):
            pass


def test_unknown_method_raises_value_error_listing_methods(llama):
    state = _module_state(llama)
    with pytest.raises(ValueError, match=r"'lrp-epsilon'.*'attnlrp'.*'cp-lrp'"):
        with attnlrp.lrp(llama, method="lrp-epsilon"):
            pass
    assert _module_state(llama) == state


@pytest.mark.parametrize("inner", ["same", "submodule", "parent"])
def test_nested_binding_raises_and_outer_binding_survives(inner):
    model = tiny("llama")
    x = ids(7)
    _, expected = _explain(model, x)
    state, flags = _module_state(model), {n: p.requires_grad for n, p in model.named_parameters()}
    outer_target = model.model.layers[0] if inner == "parent" else model
    inner_target = {"same": model, "submodule": model.model.layers[1], "parent": model}[inner]
    with attnlrp.lrp(outer_target) as outer:
        with pytest.raises(attnlrp.BindingError, match="already bound"):
            with attnlrp.lrp(inner_target, method="cp-lrp"):
                pass
        assert all(binding_module._bound(m) is outer for m in outer_target.modules())
        if inner != "parent":
            logits = model(input_ids=x).logits[0, -1]
            logits[logits.argmax()].backward()
            assert torch.equal((outer.embeddings * outer.embeddings.grad).sum(-1).detach(), expected)
    _assert_pristine(model, state, flags)


def test_exception_inside_the_block_restores_the_model(llama):
    x = ids(6)
    state, flags = _module_state(llama), {n: p.requires_grad for n, p in llama.named_parameters()}
    expected = _plain_pass(llama, x)
    with pytest.raises(KeyError, match="boom"):
        with attnlrp.lrp(llama):
            llama(input_ids=x).logits.sum().backward()
            raise KeyError("boom")
    _assert_pristine(llama, state, flags)
    got = _plain_pass(llama, x)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert all(torch.equal(got[2][k], expected[2][k]) for k in expected[2])
    # and it can be bound again
    assert torch.equal(_explain(llama, x)[1], _explain(llama, x)[1])


class _Boom(RuntimeError):
    pass


def _fail_at(monkeypatch, step, error, calls=1):
    """Make the binding's ``step`` raise ``error`` at its ``calls``-th call (the steps before it have run)."""
    original, seen = getattr(binding_module.Binding, step), []

    def failing(self, *args, **kwargs):
        seen.append(1)
        if len(seen) == calls:
            raise error("attach failed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(binding_module.Binding, step, failing)


@pytest.mark.parametrize("error", [_Boom, KeyboardInterrupt])
@pytest.mark.parametrize(("step", "calls"), [("_bind_module", 7), ("_bind_module_rules", 1)])
def test_a_failed_attach_leaves_the_model_as_it_was(monkeypatch, step, calls, error):
    model, x = tiny("llama"), ids(6)
    _, expected = _explain(model, x)
    state, flags = _module_state(model), {n: p.requires_grad for n, p in model.named_parameters()}
    plain = _plain_pass(model, x)
    with monkeypatch.context() as patch:
        _fail_at(patch, step, error, calls)
        with pytest.raises(error, match="attach failed"):
            with attnlrp.lrp(model):
                pytest.fail("the block ran")
    _assert_pristine(model, state, flags)
    got = _plain_pass(model, x)
    assert torch.equal(got[0], plain[0]) and torch.equal(got[1], plain[1])
    assert got[2].keys() == plain[2].keys() and all(torch.equal(got[2][k], plain[2][k]) for k in plain[2])
    assert torch.equal(_explain(model, x)[1], expected)  # and it binds again


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("where", ["the model", "a submodule"])
def test_a_scripted_model_is_refused_naming_the_eager_module(where):
    eager = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    model = torch.jit.script(eager) if where == "the model" else nn.Sequential(torch.jit.script(eager))
    what = r"Sequential" if where == "the model" else r"Sequential at 0 of Sequential"
    with pytest.raises(attnlrp.BindingError, match=f"^{what} is a TorchScript module.*pass the eager nn.Module"):
        with attnlrp.lrp(model):
            pass
    assert not any(m in binding_module._BOUND for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def _raise_in_layer(model, layer=1, error=_Boom):
    def hook(module, args, kwargs):
        raise error("mid-forward")

    return model.model.layers[layer].self_attn.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("error", [_Boom, KeyboardInterrupt])
@pytest.mark.parametrize("hook_first", [False, True], ids=["binding-hooks-first", "raising-hook-first"])
def test_exception_mid_forward_caught_inside_the_block(llama, hook_first, error):
    x = ids(8)
    _, expected = _explain(llama, x)
    state, flags = _module_state(llama), {n: p.requires_grad for n, p in llama.named_parameters()}
    handle = _raise_in_layer(llama, error=error) if hook_first else None  # runs before the binding's pre-hook
    with attnlrp.lrp(llama) as b:
        handle = handle or _raise_in_layer(llama, error=error)
        with pytest.raises(error), warnings.catch_warnings():
            warnings.simplefilter("error")  # torch warns when an always_call hook fails during unwinding
            llama(input_ids=x)
        handle.remove()
        # the scope unwound: no mode left on the stack, no op of ours routed outside the model
        assert torch._C._len_torch_function_stack() == 0
        assert b._stack() == []
        logits = llama(input_ids=x).logits[0, -1]
        logits[logits.argmax()].backward()
        got = (b.embeddings * b.embeddings.grad).sum(-1).detach()
    assert torch.equal(got, expected)
    _assert_pristine(llama, state, flags)


def test_exception_mid_forward_escaping_the_block(llama):
    x = ids(8)
    state, flags = _module_state(llama), {n: p.requires_grad for n, p in llama.named_parameters()}
    expected = _plain_pass(llama, x)
    handle = _raise_in_layer(llama, 0)
    try:
        with pytest.raises(_Boom), warnings.catch_warnings():
            warnings.simplefilter("error")
            with attnlrp.lrp(llama):
                llama(input_ids=x)
    finally:
        handle.remove()
    _assert_pristine(llama, state, flags)
    got = _plain_pass(llama, x)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def _interrupt(module, args, kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("called", ["the model", "a submodule"])
@pytest.mark.parametrize("where", ["after the binding's pre-hook", "inside the forward"])
def test_a_keyboard_interrupt_mid_call_leaves_no_rule_mode_on_the_thread(called, where):
    """However a call of a bound model (or of one of its modules, called directly) is interrupted, the rules stop
    with it: another, unbound model's gradient on the same thread is its plain gradient, inside the block and after."""
    model, other, x = tiny("llama"), tiny("gpt2"), ids(6)
    expected = _plain_pass(other, x)
    state, flags = _module_state(model), {n: p.requires_grad for n, p in model.named_parameters()}
    target = model if called == "the model" else model.model
    with attnlrp.lrp(model) as b:
        hooked = target if where == "after the binding's pre-hook" else model.model.layers[1].mlp
        handle = hooked.register_forward_pre_hook(_interrupt, with_kwargs=True)  # runs after the binding's
        with pytest.raises(KeyboardInterrupt):
            target(input_ids=x)
        handle.remove()
        assert torch._C._len_torch_function_stack() == 0 and b._stack() == []
        got = _plain_pass(other, x)
        assert all(torch.equal(g, e) for g, e in zip(got[:2], expected[:2]))
        assert all(torch.equal(got[2][k], expected[2][k]) for k in expected[2])
    _assert_pristine(model, state, flags)
    got = _plain_pass(other, x)
    assert all(torch.equal(g, e) for g, e in zip(got[:2], expected[:2]))


def test_exception_in_the_backward_restores_the_model(llama):
    x = ids(6)
    state, flags = _module_state(llama), {n: p.requires_grad for n, p in llama.named_parameters()}
    with pytest.raises(_Boom):
        with attnlrp.lrp(llama) as b:
            logits = llama(input_ids=x).logits
            b.embeddings.register_hook(lambda g: (_ for _ in ()).throw(_Boom("in backward")))
            logits.sum().backward()
    _assert_pristine(llama, state, flags)


def test_threads_sharing_a_binding_each_read_their_own_embeddings(llama):
    xs = [ids(6, seed=1), ids(9, seed=2)]
    expected = [_explain(llama, x)[1] for x in xs]
    got, errors = {}, []
    both = threading.Barrier(2)

    def work(i):
        try:
            both.wait()
            logits = llama(input_ids=xs[i]).logits[0, -1]
            both.wait()  # both forwards ran before either backward: a single shared attribute would mix them up
            logits[logits.argmax()].backward()
            got[i] = (b.embeddings * b.embeddings.grad).sum(-1).detach()
        except BaseException as error:
            errors.append(error)
            both.abort()

    with attnlrp.lrp(llama) as b:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    for i in range(2):
        torch.testing.assert_close(got[i], expected[i], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("how", ["copy.deepcopy", "torch.save", "copy.deepcopy of a layer"])
def test_a_bound_model_is_not_copied_or_saved_with_its_binding(llama, tmp_path, how):
    copy_or_save = {
        "copy.deepcopy": lambda: copy.deepcopy(llama),
        "torch.save": lambda: torch.save(llama, tmp_path / "model.pt"),
        "copy.deepcopy of a layer": lambda: copy.deepcopy(llama.model.layers[0]),
    }[how]
    state, flags = _module_state(llama), {n: p.requires_grad for n, p in llama.named_parameters()}
    x = ids(6)
    with attnlrp.lrp(llama):
        with pytest.raises(
            attnlrp.BindingError,
            match=r"^LlamaForCausalLM is bound by an enclosing attnlrp\.lrp\(\.\.\.\) block, and can't be copied or "
            r"saved with its binding .*: copy or save it unbound",
        ):
            copy_or_save()
    _assert_pristine(llama, state, flags)
    copy_or_save()  # unbound, it is copied or saved as ever
    copied = torch.load(tmp_path / "model.pt", weights_only=False) if how == "torch.save" else copy.deepcopy(llama)
    assert torch.equal(copied(input_ids=x).logits, llama(input_ids=x).logits)


# --- compiled models --------------------------------------------------------------------------


def _bind(model):
    with attnlrp.lrp(model):
        pass


def test_a_compiled_model_is_refused_by_lrp_audit_and_check_with_the_way_back():
    model = tiny("llama")
    compiled = torch.compile(model, backend="eager")
    for run in (_bind, attnlrp.audit, attnlrp.check):
        with pytest.raises(attnlrp.InputError, match=r"LlamaForCausalLM was given compiled .*compiled\._orig_mod"):
            run(compiled)
    x = ids(6)
    _, expected = _explain(model, x)
    model.model.layers[1].compile(backend="eager")  # in place: a compiled submodule
    where = r"LlamaDecoderLayer at model\.layers\.1 of LlamaForCausalLM was compiled in place"
    fix = r"model\.model\.layers\.1\._compiled_call_impl = None"
    for run in (_bind, attnlrp.audit, attnlrp.check):
        with pytest.raises(attnlrp.InputError, match=f"{where} .*{fix}"):
            run(model)
    model.model.layers[1]._compiled_call_impl = None  # the way back the message names
    assert torch.equal(_explain(model, x)[1], expected)


def test_calling_the_compiled_wrapper_of_a_bound_model_is_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    compiled = torch.compile(model, backend="eager")
    with attnlrp.lrp(model, method="cp-lrp"):
        with pytest.raises(attnlrp.InputError, match="A bound model ran inside torch.compile"):
            compiled(torch.randn(2, 4, dtype=torch.float64, requires_grad=True))
        assert torch._C._len_torch_function_stack() == 0
    assert torch._C._len_torch_function_stack() == 0
