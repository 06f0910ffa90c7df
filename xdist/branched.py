"""A multilingual encoder with per-language branches (MBLM, Yang et al. 2022; methods.md §B.3).

Only the paper's abstract is known ("multiple language branches ... each branch is a stack of
transformers"; "the mixture of zero-shot representations from all the branches"); everything below
the abstract's sentences is a reconstruction, each unknown a field of :class:`BranchedConfig`.

Layout (``N`` encoder layers, ``K = branch_layers``, ``M`` supervised languages)::

    embeddings -> layers 0 .. N-K-1 (shared) -+-> branch 0: K layers -> head 0 (or the shared head)
                                              +-> ...
                                              +-> branch M-1: K layers -> head M-1

Every branch's layers start as copies of the pretrained top K layers; heads are one shared head or
one per branch (``share_head``). Forward runs every branch on every row (the zero-shot-aware term
needs all of them, and ZeRO then sees every parameter used in every step) and returns

* ``branch_logits`` [B, M, C]: each branch's classification of each row,
* ``mixture_logits`` [B, C]: the classification of a mixture of the branches' representations,
* ``logits`` [B, C]: the inference rule — a row of a supervised language (``branch[i] >= 0``) takes its
  own branch (or the mixture with ``supervised_inference: mixture``), any other row (``branch[i] < 0``,
  or no ``branch`` given) the mixture.

Mixture (``mixture``): ``uniform`` weights 1/M; ``dirichlet``: weights passed in by the caller (the
training method draws them from its seeded generator; without them, the Dirichlet's mean, uniform);
``learned``: a gate ``softmax(W h_cls + b)`` on the shared layers' [CLS] output, initialised to zero
(uniform). What is mixed (``mixture_representation``): ``cls``, the [CLS] vectors of the branches' top
layer (the head reads position 0 only, for every supported family); ``layers``, a separate mixture
stream through the branch layers, ``h_j = sum_m w_m layer_m_j(h_{j-1})`` at every branch layer, its last
hidden states classified. With per-branch heads the mixture is classified by every head and the logits
are mixed with the same weights.

Supported encoders: transformers families whose layers are ``<base>.encoder.layer`` (an ``nn.ModuleList``)
and whose sequence-classification head is one of the two known shapes (:data:`FAMILIES`): BERT
(pooler + linear) and the RoBERTa family (XLM-R, RoBERTa, CamemBERT: a two-layer head on [CLS]).

A single branch exports as the family's standard ``*ForSequenceClassification`` checkpoint
(:func:`export_branch`), and a standard checkpoint imports as a branched model with every branch
equal to its top K layers (:func:`branched_from_pretrained`).
"""

from __future__ import annotations

import copy
import re
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.configuration_utils import SubConfigSpec
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import ModelOutput

from xdist.errors import UserError

MIXTURES = ("uniform", "dirichlet", "learned")
REPRESENTATIONS = ("cls", "layers")
INFERENCE = ("branch", "mixture")


@dataclass(frozen=True)
class Family:
    """How one transformers family lays out its encoder and its sequence-classification head."""

    head: str
    """``pooled``: the base model's pooler (dense + tanh on [CLS]), dropout, a linear classifier (BERT).
    ``features``: a ``*ClassificationHead`` module reading the [CLS] hidden state (RoBERTa family)."""

    head_class: str
    """Class name, in the family's modeling module, of the pooler (``pooled``) or of the head (``features``)."""


FAMILIES: dict[str, Family] = {
    "bert": Family("pooled", "BertPooler"),
    "xlm-roberta": Family("features", "XLMRobertaClassificationHead"),
    "roberta": Family("features", "RobertaClassificationHead"),
    "camembert": Family("features", "CamembertClassificationHead"),
}


class BranchError(UserError, ValueError):
    """A branched model cannot be built as asked (unsupported family, bad K, ...). Names the field."""


