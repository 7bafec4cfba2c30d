"""Training: exact resume after a crash, the NaN guard, checkpoints (on a small synthetic graph, where
the semantics are the same and a run takes a second), and the CLI on real YAGO11k."""

from __future__ import annotations

import json

import pytest
import torch

from distkg.cli.main import main
from distkg.config import load_config
from distkg.errors import ConfigError
from distkg.training import trainer
from distkg.training.checkpoint import Checkpoints
from tests.helpers import tiny_dataset

DS = tiny_dataset("interval", n_ent=60, n_facts=600)


def config(**train):
    sets = ["model.name=tadistmult", "model.args.dim=6", "train.batch_size=64", "train.epochs=3",
            "train.progress=false", "eval.progress=false", "train.patience=10"] + [f"train.{k}={v}" for k, v in train.items()]
    return load_config(None, sets)


def run(cfg, out):
    return trainer.train(cfg, out, dataset=DS)


def test_resume_after_crash_gives_the_same_result(tmp_path, monkeypatch):
    straight = run(config(), tmp_path / "a")

    def crash(epoch, step):
        if epoch == 1 and step == 3:
            raise KeyboardInterrupt("simulated crash mid-epoch")

    monkeypatch.setattr(trainer, "_after_step", crash)
    with pytest.raises(KeyboardInterrupt):
        run(config(), tmp_path / "b")
    assert [p.name for p in Checkpoints(tmp_path / "b" / "checkpoints").epochs()] == ["epoch_0001.pt"]
    monkeypatch.setattr(trainer, "_after_step", lambda epoch, step: None)
    resumed = run(config(), tmp_path / "b")
    for key in ("mrr", "mr", "hits@1", "hits@10", "best_epoch", "epochs_run"):
        assert resumed[key] == straight[key], key
    a = torch.load(tmp_path / "a" / "checkpoints" / "best.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "best.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]


