"""xdist.branched in one process: equivalence with the unbranched encoder, gradient routing, the mixture,
the inference rule, save/load and single-branch export, refusals.

The ZeRO-2/ZeRO-3 (partitioned construction and export) cases run in the 2-rank MBLM job.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from xdist.branched import (
    BranchedConfig,
    BranchedForSequenceClassification,
    BranchError,
    branched_from_standard,
    export_branch,
    to_branched_state,
)
from xdist.weights import frozen_copy

TINY = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 48, "vocab_size": 120}
LANGS = ["en", "de", "zh"]


def _standard(model_type: str = "bert", seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    pad = 0 if model_type == "bert" else 1
    config = AutoConfig.for_model(model_type, num_labels=3, pad_token_id=pad, **dict(TINY, **kw))
    return AutoModelForSequenceClassification.from_config(config).eval()


def _batch(seed: int = 0, rows: int = 6, seq: int = 13) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(rows, seq, dtype=torch.long)
    mask[1, 9:] = 0  # padded rows
    mask[4, 5:] = 0
    return {"input_ids": torch.randint(5, 120, (rows, seq), generator=g), "attention_mask": mask}


def _perturb(model: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Make every branch and head different (as training would)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("branches.", "heads.", "gate.")):
                p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("model_type", ["bert", "xlm-roberta"])
@pytest.mark.parametrize("branch_layers", [0, 1, 4])
@pytest.mark.parametrize("share_head", [True, False])
def test_fresh_branches_equal_the_unbranched_encoder_exactly(model_type, branch_layers, share_head):
    standard = _standard(model_type)
    batch = _batch()
    reference = standard(**batch).logits
    model = branched_from_standard(standard, LANGS, branch_layers=branch_layers, share_head=share_head).eval()
    branch = torch.tensor([0, 1, 2, 0, 2, 1])
    out = model(**batch, branch=branch)
    assert out.branch_logits.shape == (6, 3, 3) and out.mixture_logits.shape == (6, 3)
    for b in range(3):
        assert torch.equal(out.branch_logits[:, b], reference), b
    assert torch.equal(out.logits, reference)  # every row through its own (identical) branch
    # Shared layers + branch layers = the encoder's layers; every branch holds copies, not views.
    assert len(model.shared.encoder.layer) == 4 - branch_layers
    assert all(len(stack.layer) == branch_layers for stack in model.branches)
    storages = {p.data_ptr() for p in model.parameters()}
    assert len(storages) == len(list(model.parameters()))


@pytest.mark.parametrize("representation", ["cls", "layers"])
@pytest.mark.parametrize("mixture", ["uniform", "dirichlet", "learned"])
@pytest.mark.parametrize("share_head", [True, False])
def test_mixture_of_identical_branches_equals_one_branch(representation, mixture, share_head):
    """In float64, to within rounding of sum_m w_m x = x (weights summing to 1)."""
    standard = _standard("xlm-roberta" if share_head else "bert").double()
    model = branched_from_standard(standard, LANGS, branch_layers=2, share_head=share_head, mixture=mixture,
                                   mixture_representation=representation).eval().double()
    if mixture == "learned":  # a gate away from uniform, so that the weights are really per row
        torch.nn.init.normal_(model.gate.weight, std=1.0)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64) if mixture == "dirichlet" else None
    out = model(**_batch(1), mixture_weights=weights)
    assert torch.allclose(out.mixture_weights.sum(-1), torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-15)
    if mixture == "learned":
        assert out.mixture_weights.std(0).min() > 0  # the gate reads each row
    torch.testing.assert_close(out.mixture_logits, out.branch_logits[:, 1], rtol=1e-12, atol=1e-12)
    # Different branches: the mixture is not any one branch.
    _perturb(model, 3)
    out = model(**_batch(1), mixture_weights=weights)
    assert (out.mixture_logits - out.branch_logits[:, 0]).abs().max() > 1e-4


def test_mixture_is_the_weighted_cls_vectors_classified():
    """``cls`` mixture by hand: the branches' top-layer [CLS] vectors weighted by w, then the shared head."""
    model = branched_from_standard(_standard("xlm-roberta"), LANGS, branch_layers=2).eval()
    _perturb(model, 7)
    batch, w = _batch(2), torch.tensor([0.6, 0.1, 0.3])
    hidden = model.shared(**batch).last_hidden_state
    mask = batch["attention_mask"][:, None, None, :].bool()
    tops = []
    for stack in model.branches:
        h = hidden
        for layer in stack.layer:
            h = layer(h, mask)
        tops.append(h[:, :1])
    expected = model.heads[0](sum(wb * t for wb, t in zip(w, tops, strict=True)))
    out = model(**batch, mixture_weights=w)
    torch.testing.assert_close(out.mixture_logits, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.branch_logits[:, 2], model.heads[0](tops[2]), rtol=1e-5, atol=1e-6)


def test_inference_rule():
    model = branched_from_standard(_standard(), LANGS, branch_layers=2).eval()
    _perturb(model, 5)
    batch = _batch(3)
    branch = torch.tensor([2, -1, 0, 1, -1, 0])
    out = model(**batch, branch=branch)
    for row, b in enumerate(branch.tolist()):
        expected = out.mixture_logits[row] if b < 0 else out.branch_logits[row, b]
        assert torch.equal(out.logits[row], expected)
    assert torch.equal(model(**batch).logits, out.mixture_logits)  # no branch given: all rows zero-shot
    model.config.supervised_inference = "mixture"
    assert torch.equal(model(**batch, branch=branch).logits, out.mixture_logits)
    assert model.config.branch_of("de") == 1 and model.config.branch_of("sw") == -1