def family_of(model_type: str) -> Family:
    """The :class:`Family` of ``model_type``, or a :class:`BranchError` listing the supported ones."""
    if model_type not in FAMILIES:
        raise BranchError(
            f"model type {model_type!r} cannot be branched: MBLM branches need an encoder whose layers are "
            f"<base>.encoder.layer (an nn.ModuleList) and a known classification head; supported: "
            f"{sorted(FAMILIES)}"
        )
    return FAMILIES[model_type]


class BranchedConfig(PretrainedConfig):
    """Configuration of :class:`BranchedForSequenceClassification` (saved as ``config.json``)."""

    model_type: ClassVar[str] = "xdist-branched"
    sub_configs_defaults: ClassVar[dict] = {"encoder": SubConfigSpec(config_class=AutoConfig, model_type="bert")}

    encoder: PretrainedConfig | dict | None = None
    """The encoder's own config (BERT, XLM-R, ...), all N layers; its labels follow this config's."""
    languages: list[str] | None = None
    """The supervised languages, one branch each, in branch order."""
    branch_layers: int = 2
    """K: top encoder layers copied per branch (0 <= K <= N; 0 = no branch layers, heads only)."""
    share_head: bool = True
    """One classification head for every branch (True) or one per branch (False)."""
    mixture: str = "uniform"
    """Mixture weights over branches: ``uniform``, ``dirichlet`` (drawn by the caller) or ``learned`` (gate)."""
    mixture_representation: str = "cls"
    """What is mixed: ``cls`` (the branches' top-layer [CLS] vectors) or ``layers`` (every branch layer)."""
    supervised_inference: str = "branch"
    """A supervised language's rows at inference: its own ``branch`` or the ``mixture``."""

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.languages = list(self.languages or [])
        family_of(self.encoder.model_type)
        checks = [
            ("branch_layers", 0 <= self.branch_layers <= self.encoder.num_hidden_layers,
             f"must be in [0, {self.encoder.num_hidden_layers}] (the encoder's layers)"),
            ("languages", len(self.languages) >= 1, "needs at least one supervised language"),
            ("languages", len(set(self.languages)) == len(self.languages), "has a language twice"),
            ("mixture", self.mixture in MIXTURES, f"must be one of {list(MIXTURES)}"),
            ("mixture_representation", self.mixture_representation in REPRESENTATIONS,
             f"must be one of {list(REPRESENTATIONS)}"),
            ("supervised_inference", self.supervised_inference in INFERENCE, f"must be one of {list(INFERENCE)}"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise BranchError(f"branched model field {name!r} = {getattr(self, name)!r}: {why}")
        # The encoder's labels follow ours, so that an exported branch carries them.
        self.encoder.id2label = dict(self.id2label)
        self.encoder.label2id = dict(self.label2id)

    @property
    def num_branches(self) -> int:
        return len(self.languages)

    @property
    def shared_layers(self) -> int:
        return self.encoder.num_hidden_layers - self.branch_layers

    def branch_of(self, language: str) -> int:
        """Branch index of ``language``; -1 for a language without a branch (inference uses the mixture)."""
        return self.languages.index(language) if language in self.languages else -1


@dataclass
class BranchedOutput(ModelOutput):
    """Output of :class:`BranchedForSequenceClassification` (see the module docstring)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    branch_logits: torch.Tensor | None = None
    mixture_logits: torch.Tensor | None = None
    mixture_weights: torch.Tensor | None = None


class PooledHead(nn.Module):
    """BERT's sequence-classification head: pooler (dense + tanh on [CLS]), dropout, linear classifier."""

    def __init__(self, pooler: nn.Module, config: PretrainedConfig) -> None:
        super().__init__()
        self.pooler = pooler
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pooler(hidden)))


def _family_class(base: type, name: str) -> type:
    return getattr(sys.modules[base.__module__], name)


def _with_layers(config: PretrainedConfig, layers: int) -> PretrainedConfig:
    result = copy.deepcopy(config)
    result.num_hidden_layers = layers
    return result


