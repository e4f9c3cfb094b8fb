"""Probes fit with scikit-learn reach sklearn's optimum; k-fold CV keeps pairs together; bad labels and texts
raise clear errors; labelled sets are written atomically."""

import json

import numpy as np
import pytest
import torch

from avec.data import labelled as Ld
from avec.probes.linear import (_standardise, cv_folds, find_groups, fit_logistic, fit_probes, logistic_objective,
                                split)


def _data(seed=0, n=240, d=40, L=2, classes=2, strength=1.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, d, generator=g) * strength
    x = torch.randn(L, n, d, generator=g) * (1 + torch.rand(d, generator=g) * 3) + 5 * torch.randn(d, generator=g)
    x[0] += centres[y]
    return x, y


# -- the fit is scikit-learn's, at its optimum --------------------------------------------------------

@pytest.mark.parametrize("classes", [2, 3])
def test_logistic_reaches_sklearns_optimum_and_accuracy(classes):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _data(classes=classes)
    l2 = 1e-2
    r = fit_probes(x, y, l2=l2, seed=3)
    tr, te = split(y, 0.25, 3)
    n = len(tr)
    # same objective value as a very tight sklearn fit, and a (near) zero gradient there
    xd = x.double()
    mu, sd = _standardise(xd[:, tr])
    z = (xd[:, tr] - mu) / sd
    W, b = fit_logistic(z, y[tr], classes, l2)
    ours = logistic_objective(z, y[tr], W, b, l2)
    for i in range(x.shape[0]):
        m = LogisticRegression(C=1 / (n * l2), tol=1e-12, max_iter=100000).fit(z[i].numpy(), y[tr].numpy())
        Ws = torch.tensor(m.coef_).T
        best = logistic_objective(z[i:i + 1], y[tr], Ws[None].double(), torch.tensor(m.intercept_)[None].double(), l2)
        assert float(ours[i]) == pytest.approx(float(best), abs=1e-9), (i, float(ours[i]), float(best))
    Wg = W.clone().requires_grad_(True)
    bg = b.clone().requires_grad_(True)
    with torch.enable_grad():
        logistic_objective(z, y[tr], Wg, bg, l2).sum().backward()
    assert float(Wg.grad.abs().max()) < 1e-5 and float(bg.grad.abs().max()) < 1e-5
    # and the reported accuracy is that of sklearn's standardise + logistic pipeline on the same split
    for i in range(x.shape[0]):
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=1 / (n * l2), tol=1e-10, max_iter=100000))
        pipe.fit(x[i, tr].numpy(), y[tr].numpy())
        assert float(r.test_score[i]) == pytest.approx(pipe.score(x[i, te].numpy(), y[te].numpy()), abs=1e-6)
        assert torch.equal(r.predict(x[i, te], i), torch.as_tensor(pipe.predict(x[i, te].numpy())))


def test_ridge_is_sklearns_ridgecv():
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 200, 30, generator=g)
    v = x[1] @ torch.randn(30, generator=g) + 0.5 * torch.randn(200, generator=g)
    r = fit_probes(x, v + 0.25)  # not whole numbers: continuous
    assert r.kind == "continuous" and r.metric == "R^2"
    tr, te = split(v, 0.25, 0, stratify=False)
    for i in range(2):
        pipe = make_pipeline(StandardScaler(), RidgeCV(alphas=[10.0 ** k for k in range(-2, 6)]))
        pipe.fit(x[i, tr].numpy(), (v[tr] + 0.25).numpy())
        assert float(r.test_score[i]) == pytest.approx(pipe.score(x[i, te].numpy(), (v[te] + 0.25).numpy()), abs=1e-5)
        assert np.allclose(r.predict(x[i, te], i).numpy(), pipe.predict(x[i, te].numpy()), atol=1e-4)


# -- cross-validation, grouped -----------------------------------------------------------------------

