"""Models from the ecosystem: hf:DIR (tiny configs saved in tmp_path, never a download), timm and torchvision
(fake modules: the default install has neither), --weights, tied weights, the prunable share and bad input."""

from __future__ import annotations

import json
import sys
import types

import pytest
import tiny_hf
import torch
from torch import nn

from prunescope import targets as targets_module
from prunescope.checkpoint import load_checkpoint, save_checkpoint
from prunescope.errors import UsageError
from prunescope.models import as_logits, build_from_spec, build_model, load_weights, model_spec
from prunescope.prunable import prunable_share
from prunescope.targets import find_targets, register_matrix_layer


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- timm / torchvision, faked


class Net(nn.Module):
    """What a fake library builds: returns a tuple, as torchvision's Inception does in training mode."""

    def __init__(self, in_chans: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_chans * 64, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.fc(x.flatten(1))
        return logits, logits.detach()


@pytest.fixture
def fake_timm(monkeypatch):
    calls = []
    timm = types.ModuleType("timm")
    timm.is_model = lambda name: name == "tiny_net"

    def create_model(name, **kwargs):
        calls.append((name, kwargs))
        return Net(kwargs["in_chans"], kwargs["num_classes"])

    timm.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", timm)
    return calls


@pytest.fixture
def fake_torchvision(monkeypatch):
    calls = []
    models = types.ModuleType("torchvision.models")
    models.list_models = lambda: ["tiny_net"]

    def get_model(name, **kwargs):
        calls.append((name, kwargs))
        return Net(1, kwargs["num_classes"])

    models.get_model = get_model
    package = types.ModuleType("torchvision")
    package.models = models
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    return calls


def test_timm_model_built_without_pretrained_weights_and_read_as_logits(fake_timm):
    model = build_model("timm:tiny_net", (1, 8, 8), 3, drop_rate=0.1)
    assert fake_timm == [("tiny_net", {"pretrained": False, "num_classes": 3, "in_chans": 1, "drop_rate": 0.1})]
    out = model(torch.randn(2, 1, 8, 8))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)  # the tuple's first element
    assert [t.name for t in find_targets(model)] == ["fc.weight"]  # names as the library gives them


def test_torchvision_model_and_its_spec_rebuild_without_trust(fake_torchvision, tmp_path):
    spec = model_spec("torchvision:tiny_net", (1, 8, 8), 4)
    assert spec["name"] == "torchvision:tiny_net"
    model = build_model("torchvision:tiny_net", (1, 8, 8), 4)
    assert fake_torchvision[0] == ("tiny_net", {"weights": None, "num_classes": 4})
    path = save_checkpoint(tmp_path / "model.pt", model, spec, {"name": "digits"})
    loaded = load_checkpoint(path)  # a library's registry name is no factory: no --trust-factory needed
    torch.testing.assert_close(loaded.model(torch.ones(1, 1, 8, 8)), model(torch.ones(1, 1, 8, 8)), rtol=0, atol=0)


@pytest.mark.parametrize("source", ["timm", "torchvision"])
def test_missing_extra_is_one_line_naming_it(monkeypatch, source):
    monkeypatch.setitem(sys.modules, source, None)  # import of a None entry raises ImportError
    monkeypatch.setitem(sys.modules, f"{source}.models", None)
    with pytest.raises(UsageError) as error:
        build_model(f"{source}:resnet18", (3, 32, 32), 10)
    assert one_line(error) == f"--model {source}:… needs the optional extra: pip install 'prunescope[{source}]'"


def test_missing_hf_extra_is_one_line(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "architectures": ["GPT2ForSequenceClassification"]}')
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UsageError) as error:
        model_spec(f"hf:{tmp_path}", (8,), 3)
    assert one_line(error) == "--model hf:… needs the optional extra: pip install 'prunescope[hf]'"


