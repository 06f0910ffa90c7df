"""The MBLM method in one process on tiny real models: the teacher cache from saved teacher checkpoints with
tokenizers of their own, no teacher resident after it, the step's loss against the pieces computed directly,
training lowers it, the Dirichlet draws resume exactly. The 2-rank ZeRO runs are in the MBLM job tests."""

from __future__ import annotations

import gc

import pytest
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from tests.mblm_helpers import CLASSES, examples, save_teacher, texts_of, tiny_classifier, wordpiece
from xdist.branched import branched_from_standard
from xdist.config import BranchesConfig, ConfigError, JobConfig, MBLMConfig, _merge, build
from xdist.distributed import DistEnv
from xdist.errors import UserError
from xdist.methods.mblm.loss import mblm_loss
from xdist.methods.mblm.method import MBLM, StaleCacheError, model_inputs
from xdist.methods.mblm.teachers import fingerprint, teacher_loader
from xdist.methods.teacher_cache import MultiTeacherCache
from xdist.tasks.classification.features import collate, encode_pairs

SOLO = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
LANGS = ["en", "de"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mblm")
    teachers = {lang: str(save_teacher(root / f"teacher-{lang}", lang, seed)) for seed, lang in enumerate(LANGS)}
    student_tokenizer = wordpiece(texts_of(*LANGS), vocab_size=150)
    student_tokenizer.save_pretrained(root / "student-tokenizer")
    return root, teachers, student_tokenizer


def _method(root, teachers, mixture="uniform", **cfg):
    branches = BranchesConfig(languages=LANGS, layers=1, mixture=mixture)
    mcfg = MBLMConfig(**cfg)
    rows = examples(*LANGS)

    def build_cache():
        loaders, items, prints = {}, {}, {}
        for lang, path in teachers.items():
            mine = [e for e in rows if e.language == lang]
            loaders[lang] = teacher_loader(lang, path, student_tokenizer=root / "student-tokenizer", max_length=32,
                                           class_names=CLASSES, device=torch.device("cpu"))
            items[lang] = [(e.uid, e) for e in mine]
            prints[lang] = fingerprint(lang, path, root / "student-tokenizer", 32, mine)
        return MultiTeacherCache.build(loaders, items, root / f"cache-{mixture}", SOLO, fingerprints=prints,
                                       batch_size=4)

    return MBLM(cfg=mcfg, branches=branches, build_cache=build_cache), branches


def _student(tokenizer, branches, seed=3):
    standard = tiny_classifier(len(tokenizer), seed, layers=3)
    return branched_from_standard(standard, branches.languages, branch_layers=branches.layers,
                                  mixture=branches.mixture).train()


def _batch(tokenizer):
    rows = examples(*LANGS)
    arrays = collate(encode_pairs(rows, tokenizer, 32))
    batch = {k: torch.from_numpy(v) for k, v in arrays.items()}
    batch["groups"] = [e.language for e in rows]  # what the stream's batches carry
    batch["keys"] = [e.uid for e in rows]
    return batch


def _resident_models() -> list[str]:
    gc.collect()
    return sorted(type(o).__name__ for o in gc.get_objects() if isinstance(o, PreTrainedModel))


def test_step_distils_each_row_to_its_own_teacher_and_no_teacher_stays(setup):
    root, teachers, tokenizer = setup
    method, branches = _method(root, teachers, mixture_weight=0.5, alpha_ce=0.2, temperature=2.0)
    student = _student(tokenizer, branches)
    before = _resident_models()
    method.on_epoch_start(0, student)
    # The cache was built by loading each teacher in turn; none of them is alive now.
    assert _resident_models() == before
    batch = _batch(tokenizer)
    torch.manual_seed(0)
    out = method.step(student, batch)

    # The same loss from the pieces: teachers run directly on each row's raw text with their own tokenizer.
    direct = []
    for e in examples(*LANGS):
        teacher = AutoModelForSequenceClassification.from_pretrained(teachers[e.language]).eval()
        from xdist.data.tokenizer import load_tokenizer

        own = load_tokenizer(teachers[e.language])
        assert own.get_vocab() != tokenizer.get_vocab()
        with torch.no_grad():
            direct.append(teacher(**own(e.text_a, e.text_b, truncation="longest_first", max_length=32,
                                        return_tensors="pt")).logits[0])
    torch.manual_seed(0)
    model_out = student(**model_inputs(batch), branch=torch.tensor([0] * 6 + [1] * 6))
    expected = mblm_loss(model_out.branch_logits, model_out.mixture_logits, torch.tensor([0] * 6 + [1] * 6),
                         torch.stack(direct), batch["labels"], temperature=2.0, alpha_ce=0.2, mixture_weight=0.5)
    torch.testing.assert_close(out.loss, expected.loss, rtol=1e-5, atol=1e-6)
    assert set(out.logs) == {"loss/kd", "loss/mixture_kd", "loss/ce"}


def test_training_lowers_the_loss_and_dirichlet_draws_resume(setup):
    root, teachers, tokenizer = setup
    method, branches = _method(root, teachers, mixture="dirichlet", dirichlet_alpha=0.7, seed=5)
    student = _student(tokenizer, branches)
    student.config.encoder.hidden_dropout_prob = 0.0
    method.on_epoch_start(0, student)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    batch = _batch(tokenizer)
    losses = []
    for step in range(12):
        if step == 6:
            saved = method.state_dict()
        out = method.step(student, batch)
        assert abs(sum(float(out.logs[f"mixture/{lang}"]) for lang in LANGS) - 1) < 1e-6
        losses.append(float(out.loss.detach()))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses
    # A resumed method continues with the draws the uninterrupted one made from step 6 on.
    resumed, _ = _method(root, teachers, mixture="dirichlet", dirichlet_alpha=0.7, seed=5)
    resumed.load_state_dict(saved)
    reference, _ = _method(root, teachers, mixture="dirichlet", dirichlet_alpha=0.7, seed=5)
    for _ in range(6):
        reference.draws.draw()
    for _ in range(6):
        assert torch.equal(resumed.draws.draw(), reference.draws.draw())


def test_config_and_data_errors_name_the_field(setup):
    root, teachers, tokenizer = setup
    def job(languages, teachers, **extra):
        raw = {"task": "classification", "model": {"branches": {"languages": languages}},
               "method": {"name": "mblm", "teachers": teachers}}
        return build(JobConfig, _merge(raw, extra))

    with pytest.raises(ConfigError, match=r"method.teachers.*no teacher for .* \[.zh.\]"):
        job(["en", "de", "zh"], teachers)
    with pytest.raises(ConfigError, match=r"teacher\(s\) for \['de'\], which have no branch"):
        job(["en"], teachers)
    with pytest.raises(ConfigError, match=r"method.teachers.*language codes as keys.*'English'"):
        job(["en"], {"English": "x"})
    with pytest.raises(ConfigError, match=r"model.branches.*method 'mblm' trains a branched student"):
        build(JobConfig, {"task": "classification", "method": {"name": "mblm", "teachers": teachers}})
    with pytest.raises(ConfigError, match=r"model.branches.*sequence classifier.*head 'prompt'"):
        job(["en", "de"], teachers, model={"head": "prompt"})
    with pytest.raises(ConfigError, match=r"method.teachers.*MBLM's.*'ce'"):
        build(JobConfig, {"task": "classification", "method": {"teachers": teachers}})
    with pytest.raises(ConfigError, match=r"'model.branches.layers': expected an integer >= 0"):
        job(["en"], {"en": "x"}, model={"branches": {"layers": -1}})
    assert job(["en", "de"], teachers).method.mblm.mixture_weight == 1.0  # a complete config builds
    with pytest.raises(ConfigError, match="'languages': needs the supervised languages"):
        BranchesConfig()
    with pytest.raises(ConfigError, match="'mixture_weight': expected a number >= 0"):
        MBLMConfig(mixture_weight=-1)
    with pytest.raises(ConfigError, match=r"method.teachers.de.*not a save_pretrained checkpoint"):
        teacher_loader("de", str(root), student_tokenizer=root / "student-tokenizer", max_length=32,
                       class_names=CLASSES, device=torch.device("cpu"))()
    with pytest.raises(ConfigError, match=r"teacher has 3 classes .* the task 2"):
        teacher_loader("de", teachers["de"], student_tokenizer=root / "student-tokenizer", max_length=32,
                       class_names=["yes", "no"], device=torch.device("cpu"))()
    method, _ = _method(root, teachers)
    method.on_epoch_start(0, None)
    batch = _batch(tokenizer)
    batch["groups"][3] = "fr"
    with pytest.raises(ValueError, match="training row in language 'fr', which has no branch"):
        method.step(None, batch)


def test_a_row_the_cache_does_not_know_says_to_re_prepare(setup):
    root, teachers, tokenizer = setup
    method, branches = _method(root, teachers)
    method.on_epoch_start(0, None)
    batch = _batch(tokenizer)
    batch["keys"][2] = "xnli-dev-not-in-data-train"
    with pytest.raises(StaleCacheError, match=r"no teacher logits .*re-run xdist prepare") as err:
        method.step(_student(tokenizer, branches), batch)
    assert isinstance(err.value, UserError)