def test_each_branch_gets_gradient_only_from_its_own_rows():
    """Supervised term (own-branch logits only): a branch's gradient is unchanged, bit for bit, when the other
    languages' rows change, and exactly zero when its language has no row in the batch."""
    from xdist.methods.mblm.loss import own_branch_logits

    model = branched_from_standard(_standard(), LANGS, branch_layers=2, share_head=False).eval()
    _perturb(model, 11)
    target = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))

    def grads(batch, branch):
        model.zero_grad(set_to_none=False)
        own = own_branch_logits(model(**batch, branch=branch).branch_logits, branch)
        torch.nn.functional.kl_div(own.log_softmax(-1), target.log_softmax(-1), log_target=True,
                                   reduction="batchmean").backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    branch = torch.tensor([0, 1, 0, 1, 0, 1])  # no zh row
    batch = _batch(4)
    first = grads(batch, branch)
    other = dict(batch, input_ids=batch["input_ids"].clone())
    other["input_ids"][branch == 1] = torch.randint(5, 120, (3, 13), generator=torch.Generator().manual_seed(9))
    second = grads(other, branch)
    for name in first:
        if name.startswith(("branches.2.", "heads.2.")):
            assert torch.count_nonzero(first[name]) == 0, name
        elif name.startswith(("branches.0.", "heads.0.")):
            assert torch.equal(first[name], second[name]), name
            assert torch.count_nonzero(first[name]) > 0, name
        elif name.startswith(("branches.1.", "shared.encoder.layer.1.")):
            assert not torch.equal(first[name], second[name]), name  # these do see the changed rows


def test_learned_gate_starts_uniform_and_learns():
    model = branched_from_standard(_standard(), LANGS, branch_layers=1, mixture="learned")
    assert torch.count_nonzero(model.gate.weight) == 0 and torch.count_nonzero(model.gate.bias) == 0
    out = model(**_batch())
    torch.testing.assert_close(out.mixture_weights, torch.full((6, 3), 1 / 3))
    out.mixture_logits.logsumexp(-1).sum().backward()
    assert model.gate.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("model_type", ["bert", "xlm-roberta"])
def test_save_load_round_trip_and_single_branch_export(model_type, tmp_path):
    model = branched_from_standard(_standard(model_type), LANGS, branch_layers=2, share_head=False,
                                   mixture="learned", mixture_representation="layers",
                                   id2label={0: "entailment", 1: "neutral", 2: "contradiction"}).eval()
    _perturb(model, 13)
    batch = _batch(5)
    branch = torch.tensor([0, 1, 2, -1, 0, 1])
    out = model(**batch, branch=branch)

    model.save_pretrained(tmp_path / "whole")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "whole").eval()
    assert type(loaded) is BranchedForSequenceClassification
    config = loaded.config
    assert (config.languages, config.branch_layers, config.share_head, config.mixture,
            config.mixture_representation) == (LANGS, 2, False, "learned", "layers")
    assert config.id2label[1] == "neutral" and config.encoder.model_type == model_type
    again = loaded(**batch, branch=branch)
    for field in ("logits", "branch_logits", "mixture_logits", "mixture_weights"):
        assert torch.equal(again[field], out[field]), field

    for b in range(3):
        export_branch(model, b, tmp_path / f"branch{b}")
        single = AutoModelForSequenceClassification.from_pretrained(tmp_path / f"branch{b}").eval()
        assert type(single).__name__ == ("BertForSequenceClassification" if model_type == "bert"
                                         else "XLMRobertaForSequenceClassification")
        assert single.config.num_hidden_layers == 4 and single.config.id2label[2] == "contradiction"
        assert torch.equal(single(**batch).logits, out.branch_logits[:, b]), b
    with pytest.raises(BranchError, match="branch 3 does not exist"):
        export_branch(model, 3, tmp_path / "nope")


def test_frozen_copy_of_a_branched_model():
    model = branched_from_standard(_standard(), LANGS, branch_layers=2).eval()
    _perturb(model, 17)
    copy = frozen_copy(model)
    assert type(copy) is BranchedForSequenceClassification and not any(p.requires_grad for p in copy.parameters())
    batch = _batch(6)
    assert torch.equal(copy(**batch).mixture_logits, model(**batch).mixture_logits)


def test_refusals_name_the_field():
    with pytest.raises(BranchError, match="'distilbert' cannot be branched.*supported: \\['bert', 'camembert'"):
        BranchedConfig(encoder=AutoConfig.for_model("distilbert").to_dict(), languages=["en"])
    encoder = _standard().config
    with pytest.raises(BranchError, match="'branch_layers' = 5: must be in \\[0, 4\\]"):
        BranchedConfig(encoder=encoder, languages=["en"], branch_layers=5)
    with pytest.raises(BranchError, match="'languages'.*twice"):
        BranchedConfig(encoder=encoder, languages=["en", "en"])
    with pytest.raises(BranchError, match="'mixture' = 'softmax'"):
        BranchedConfig(encoder=encoder, languages=["en"], mixture="softmax")
    config = BranchedConfig(encoder=encoder, languages=["en", "de"])
    with pytest.raises(BranchError, match="'cls.weight' has no place"):
        to_branched_state({"cls.weight": torch.zeros(1)}, config)
    model = branched_from_standard(_standard(), ["en", "de"], branch_layers=1)
    with pytest.raises(ValueError, match=r"mixture_weights must have shape \(2,\) or \(6, 2\)"):
        model(**_batch(), mixture_weights=torch.ones(3) / 3)
