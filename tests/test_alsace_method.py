"""ALSACE's method on a real (tiny, random-init) transformers model: pair samples, one stacked forward,
the loss of the two sides, and that optimising it pulls the two languages' distributions together."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xdist.data.parallel import PairError, pair_sample, stack_pair_batch
from xdist.methods.alsace.config import AlsaceConfig
from xdist.methods.alsace.loss import PairLossOptions, pair_loss
from xdist.methods.alsace.method import Alsace

LENGTH = 12


def tiny_classifier(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    # Large initial weights, so that different inputs give clearly different class distributions.
    config = BertConfig(vocab_size=97, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=3,
                        initializer_range=0.5)  # fmt: skip
    return BertForSequenceClassification(config)


def features(rng, label: int) -> dict[str, np.ndarray]:
    length = int(rng.integers(4, LENGTH + 1))
    ids = np.zeros(LENGTH, dtype=np.int64)
    ids[:length] = rng.integers(1, 97, length)
    mask = (ids != 0).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "labels": np.asarray(label, dtype=np.int64)}


def classifier_logits(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def collate(samples):
    return {name: torch.from_numpy(np.stack([s[name] for s in samples])) for name in samples[0]}


def test_pair_samples_stack_first_sides_then_second_sides():
    rng = np.random.default_rng(0)
    sides = [(features(rng, 1), features(rng, 2)) for _ in range(3)]
    samples = [pair_sample(a, b, keep_labels=(True, False)) for a, b in sides]
    assert samples[0]["input_ids"].shape == (2, LENGTH) and samples[0]["labels"].tolist() == [1, -100]
    stacked = stack_pair_batch(collate(samples))
    for i, (a, b) in enumerate(sides):
        assert np.array_equal(stacked["input_ids"][i].numpy(), a["input_ids"])
        assert np.array_equal(stacked["input_ids"][3 + i].numpy(), b["input_ids"])
    assert stacked["labels"].tolist() == [1, 1, 1, -100, -100, -100]
    numpy_stacked = stack_pair_batch({k: v.numpy() for k, v in collate(samples).items()})
    assert np.array_equal(numpy_stacked["input_ids"], stacked["input_ids"].numpy())
    with pytest.raises(PairError, match="padded to one length"):
        pair_sample({"input_ids": np.zeros(3)}, {"input_ids": np.zeros(4)})
    with pytest.raises(PairError, match="needs \\[B, 2, ...\\]"):
        stack_pair_batch({"input_ids": torch.zeros(4, LENGTH)})


def test_one_stacked_forward_gives_the_loss_of_both_sides():
    rng = np.random.default_rng(1)
    model = tiny_classifier().eval()  # no dropout: the separate forwards below must match
    batch = collate([pair_sample(*(features(rng, 0), features(rng, 0))) for _ in range(5)])
    rows_seen = []
    hook = model.bert.embeddings.register_forward_hook(lambda module, args, out: rows_seen.append(out.shape[0]))
    method = Alsace(cfg=AlsaceConfig(), logits=classifier_logits)
    output = method.step(model, batch)
    hook.remove()
    assert rows_seen == [10]  # one forward of the 2B stacked rows
    with torch.no_grad():
        first = classifier_logits(model, {k: v[:, 0] for k, v in batch.items()})
        second = classifier_logits(model, {k: v[:, 1] for k, v in batch.items()})
    expected = pair_loss(torch.cat([first, second]), PairLossOptions())
    torch.testing.assert_close(output.loss.detach(), expected.loss, rtol=1e-5, atol=1e-7)
    assert set(output.logs) == {"loss/kd"}


@pytest.mark.parametrize("direction", ["code", "teacher_to_student"])
def test_optimising_the_loss_pulls_the_languages_together(direction):
    rng = np.random.default_rng(2)
    model = tiny_classifier(seed=3)
    model.train()
    batch = collate([pair_sample(features(rng, 0), features(rng, 0)) for _ in range(8)])
    method = Alsace(cfg=AlsaceConfig(direction=direction), logits=classifier_logits)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    def kl() -> float:
        model.eval()
        with torch.no_grad():
            value = pair_loss(classifier_logits(model, stack_pair_batch(batch))).loss.item()
        model.train()
        return value

    before = kl()
    assert before > 1e-2
    for _ in range(15):
        optimizer.zero_grad()
        method.step(model, batch).loss.backward()
        optimizer.step()
    assert kl() < 0.5 * before, (before, kl())


def test_probabilities_votes_file_and_selection_outputs(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from xdist.distributed import DistEnv
    from xdist.methods.alsace.selection import select_teachers
    from xdist.methods.alsace.vote import predict_probabilities, read_votes, write_selection_outputs
    from xdist.monitor import Monitor

    rng = np.random.default_rng(4)
    model = tiny_classifier(seed=5).eval()
    languages = ["en", "de", "sw"]
    features_by_lang = {lang: [features(rng, 0) for _ in range(7)] for lang in languages}
    dist = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    probs = predict_probabilities(model, classifier_logits, features_by_lang, batch_size=4, dist=dist)
    assert probs.shape == (3, 7, 3)
    with torch.no_grad():
        direct = torch.softmax(classifier_logits(model, collate(features_by_lang["de"])).double(), -1).numpy()
    np.testing.assert_allclose(probs[1], direct, rtol=1e-6)
    instances = [f"xnli:{i}" for i in range(7)]
    selection = select_teachers(languages, probs, comparison=">=")
    monitor = Monitor(tmp_path, enabled=True)
    files = write_selection_outputs(selection, probs, instances, tmp_path / "selection", monitor=monitor)
    monitor.close()
    votes, langs, ids = read_votes(files["votes"])
    assert langs == languages and ids == instances and np.array_equal(votes, probs)
    # The report is consistent with the recorded predictions: recomputing from votes.npz gives it back.
    assert select_teachers(langs, votes, comparison=">=").to_dict() == selection.to_dict()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert "select/xi" in events.Tags()["scalars"] and "select/S" in events.Tags()["images"]
    assert events.Scalars("select/R/de")[0].value == pytest.approx(selection.vote["per_language"]["de"]["R"])