class BranchedForSequenceClassification(PreTrainedModel):
    """Shared bottom layers, per-language top layers and heads, a mixture path (module docstring)."""

    config_class = BranchedConfig
    base_model_prefix = "branched"
    supports_gradient_checkpointing = False
    _supports_sdpa = True

    def __init__(self, config: BranchedConfig) -> None:
        super().__init__(config)
        encoder = config.encoder
        family = family_of(encoder.model_type)
        base_class = AutoModel._model_mapping[type(encoder)]  # e.g. BertModel, XLMRobertaModel
        # Under ZeRO-3 this whole constructor runs inside transformers' zero.Init context: every
        # submodule is partitioned as it is built and initialised afterwards by _init_weights.
        self.shared = base_class(_with_layers(encoder, config.shared_layers), add_pooling_layer=False)
        encoder_class = type(self.shared.encoder)
        branch_config = _with_layers(encoder, config.branch_layers)
        # The shared stack resolved the attention implementation (sdpa, eager, ...) when it was built;
        # the branch layers must use the same one, for the mask built for it in forward.
        branch_config._attn_implementation = self.shared.config._attn_implementation
        self.branches = nn.ModuleList(encoder_class(branch_config) for _ in range(config.num_branches))
        head_class = _family_class(base_class, family.head_class)
        n_heads = 1 if config.share_head else config.num_branches
        if family.head == "pooled":
            self.heads = nn.ModuleList(PooledHead(head_class(encoder), encoder) for _ in range(n_heads))
        else:
            self.heads = nn.ModuleList(head_class(encoder) for _ in range(n_heads))
        self.gate = nn.Linear(encoder.hidden_size, config.num_branches) if config.mixture == "learned" else None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # The gate starts at zero (uniform mixture); everything else as the encoder family initialises it.
        if module is self.gate:
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
        else:
            self.shared._init_weights(module)

    # ---- forward ---------------------------------------------------------------------------------

    def _weights(self, mixture_weights: torch.Tensor | None, shared_cls: torch.Tensor) -> torch.Tensor:
        """Mixture weights [B, M] (rows sum to 1)."""
        rows, branches = shared_cls.shape[0], self.config.num_branches
        if mixture_weights is not None:
            weights = mixture_weights.to(shared_cls.dtype)
            if weights.shape not in ((branches,), (rows, branches)):
                raise ValueError(f"mixture_weights must have shape ({branches},) or ({rows}, {branches}), "
                                 f"got {tuple(weights.shape)}")
            return weights.expand(rows, branches)
        if self.gate is not None:
            return torch.softmax(self.gate(shared_cls), dim=-1)
        return shared_cls.new_full((rows, branches), 1.0 / branches)

    def _classify(self, head: int | None, hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Logits of ``hidden`` [B, L', H] by head ``head``, or (None) by every head, mixed by ``weights``."""
        if head is not None or len(self.heads) == 1:
            return self.heads[head or 0](hidden)
        per_head = torch.stack([h(hidden) for h in self.heads], dim=1)  # [B, M, C]
        return (weights.unsqueeze(-1) * per_head).sum(1)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        branch: torch.Tensor | None = None,
        mixture_weights: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> BranchedOutput:
        """Logits by the inference rule, every branch's logits and the mixture's (module docstring).

        ``branch`` [B]: each row's branch index (:meth:`BranchedConfig.branch_of`), negative for a language
        without a branch; ``None``: every row takes the mixture. ``mixture_weights``: [M] or [B, M] weights
        that replace the configured rule (``dirichlet`` draws). ``labels``: CE on ``logits``, as
        ``*ForSequenceClassification`` does.
        """
        shared = self.shared(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                             position_ids=position_ids, return_dict=True).last_hidden_state
        mask = create_bidirectional_mask(config=self.shared.config, inputs_embeds=shared,
                                         attention_mask=attention_mask)
        weights = self._weights(mixture_weights, shared[:, 0])
        tops = []
        for stack in self.branches:
            hidden = shared
            for layer in stack.layer:
                hidden = layer(hidden, mask)
            tops.append(hidden)
        heads_per_branch = [None if len(self.heads) == 1 else b for b in range(len(tops))]
        branch_logits = torch.stack(
            [self._classify(h, top[:, :1], weights) for h, top in zip(heads_per_branch, tops, strict=True)], dim=1
        )  # [B, M, C]
        if self.config.mixture_representation == "cls" or self.config.branch_layers == 0:
            mixed = sum(weights[:, b, None, None] * top[:, :1] for b, top in enumerate(tops))
        else:
            mixed = shared
            for j in range(self.config.branch_layers):
                mixed = sum(weights[:, b, None, None] * stack.layer[j](mixed, mask)
                            for b, stack in enumerate(self.branches))
            mixed = mixed[:, :1]
        mixture_logits = self._classify(None, mixed, weights)
        logits = mixture_logits
        if branch is not None and self.config.supervised_inference == "branch":
            own = branch.clamp(min=0).view(-1, 1, 1).expand(-1, 1, branch_logits.shape[-1])
            logits = torch.where((branch >= 0).unsqueeze(-1), branch_logits.gather(1, own).squeeze(1), mixture_logits)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.view(-1))
        return BranchedOutput(loss=loss, logits=logits, branch_logits=branch_logits, mixture_logits=mixture_logits,
                              mixture_weights=weights)


AutoConfig.register(BranchedConfig.model_type, BranchedConfig)
AutoModel.register(BranchedConfig, BranchedForSequenceClassification)
AutoModelForSequenceClassification.register(BranchedConfig, BranchedForSequenceClassification)


# --------------------------------------------------------------------------------------------------
# Standard <-> branched weights
# --------------------------------------------------------------------------------------------------


def standard_class(encoder: PretrainedConfig) -> type[PreTrainedModel]:
    """The family's ``*ForSequenceClassification`` class (``BertForSequenceClassification``, ...)."""
    family_of(encoder.model_type)
    return AutoModelForSequenceClassification._model_mapping[type(encoder)]


def _head_keys(config: BranchedConfig) -> dict[str, str]:
    """Standard-checkpoint key prefix -> key prefix inside one of our heads."""
    prefix = standard_class(config.encoder).base_model_prefix
    if family_of(config.encoder.model_type).head == "pooled":
        return {f"{prefix}.pooler.": "pooler.", "classifier.": "classifier."}
    return {"classifier.": ""}


def to_branched_state(standard: dict[str, torch.Tensor], config: BranchedConfig) -> dict[str, torch.Tensor]:
    """Our state dict from a standard ``*ForSequenceClassification`` one: the bottom N-K layers shared, the
    top K layers copied into every branch, the head into every head. A key that fits nowhere is an error."""
    prefix = standard_class(config.encoder).base_model_prefix
    shared, heads = config.shared_layers, 1 if config.share_head else config.num_branches
    layer_key = re.compile(rf"{re.escape(prefix)}\.encoder\.layer\.(\d+)\.(.+)")
    result: dict[str, torch.Tensor] = {}
    for key, value in standard.items():
        if key.startswith(f"{prefix}.embeddings."):
            result["shared." + key[len(prefix) + 1:]] = value
        elif match := layer_key.fullmatch(key):
            index, rest = int(match[1]), match[2]
            if index < shared:
                result[f"shared.encoder.layer.{index}.{rest}"] = value
            else:
                for b in range(config.num_branches):  # own storage per copy: a loader may assign, not copy
                    result[f"branches.{b}.layer.{index - shared}.{rest}"] = value.clone()
        elif head := next((h for h in _head_keys(config) if key.startswith(h)), None):
            for h in range(heads):
                result[f"heads.{h}.{_head_keys(config)[head]}{key[len(head):]}"] = value.clone()
        else:
            raise BranchError(f"standard checkpoint key {key!r} has no place in a branched model")
    return result


def to_standard_state(state: dict[str, torch.Tensor], config: BranchedConfig, branch: int) -> dict[str, torch.Tensor]:
    """The standard ``*ForSequenceClassification`` state dict of branch ``branch`` (the gate is dropped)."""
    if not 0 <= branch < config.num_branches:
        raise BranchError(f"branch {branch} does not exist (branches: {config.languages})")
    prefix = standard_class(config.encoder).base_model_prefix
    head = 0 if config.share_head else branch
    ours_to_standard = {f"heads.{head}.{inner}": outer for outer, inner in _head_keys(config).items()}
    result: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("shared."):
            result[f"{prefix}.{key[len('shared.'):]}"] = value
        elif key.startswith(f"branches.{branch}.layer."):
            index, rest = key[len(f"branches.{branch}.layer."):].split(".", 1)
            result[f"{prefix}.encoder.layer.{config.shared_layers + int(index)}.{rest}"] = value
        elif key.startswith(f"heads.{head}."):
            inner = max((k for k in ours_to_standard if key.startswith(k)), key=len)
            result[ours_to_standard[inner] + key[len(inner):]] = value
    return result


# --------------------------------------------------------------------------------------------------
# Building, exporting
# --------------------------------------------------------------------------------------------------


def branched_config(encoder: PretrainedConfig, languages: list[str], **options: Any) -> BranchedConfig:
    """A :class:`BranchedConfig` around ``encoder`` (its labels become the branched model's)."""
    encoder = copy.deepcopy(encoder)
    options.setdefault("id2label", dict(encoder.id2label))
    options.setdefault("label2id", dict(encoder.label2id))
    return BranchedConfig(encoder=encoder, languages=list(languages), **options)


def branched_from_standard(
    standard: PreTrainedModel, languages: list[str], *, ds_config: dict | None = None, **options: Any
) -> BranchedForSequenceClassification:
    """A branched model whose every branch starts as ``standard``'s top K layers (and head).

    ``standard`` is a full, unpartitioned ``*ForSequenceClassification`` model (pretrained, or freshly
    random-initialised so that the branches start equal either way). With a ZeRO-3 ``ds_config`` the
    branched model is built partitioned (transformers' ``zero.Init`` path) and the weights are loaded
    into the partitions by transformers' own ZeRO-3 loader.
    """
    from xdist.models import zero3_construction

    config = branched_config(standard.config, languages, **options)
    state = to_branched_state({k: v.detach() for k, v in standard.state_dict().items()}, config)
    with zero3_construction(ds_config):
        model, info = BranchedForSequenceClassification.from_pretrained(
            None, config=config, state_dict=state, output_loading_info=True
        )
    unexpected = [k for k in info.get("unexpected_keys", [])]
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("gate.")]
    if unexpected or missing:
        raise BranchError(f"branched weights do not fit: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return model


def export_branch(model_or_engine: Any, branch: int, out_dir: Any, tokenizer: Any = None) -> None:
    """Write branch ``branch`` as the family's standard ``*ForSequenceClassification`` checkpoint.

    Works for a plain model or a DeepSpeed-wrapped one at any ZeRO stage (weights gathered, fp32 master
    weights preferred, as :func:`xdist.weights.export_pretrained`); rank 0 writes; all ranks must call it.
    """
    from pathlib import Path

    from xdist import distributed
    from xdist.weights import full_state_dict, unwrap

    module = unwrap(model_or_engine)
    if not isinstance(module, BranchedForSequenceClassification):
        raise TypeError(f"export_branch needs a BranchedForSequenceClassification, got {type(module).__name__}")
    config = module.config
    if not 0 <= branch < config.num_branches:
        raise BranchError(f"branch {branch} does not exist (branches: {config.languages})")
    state = full_state_dict(model_or_engine)
    if state is not None:
        standard_state = to_standard_state(state, config, branch)
        encoder = copy.deepcopy(config.encoder)
        dtypes = {t.dtype for t in standard_state.values() if t.is_floating_point()}
        encoder.dtype = next(iter(dtypes)) if len(dtypes) == 1 else torch.float32
        with torch.device("meta"):
            standard = standard_class(encoder)(encoder)
        # assign=True puts our tensors in place of the meta ones; strict: every key must match exactly.
        standard.load_state_dict(standard_state, strict=True, assign=True)
        standard.save_pretrained(Path(out_dir))
        if tokenizer is not None:
            tokenizer.save_pretrained(Path(out_dir))
    distributed.barrier()