def test_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    run(config(epochs=1), tmp_path)
    good = Checkpoints(tmp_path / "checkpoints").latest()
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.1 -> 1e\+38"):  # a run's rate is not changed under it
        run(config(epochs=3, lr=1e38), tmp_path)
    # continued with a larger epoch budget (a safe change), the loss becomes nan in epoch 2, as a
    # far too large rate makes it (the multiplication stands in for that rate)
    real_loss = trainer.batch_loss
    monkeypatch.setattr(trainer, "batch_loss", lambda *args: real_loss(*args) * float("nan"))
    with pytest.raises(trainer.TrainingDiverged, match=r"became (nan|inf).*epoch 2.*epoch_0001\.pt"):
        run(config(epochs=3), tmp_path)
    ck = Checkpoints(tmp_path / "checkpoints")
    assert ck.latest() == good
    state = torch.load(good, weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    monkeypatch.setattr(trainer, "batch_loss", real_loss)
    assert run(config(epochs=3, lr=0.05), tmp_path)["epochs_run"] == 3  # after divergence a lower rate may resume


def test_checkpoints_kept_and_curves_written(tmp_path):
    m = run(config(keep_checkpoints=2, grad_accum=2), tmp_path)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch_0002.pt", "epoch_0003.pt"]
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert m["epochs_run"] == 3 and 0 < m["mrr"] <= 1 and m["protocol"]["filter"] == "time"


def test_sampled_softmax_is_the_cross_entropy_over_the_drawn_candidates(tmp_path):
    """train.loss=sampled_softmax: cross-entropy over the batch's answers and `negatives` entities drawn
    for the batch (issue 29: a step whose cost does not grow with the entities); it learns."""
    import torch.nn.functional as F

    cfg = config(loss="sampled_softmax", negatives=16)
    model = trainer.build_model(cfg, DS)
    q, a = trainer.training_queries(DS.splits["train"], DS.num_relations)
    q, a = q[:32], a[:32]
    got = trainer.batch_loss(cfg, model, q, a, torch.Generator().manual_seed(5))
    neg = torch.randint(0, DS.num_entities, (16,), generator=torch.Generator().manual_seed(5))
    cands = torch.unique(torch.cat([a, neg]))
    want = F.cross_entropy(model(q)[:, cands], torch.searchsorted(cands, a)) + model.regularizer(q, a)
    torch.testing.assert_close(got, want)
    m = run(config(loss="sampled_softmax", negatives=16, epochs=3), tmp_path)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"] and m["mrr"] > 0


def test_sampling_correction_is_each_entitys_chance_to_be_a_candidate():
    """The sampled softmax's logQ correction: exp(log_q) is how often an entity is among a batch's candidates
    (objective.sampled_candidates over batches cut from a shuffled epoch), checked by drawing them."""
    from distkg.training.objective import sampled_candidates

    cfg = config(loss="sampled_softmax", negatives=6, batch_size=16)
    assert trainer.sampling_log_q(config(loss="1vsall"), DS) is None
    pi = trainer.sampling_log_q(cfg, DS).exp()
    _, answers = trainer.training_queries(DS.splits["train"], DS.num_relations)
    gen, seen, trials = torch.Generator().manual_seed(0), torch.zeros(DS.num_entities), 4000
    for _ in range(trials):
        batch = answers[torch.randperm(len(answers), generator=gen)[:16]]
        seen[sampled_candidates(batch, DS.num_entities, 6, gen)[0]] += 1
    assert pi.max() > 2 * pi.min()  # frequent answers are there more often than rare ones
    torch.testing.assert_close(seen / trials, pi, atol=0.03, rtol=0)


@pytest.mark.parametrize("name", ["tadistmult", "ttranse", "tntcomplex"])
def test_sparse_entity_rows_step_as_the_dense_gradient_does(name):
    """With a sampled loss a step's gradient reaches the entity rows it read only, as a sparse
    gradient (trainer.sparse_rows): Adagrad's update must equal the dense step's, and every other
    row of the table and of its accumulator must stay untouched, also after a second step."""
    cfg = load_config(None, [f"model.name={name}", "model.args.dim=6", "train.loss=sampled_softmax", "train.negatives=8"])
    assert trainer.sparse_rows(cfg) and not trainer.sparse_rows(load_config(None, ["train.loss=1vsall"]))
    q, a = trainer.training_queries(DS.splits["train"], DS.num_relations)
    models, opts = [], []
    for sparse in (False, True):
        m = trainer.build_model(cfg, DS)
        if sparse:
            assert m.sparse_entities()
        models.append(m)
        opts.append(trainer.make_optimizer(cfg, list(m.parameters())))
    before = models[1].ent.weight.detach().clone()
    for step in range(2):
        for m, opt in zip(models, opts):
            trainer.batch_loss(cfg, m, q[step * 16: (step + 1) * 16], a[step * 16: (step + 1) * 16],
                               torch.Generator().manual_seed(step)).backward()
            opt.step()
            opt.zero_grad()
        assert models[1].ent.weight.grad is None or models[1].ent.weight.grad.is_sparse
    for (k, dense), sparse in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)  # float rounding of the two updates
    moved = (models[1].ent.weight.detach() != before).any(1)
    assert 0 < int(moved.sum()) < DS.num_entities  # a sparse step touched some rows, not all
    state = opts[1].state[models[1].ent.weight]["sum"]
    assert torch.equal(state[~moved], torch.zeros_like(state[~moved]))


def test_cli_train_then_evaluate_run(data_root, tmp_path):
    out = tmp_path / "run"
    args = ["--out", str(out), "--set", f"data.root={data_root}", "--set", "model.name=ttranse", "--set", "model.args.dim=6",
            "--set", "train.epochs=1", "--set", "train.batch_size=4000", "--set", "train.progress=false"]
    assert main(["train", *args]) == 0
    trained = json.loads((out / "metrics.json").read_text())
    assert set(trained["splits"]) == {"valid", "test"} and trained["split"] == "test"
    assert main(["evaluate", "--run", str(out), "--set", "eval.splits=[test]"]) == 0
    rescored = json.loads((out / "rescore" / "metrics.json").read_text())
    assert rescored["mrr"] == pytest.approx(trained["mrr"], abs=1e-9)
    # eval.splits is honoured by train as by evaluate (it was ignored: train always scored test alone)
    assert main(["train", *args, "--out", str(tmp_path / "valid-only"), "--set", "eval.splits=[valid]"]) == 0
    valid_only = json.loads((tmp_path / "valid-only" / "metrics.json").read_text())
    assert list(valid_only["splits"]) == ["valid"] and valid_only["split"] == "valid"
    assert valid_only["mrr"] == pytest.approx(trained["splits"]["valid"]["mrr"], abs=1e-9)
    assert main(["train", *args, "--set", "train.epoks=2"]) == 2  # a typo is rejected by name