def _pairs(n_pairs=120, d=64, seed=0):
    """Pairs of 'statements' (true, false) sharing a strong subject vector and nothing about truth: the honest
    accuracy is 0.5; a split that separates a pair lets the probe memorise the subject and score below chance."""
    g = torch.Generator().manual_seed(seed)
    subject = torch.randn(n_pairs, d, generator=g) * 3
    x = subject.repeat_interleave(2, 0) + 0.3 * torch.randn(2 * n_pairs, d, generator=g)
    y = torch.tensor([1, 0] * n_pairs)
    texts = [f"The capital of Land{i // 2} is {'Town' if i % 2 == 0 else 'Village'}{i // 2}." for i in range(2 * n_pairs)]
    return x[None], y, texts


def test_grouped_cv_keeps_pairs_together_and_reports_in_the_frame():
    x, y, texts = _pairs()
    pair = [i // 2 for i in range(len(y))]
    data = Ld.from_lists(texts, y.tolist(), name="pairs")  # no pair column: pairs are detected from the texts
    groups, source = find_groups(data, "auto", y=y)
    assert source.startswith("detected") and len(set(groups)) == len(set(pair))
    assert all((groups[i] == groups[j]) == (pair[i] == pair[j]) for i in range(0, 40) for j in range(0, 40))

    r = fit_probes(x, data, folds=5)
    assert r.groups.startswith("detected") and len(r.folds) == 5 and r.cv_score.shape == (5, 1)
    covered = np.sort(np.concatenate([te for _, te in r.folds]))
    assert (covered == np.arange(len(y))).all()  # every example tested exactly once
    for tr, te in r.folds:  # no pair on both sides of any fold
        assert {pair[i] for i in tr}.isdisjoint(pair[i] for i in te)
    tr, te = split(y, 0.25, 0, groups=groups)  # the default single split, too
    assert {pair[i] for i in tr.tolist()}.isdisjoint(pair[i] for i in te.tolist())
    assert abs(float(r.cv_mean[0]) - 0.5) < 0.12, r.cv_score

    leaky = fit_probes(x, y, folds=5)  # plain tensors and no groups: pairs land on both sides
    assert leaky.groups.startswith("none")
    assert any(not {pair[i] for i in tr}.isdisjoint(pair[i] for i in te) for tr, te in leaky.folds)
    assert float(leaky.cv_mean[0]) < 0.3, leaky.cv_score  # memorised subjects score below chance

    declared = fit_probes(x, y, folds=4, groups=pair)
    assert declared.groups == "given"
    for tr, te in declared.folds:
        assert {pair[i] for i in tr}.isdisjoint(pair[i] for i in te)

    frame = r.to_frame()
    assert {"cv5 accuracy mean", "cv5 accuracy std", "cv5 mean-diff baseline mean"} <= set(frame.columns)
    assert frame["cv5 accuracy mean"].iloc[0] == pytest.approx(float(r.cv_mean[0]))
    assert r.best_layer == 0 and r.score is not None
    r.plot()


def test_bundled_truth_sets_group_by_subject_and_cv_errors():
    d = Ld.load("truth/capitals")
    y = torch.tensor(d.labels)
    groups, source = find_groups(d, "auto", y=y)
    assert source == "column 'subject'"
    for tr, te in cv_folds(y, 5, 0, groups):
        assert {groups[i] for i in tr}.isdisjoint(groups[i] for i in te)
    keys = [i // 3 for i in range(60)]  # continuous targets: GroupKFold, groups shuffled by the seed
    folds = cv_folds(torch.randn(60, dtype=torch.float64), 4, 0, keys)
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(60))
    assert all({keys[i] for i in tr}.isdisjoint(keys[i] for i in te) for tr, te in folds)
    with pytest.raises(ValueError, match="folds must be a whole number >= 2"):
        cv_folds(y, 1)
    with pytest.raises(ValueError, match="3 groups are too few for 5 folds"):
        cv_folds(torch.tensor([0, 1] * 3), 5, groups=[0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="fewer examples than the 5 folds"):
        cv_folds(torch.tensor([0] * 20 + [1] * 3), 5)
    with pytest.raises(ValueError, match="3 group keys for 4 examples"):
        fit_probes(torch.randn(4, 3), [0, 1, 0, 1], groups=[1, 2, 3])


# -- labels and texts -----------------------------------------------------------------------------------

def test_label_kinds_are_inferred_by_the_documented_rule():
    x, y = _data(n=120)
    r = fit_probes(x, (2 * y - 1).tolist())  # -1/+1
    assert r.kind == "binary" and r.metric == "accuracy" and r.classes == ("-1", "1")
    assert float(r.test_score[0]) > 0.8
    r = fit_probes(x, np.asarray(y.numpy(), dtype=bool))  # numpy booleans
    assert r.kind == "binary" and r.classes == ("False", "True")
    r = fit_probes(x, list(np.asarray(y.numpy(), dtype=bool)))  # np.bool_ scalars in a list
    assert r.kind == "binary"
    r = fit_probes(x, y.double())  # 0.0 / 1.0 floats are whole: classes
    assert r.kind == "binary"
    x3, y3 = _data(classes=3, n=150)
    r = fit_probes(x3, y3.numpy().astype(np.int32))  # ints 0/1/2
    assert r.kind == "multiclass" and r.classes == ("0", "1", "2")
    r = fit_probes(x3, (y3 * 10 + 5).tolist())  # 5/15/25: classes named by value
    assert r.kind == "multiclass" and r.classes == ("5", "15", "25")
    r = fit_probes(x3, ["cat", "dog", "eel"] * 50)
    assert r.kind == "multiclass" and r.classes == ("cat", "dog", "eel")
    r = fit_probes(x, y.double() + 0.5 * torch.rand(120))  # not whole: continuous
    assert r.kind == "continuous" and r.metric == "R^2"
    r = fit_probes(x, y, kind="continuous")  # forced
    assert r.kind == "continuous"
    # the same rule when building a Labelled set
    assert Ld.from_lists(["a", "b", "c"], [-1, 1, 1]).kind == "binary"
    m = Ld.from_lists(["a", "b", "c", "d"], [0, 1, 2, 1])
    assert m.kind == "multiclass" and m.classes == ("0", "1", "2") and m.labels == (0, 1, 2, 1)
    m = Ld.from_lists(["a", "b", "c"], np.array([3, 1, 2]))
    assert m.classes == ("1", "2", "3") and m.labels == (2, 0, 1)  # values, not indices
    assert Ld.from_lists(["a", "b"], np.array([True, False])).labels == (1, 0)
    assert Ld.from_lists(["a", "b", "c"], [0.5, 1.0, 2.0]).kind == "continuous"


def test_bad_labels_and_texts_raise_clearly():
    x, y = _data(n=60)
    with pytest.raises(ValueError, match=r"kind must be one of binary, multiclass, continuous.*'bogus'"):
        fit_probes(x, y, kind="bogus")
    with pytest.raises(ValueError, match="kind must be one of binary, multiclass, continuous"):
        Ld.from_lists(["a", "b"], [0, 1], kind="weird")
    with pytest.raises(ValueError, match="all 60 labels are 1: a probe needs at least two classes"):
        fit_probes(x, [1] * 60)
    with pytest.raises(ValueError, match="every label is 2.5: nothing to regress"):
        fit_probes(x, [2.5] * 60)
    with pytest.raises(ValueError, match="60 activations but 59 labels"):
        fit_probes(x, y[:59])
    with pytest.raises(ValueError, match=r"missing \(None\) or NaN at row\(s\) \[4\]"):
        fit_probes(x, [None if i == 4 else 1 for i in range(60)])
    with pytest.raises(ValueError, match=r"inf at row\(s\) \[2\]"):
        fit_probes(x, [float("inf") if i == 2 else i * 0.5 for i in range(60)])
    with pytest.raises(ValueError, match=r"labels mix types.*row\(s\) \[1\]"):
        fit_probes(x, [0, "a"] + [1] * 58)
    with pytest.raises(ValueError, match=r"multiclass labels must be whole numbers.*row\(s\) \[0\]"):
        fit_probes(x, [0.5] + [1.0, 2.0] * 29 + [3.0], kind="multiclass")
    with pytest.raises(ValueError, match=r"text\(s\) at row\(s\) \[1\] are not non-empty strings: \[None\]"):
        from avec.probes.linear import probe

        probe(None, ["fine", None, "ok"], labels=[0, 1, 0])  # raised before the model is touched
    with pytest.raises(ValueError, match=r"text\(s\) at row\(s\) \[0, 2\] are not non-empty strings"):
        probe(None, [3, "b", ""], labels=[0, 1, 0])
    with pytest.raises(ValueError, match="3 texts but 2 labels"):
        probe(None, ["a", "b", "c"], labels=[0, 1])
    with pytest.raises(ValueError, match=r"row\(s\) \[1\] are None, not strings, or empty: \[None\]"):
        Ld.from_lists(["a", None], [0, 1])
    with pytest.raises(ValueError, match=r"row\(s\) \[0\] are None, not strings, or empty: \[12\]"):
        Ld.from_lists([12, "b"], [0, 1])
    with pytest.raises(ValueError, match="binary labels take two values, got 3"):
        Ld.from_lists(["a", "b", "c"], [0, 1, 2], kind="binary")


def test_cli_rejects_a_bad_kind_and_folds_before_loading_the_model(monkeypatch):
    from typer.testing import CliRunner

    import avec.models
    from avec.app.cli import app

    def no_load(*a, **k):
        raise AssertionError("the model must not be loaded for bad arguments")

    monkeypatch.setattr(avec.models, "load", no_load)
    out = CliRunner().invoke(app, ["probe", "truth/capitals", "--kind", "weird"])
    assert out.exit_code == 2, out.output
    text = " ".join(out.output.replace("│", " ").split())
    assert "'weird' is not a kind" in text and "binary, multiclass, continuous" in text
    out = CliRunner().invoke(app, ["probe", "truth/capitals", "--folds", "1"])
    assert out.exit_code == 2 and "folds must be 0" in " ".join(out.output.replace("│", " ").split())
    out = CliRunner().invoke(app, ["probe", "truth/capitals", "--groups", "nope"])
    assert out.exit_code == 2 and "no column 'nope'" in " ".join(out.output.replace("│", " ").split())


def test_cli_probe_prints_cross_validated_scores(monkeypatch, smollm2):
    from typer.testing import CliRunner

    import avec.models
    from avec.app.cli import app

    monkeypatch.setattr(avec.models, "load", lambda *a, **k: smollm2)
    out = CliRunner().invoke(app, ["probe", "truth/capitals", "--limit", "48", "--layers", "0,12", "--folds", "3"])
    assert out.exit_code == 0, out.output
    assert "3-fold CV accuracy" in out.output and "groups: column 'subject'" in out.output
    assert "cv3 accuracy mean" in out.output and "cv3 accuracy std" in out.output


# -- atomic writes ------------------------------------------------------------------------------------

def test_failed_writes_leave_the_old_file_byte_identical(tmp_path, monkeypatch):
    good = Ld.from_lists(["a", "b", "c"], [0, 1, 0], extra={"note": ["x", "y", "z"]})
    p = tmp_path / "set.jsonl"
    Ld.to_jsonl(good, p)
    before = p.read_bytes()
    bad = Ld.from_lists(["d", "e", "f"], [1, 0, 1], extra={"note": ["ok", object(), "ok"]})  # row 1 is not JSON
    with pytest.raises(ValueError, match="row 1 cannot be written as JSON"):
        Ld.to_jsonl(bad, p)
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["set.jsonl"]  # no temporary file left behind
    assert Ld.from_jsonl(p).texts == ("a", "b", "c")

    c = tmp_path / "set.csv"
    Ld.to_csv(good, c)
    before = c.read_bytes()
    import pandas as pd

    real = pd.DataFrame.to_csv

    def half_then_fail(self, path, *a, **k):
        real(self.iloc[:1], path, *a, **k)  # part of the file is written ...
        raise OSError("disk full")  # ... then the write fails

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        Ld.to_csv(bad, c)
    monkeypatch.undo()
    assert c.read_bytes() == before and sorted(f.name for f in tmp_path.iterdir()) == ["set.csv", "set.jsonl"]
    assert json.loads(p.read_text().splitlines()[0])["note"] == "x"