def test_unknown_library_model_and_refused_options(fake_timm, fake_torchvision):
    with pytest.raises(UsageError, match="unknown timm model 'nope'"):
        build_model("timm:nope", (1, 8, 8), 3)
    with pytest.raises(UsageError, match="unknown torchvision model 'nope'"):
        model_spec("torchvision:nope", (1, 8, 8), 3)
    with pytest.raises(UsageError, match="--model-arg pretrained is refused"):
        build_model("timm:tiny_net", (1, 8, 8), 3, pretrained=True)
    assert fake_timm == []  # nothing was built


# --------------------------------------------------------------------------- --weights


def test_weights_file_torch_and_safetensors(tmp_path, fake_timm):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    source = build_model("timm:tiny_net", (1, 8, 8), 3)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, tmp_path / "nested.pt")
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    for name in ("w.pt", "nested.pt", "w.safetensors"):
        torch.manual_seed(1)
        model = load_weights(build_model("timm:tiny_net", (1, 8, 8), 3), tmp_path / name)
        assert torch.equal(model.fc.weight, source.fc.weight)


def test_weights_that_do_not_fit_or_are_not_weights(tmp_path, fake_timm):
    model = build_model("timm:tiny_net", (1, 8, 8), 3)
    torch.save({"fc.weight": torch.zeros(5, 64), "fc.bias": torch.zeros(5)}, tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    torch.save({"fc.weight": nn.Linear(2, 2)}, tmp_path / "module.pt")  # a pickled module: refused unread
    before = model.fc.weight.clone()
    cases = {
        "other.pt": "does not fit the model: 'fc.weight' has shape (5, 64) in the file but (3, 64) in the model",
        "junk.pt": "is not a readable torch file",
        "module.pt": "holds Python objects that are unsafe to load",
        "absent.pt": "does not exist",
    }
    for name, expected in cases.items():
        with pytest.raises(UsageError) as error:
            load_weights(model, tmp_path / name)
        assert expected in one_line(error)
    assert torch.equal(model.fc.weight, before)  # nothing loaded


# --------------------------------------------------------------------------- matrix layers and the share


class Product(nn.Module):
    """A layer of its own: x @ W with W stored (in, out), as HF's Conv1D but under another name."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


def test_unsupported_matrix_product_is_said_and_registering_the_layer_makes_it_a_target(monkeypatch):
    monkeypatch.setattr(targets_module, "_REGISTERED", {})
    model = nn.Sequential(Product(20, 30), nn.ReLU(), nn.LayerNorm(30), nn.Linear(30, 3))
    share = prunable_share(model, find_targets(model), (20,))
    total = 600 + 60 + 90 + 3
    assert (share.prunable, share.total, share.layers) == (90, total, 1)
    assert share.left_out == {"language_model": 0, "excluded": 0, "unsupported": 600, "norms": 60, "biases": 3,
                              "other": 0}
    assert share.unsupported == share.in_products == ["0.weight"]
    assert "600 in matrix products of unsupported layer types (0.weight" in share.line()
    assert share.warning() is not None and f"only {90 / total:.1%}" in share.warning()
    register_matrix_layer(Product, transposed=True)
    (product, head) = find_targets(model)
    assert (product.name, product.transposed, product.rows, product.fan_in) == ("0.weight", True, 30, 20)
    share = prunable_share(model, [product, head], (20,))
    assert share.prunable == 690 and share.warning() is None
    assert share.line() == (f"prunable: {690 / total:.1%} of the model's {total} weights (2 layers); "
                            "left out: 60 in normalisation layers, 3 in biases")


# --------------------------------------------------------------------------- Hugging Face


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    return tiny_hf.save("GPT2ForSequenceClassification", tiny_hf.gpt2_config(), tmp_path_factory.mktemp("g"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    return tiny_hf.save("LlamaForSequenceClassification", tiny_hf.llama_config(),
                           tmp_path_factory.mktemp("l"))


def test_hf_directory_weights_loaded_and_spec_rebuilds_the_architecture(gpt2_dir, tmp_path):
    import transformers

    saved = transformers.GPT2ForSequenceClassification.from_pretrained(gpt2_dir)
    model = build_model(f"hf:{gpt2_dir}", (8,), 3)
    assert torch.equal(model.score.weight, saved.score.weight)  # the directory's weights
    x = torch.randint(1, tiny_hf.VOCAB, (4, 8))
    logits = model(x.float())  # float token ids, as prunescope keeps inputs, read as ids
    torch.testing.assert_close(logits, saved(x).logits, rtol=0, atol=0)
    spec = model_spec(f"hf:{gpt2_dir}", (8,), 3)
    assert spec == {"name": f"hf:{gpt2_dir.resolve()}", "input_shape": [8], "num_classes": 3, "kwargs": {}}
    path = save_checkpoint(tmp_path / "model.pt", model, spec, {"name": "tokens"})
    assert "format" in torch.load(path, weights_only=True)  # tensors and plain data only
    loaded = load_checkpoint(path)  # hf:DIR is no factory: loads without --trust-factory
    torch.testing.assert_close(loaded.model(x.float()), logits, rtol=0, atol=0)
    fresh = build_from_spec(spec)  # the architecture, initialised: a checkpoint brings the weights
    assert type(fresh) is type(model) and not torch.equal(fresh.score.weight, model.score.weight)


def test_hf_config_only_fresh_init_with_options_and_head_sized_by_the_data(gpt2_dir, tmp_path):
    directory = tmp_path / "config-only"
    directory.mkdir()
    (directory / "config.json").write_text((gpt2_dir / "config.json").read_text())
    torch.manual_seed(0)
    first = build_model(f"hf:{directory}", (8,), 5, n_layer=1)
    torch.manual_seed(0)
    second = build_model(f"hf:{directory}", (8,), 5, n_layer=1)
    assert len(first.transformer.h) == 1 and first.score.out_features == 5
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(),
                                                  strict=True))
    pretrained_head = build_model(f"hf:{gpt2_dir}", (8,), 5)  # 3 labels saved, 5 classes asked: a new head
    assert pretrained_head.score.out_features == 5


def test_llama_targets_are_its_projections_head_and_embedding(llama_dir):
    model = build_model(f"hf:{llama_dir}", (8,), 3)
    names = [t.name for t in find_targets(model)]
    layers = [f"model.layers.{i}.{part}.weight" for i in range(2)
              for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    assert names == ["model.embed_tokens.weight", *layers, "score.weight"]
    assert not any(t.transposed for t in find_targets(model))
    share = prunable_share(model, find_targets(model, exclude=["model.embed_tokens"]), (8,))
    total = sum(p.numel() for p in model.parameters())
    assert share.total == total and share.left_out["excluded"] == 32 * 16
    assert share.left_out["norms"] == 16 * 5  # two RMSNorms per layer and the final one, 16 each
    assert share.prunable == total - 32 * 16 - 80


def test_tied_weights_are_one_target_counted_once(tmp_path):
    pytest.importorskip("transformers")
    directory = tiny_hf.save("GPT2LMHeadModel", tiny_hf.gpt2_config(architectures=["GPT2LMHeadModel"]),
                                tmp_path / "lm")
    model = build_model(f"hf:{directory}", (8,), tiny_hf.VOCAB)
    assert model.lm_head.weight is model.transformer.wte.weight
    found = find_targets(model)
    tied = [t for t in found if "wte" in t.name or "lm_head" in t.name]
    assert [(t.name, t.aliases) for t in tied] == [("transformer.wte.weight", ("lm_head.weight",))]
    share = prunable_share(model, found, (8,))
    unique = {id(p): p.numel() for p in model.parameters()}
    assert share.total == sum(unique.values()) < sum(p.numel() for _, p in model.named_parameters(
        remove_duplicate=False))
    assert "transformer.wte.weight" not in {t.name for t in find_targets(model, exclude=["lm_head"])}
    # A file holding the tied tensor under one name only (as save_pretrained writes it) fits.
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    torch.save(state, tmp_path / "w.pt")
    load_weights(build_model(f"hf:{directory}", (8,), tiny_hf.VOCAB), tmp_path / "w.pt")


def test_hf_bad_inputs_are_one_line_each(gpt2_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    bare = tmp_path / "bare"
    bare.mkdir()
    config = json.loads((gpt2_dir / "config.json").read_text())
    (bare / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "architectures"}))
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"model_type": "mystery", "auto_map": {"AutoConfig": "x.Y"}}))
    cases = {
        f"hf:{tmp_path / 'absent'}": "no such directory",
        f"hf:{empty}": "has no config.json",
        f"hf:{bare}": "config.json names no architecture",
        f"hf:{remote}": "cannot read its config.json",
    }
    for name, expected in cases.items():
        with pytest.raises(UsageError) as error:
            model_spec(name, (8,), 3)
        assert expected in one_line(error), name
    with pytest.raises(UsageError, match="unknown architecture 'GPT2Nope'"):
        build_model(f"hf:{gpt2_dir}", (8,), 3, architecture="GPT2Nope")
    with pytest.raises(UsageError, match="has no setting 'n_layers'"):
        build_model(f"hf:{gpt2_dir}", (8,), 3, n_layers=1)
    with pytest.raises(UsageError, match="trust_remote_code is refused"):
        build_model(f"hf:{gpt2_dir}", (8,), 3, trust_remote_code=True)
    # With the architecture given, a bare config builds.
    assert build_model(f"hf:{bare}", (8,), 3, architecture="GPT2ForSequenceClassification").score.out_features == 3


def test_a_user_factory_returning_a_transformers_model_is_read_as_logits(gpt2_dir):
    import transformers

    model = transformers.GPT2ForSequenceClassification.from_pretrained(gpt2_dir)
    assert as_logits(as_logits(model)) is model
    assert len(model._forward_hooks) == 1 and len(model._forward_pre_hooks) == 1  # idempotent
    assert model(torch.ones(2, 8)).shape == (2, 3)


def test_wrap_a_transformers_model_through_its_directory(gpt2_dir, tmp_path):
    import transformers

    from prunescope import wrap

    model = transformers.GPT2ForSequenceClassification.from_pretrained(gpt2_dir)
    data = tiny_hf.tokens(n_train=30, n_val=9, n_test=9)
    with pytest.raises(UsageError, match=r"save it with model\.save_pretrained"):
        wrap(model, data, tmp_path / "refused")
    path = wrap(model, data, tmp_path / "wrapped", factory=f"hf:{gpt2_dir}")
    loaded = load_checkpoint(path).model
    x = data["val"][0]
    torch.testing.assert_close(loaded(x.float()), model(x).logits, rtol=0, atol=0)


def test_a_pruned_tied_tensor_is_masked_wherever_it_is_used(tmp_path):
    pytest.importorskip("transformers")
    import copy

    from prunescope.criteria import compute_scores
    from prunescope.masks import apply_permanently, compute_masks, make_permanent

    directory = tiny_hf.save("GPT2LMHeadModel", tiny_hf.gpt2_config(architectures=["GPT2LMHeadModel"]), tmp_path / "lm")
    model = build_model(f"hf:{directory}", (8,), tiny_hf.VOCAB).eval()
    found = find_targets(model)
    masks = compute_masks(compute_scores(model, found, "magnitude"), {"transformer.wte.weight": 0.5})
    reparametrized, baked = copy.deepcopy(model), copy.deepcopy(model)
    apply_permanently(reparametrized, found, masks)
    apply_permanently(baked, found, masks, reparametrize=False)
    x = torch.randint(1, tiny_hf.VOCAB, (3, 8)).float()
    # The head reads the embedding table's tensor: it must see the mask too (lm_head computes orig * mask).
    torch.testing.assert_close(reparametrized(x), baked(x), rtol=0, atol=0)
    assert float((reparametrized.lm_head.weight == 0).float().mean()) == 0.5
    make_permanent(reparametrized)
    assert reparametrized.lm_head.weight is reparametrized.transformer.wte.weight  # still one tensor
    torch.testing.assert_close(reparametrized(x), baked(x), rtol=0, atol=0)