def test_progress_bar_counts_steps_and_keeps_to_its_interval(tmp_path, capsys):
    """The bar is redrawn at most every 2 s with the current step, not once per step with step 0 (a
    refreshing set_postfix did that: log files grew by a line per step, each showing 0/N)."""
    cfg = config(epochs=1, batch_size=8, progress=True)
    run(cfg, tmp_path)
    frames = [f for f in capsys.readouterr().err.split("\r") if "loss=" in f]
    n_steps = -(-len(DS.splits["train"]) * 2 // 8)
    assert n_steps > 50
    assert len(frames) < n_steps // 2, f"{len(frames)} bar frames for {n_steps} steps"
    assert not [f for f in frames if f" 0/{n_steps} " in f]


def test_gradient_accumulation_equals_the_large_batch_with_an_uneven_last_step(tmp_path, monkeypatch):
    """grad_accum=2 of B queries against one batch of 2B, where an epoch's last step is B + r queries
    (r < B): each micro-loss is weighted by its size (trainer.micro_weights), so every step's gradient
    is the large batch's. Accelerate's accumulation divided each by 2 (relative L2 5.2e-3 there)."""
    n = 2 * len(DS.splits["train"])
    size = next(b for b in range(40, n) if n % (2 * b) > b)  # the last step: a full micro-batch and a short one
    grads: dict[str, list[torch.Tensor]] = {}
    real = trainer.make_optimizer

    def recording(name):
        def make(cfg, params):
            optimizer = real(cfg, params)
            step = optimizer.step

            def record(*args, **kwargs):
                grads.setdefault(name, []).append(
                    torch.cat([p.grad.reshape(-1).clone() for g in optimizer.param_groups for p in g["params"]]))
                return step(*args, **kwargs)

            optimizer.step = record
            return optimizer
        return make

    for name, sets in {"large": {"batch_size": 2 * size}, "accumulated": {"batch_size": size, "grad_accum": 2}}.items():
        monkeypatch.setattr(trainer, "make_optimizer", recording(name))
        run(config(epochs=2, **sets), tmp_path / name)
    large, accumulated = grads["large"], grads["accumulated"]
    assert len(large) == len(accumulated) == 2 * -(-n // (2 * size))  # one step per group, the epoch's last included
    worst = max(float((a - b).norm() / b.norm()) for a, b in zip(accumulated, large))
    assert worst <= 1e-5, worst


def test_micro_weights_make_the_mean_over_a_step_and_its_ranks():
    # 2 ranks, accum 2, micro-batches of 5, 5, 3 queries: rank shares 3+2, 3+2, 2+1
    weights = trainer.micro_weights([5, 5, 3], [3, 3, 2], accum=2, world=2)
    assert weights == pytest.approx([3 * 2 / 10, 3 * 2 / 10, 2 * 2 / 3])
    assert trainer.micro_weights([5, 5, 3], [5, 5, 3], accum=1, world=1) is None


def test_training_does_not_import_deepspeed(tmp_path):
    """Only the paths that use DeepSpeed import it (0.4-0.5 s a process): not plain training, whose
    Accelerate unwrap_model imported it to check for its engine."""
    import subprocess
    import sys

    script = ("import sys; from pathlib import Path; from distkg.training import trainer; from tests.helpers import tiny_dataset; "
              "from tests.training.test_trainer import config; "
              f"trainer.train(config(epochs=1), Path({str(tmp_path)!r}), dataset=tiny_dataset('interval', n_ent=60, n_facts=600)); "
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'deepspeed'))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
