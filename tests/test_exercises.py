"""The self-grading exercises: each grader passes the package's own implementation, catches
every common slip it knows and names it, and reports the first element that differs."""

import subprocess
import sys
from pathlib import Path

import pytest

from minirlhf.cli import main
from minirlhf.exercises import EXERCISES, grade_file, grade_function, init, stub_path

ROOT = Path(__file__).resolve().parents[1]
SLIPS = [(name, slip) for name, ex in EXERCISES.items() for slip in ex.slips]


def test_the_nine_core_functions_have_an_exercise_and_a_stub():
    assert set(EXERCISES) == {"bradley_terry_loss", "gae", "clipped_surrogate", "dpo_loss", "group_advantages",
                              "kl_k3", "prm_min", "gaussian_logprob", "positive_advantages"}
    for name in EXERCISES:
        text = stub_path(name).read_text()
        assert f"def {name}(" in text and "raise NotImplementedError" in text and "minirlhf grade" in text


@pytest.mark.parametrize("name", list(EXERCISES))
@pytest.mark.parametrize("seed", [0, 1])
def test_the_package_itself_passes(name, seed):
    report = grade_function(EXERCISES[name], EXERCISES[name].reference, seed=seed)
    assert report.passed and "PASS" in report.lines[0], str(report)
    assert "minirlhf." in report.lines[1]  # where the solution is


@pytest.mark.parametrize("name, slip", SLIPS, ids=[f"{n}-{s.name}" for n, s in SLIPS])
def test_each_slip_is_caught_and_named(name, slip):
    report = grade_function(EXERCISES[name], slip.fn)
    text = str(report)
    assert not report.passed and "FAIL" in report.lines[0], text
    named = [line for line in report.lines if "looks like a common slip" in line]
    assert named == [f"  looks like a common slip, {slip.name}: {slip.hint}"], text  # that one, no other
    assert "differs: expected" in text or "has shape" in text


# the slips the issue names, written as a student would write them, graded through `minirlhf grade`
DPO_HEAD = "import torch.nn.functional as F\n\n\ndef dpo_loss(pc, pr, rc, rr, mc, mr, beta):\n"
STUDENT = {
    "beta forgotten": ("dpo_loss", DPO_HEAD + """
    h = ((pc - rc) * mc).sum(-1) - ((pr - rr) * mr).sum(-1)
    return -F.logsigmoid(h)
"""),
    "chosen and rejected swapped": ("dpo_loss", DPO_HEAD + """
    h = ((pr - rr) * mr).sum(-1) - ((pc - rc) * mc).sum(-1)
    return -F.logsigmoid(beta * h)
"""),
    "mean instead of sum over tokens": ("dpo_loss", DPO_HEAD + """
    h = ((pc - rc) * mc).sum(-1) / mc.sum(-1) - ((pr - rr) * mr).sum(-1) / mr.sum(-1)
    return -F.logsigmoid(beta * h)
"""),
    "missing mask": ("dpo_loss", DPO_HEAD + """
    h = (pc - rc).sum(-1) - (pr - rr).sum(-1)
    return -F.logsigmoid(beta * h)
"""),
    "sign flipped": ("dpo_loss", DPO_HEAD + """
    h = ((pc - rc) * mc).sum(-1) - ((pr - rr) * mr).sum(-1)
    return F.logsigmoid(beta * h)
"""),
    "eps forgotten": ("group_advantages", """
def group_advantages(rewards, scale_by_std=True, eps=1e-4):
    centred = rewards - rewards.mean(1, keepdim=True)
    return centred / rewards.std(1, keepdim=True) if scale_by_std else centred
"""),
    "the episode end is not cut": ("gae", """
import torch


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    B, T = rewards.shape
    adv, last = torch.zeros_like(rewards), torch.zeros(B)
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros(B)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    adv = adv * mask
    return adv, (adv + values) * mask
"""),
    "ratio upside down": ("kl_k3", """
import torch


def kl_k3(logp, logp_ref):
    r = torch.exp(logp - logp_ref)
    return r - 1 - torch.log(r)
"""),
}


def _write(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(body)
    return path


@pytest.mark.parametrize("slip", list(STUDENT))
def test_a_student_file_with_a_named_slip(slip, tmp_path, capsys):
    name, body = STUDENT[slip]
    path = _write(tmp_path, name, body)
    assert main(["grade", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{name}: " in out and ": FAIL" in out
    assert f"looks like a common slip, {slip}:" in out, out
    assert "differs: expected" in out


def test_the_first_differing_element_is_named_with_expected_and_got(tmp_path):
    path = _write(tmp_path, "dpo_loss", STUDENT["beta forgotten"][1])
    report = grade_file(path)
    line = report.lines[1]
    assert line.startswith("  case 1 of 3 (B=5, T=8, beta=0.1): element [0] of `loss` differs: expected ")
    expected, got = line.split("expected ")[1].split(", got ")
    assert abs(float(expected) - float(got.split(" ")[0])) > 1e-3


def test_a_right_student_file_passes(tmp_path, capsys):
    path = tmp_path / "kl_k3.py"
    path.write_text("import torch\n\n\ndef kl_k3(logp, logp_ref):\n    log_r = logp_ref - logp\n"
                    "    return torch.exp(log_r) - 1 - log_r\n")
    assert main(["grade", str(path)]) == 0
    assert "kl_k3: " in capsys.readouterr().out


def test_other_mistakes_are_explained(tmp_path):
    cases = {
        "detached": ("def kl_k3(logp, logp_ref):\n    r = (logp_ref - logp).exp()\n"
                     "    return (r - 1 - (logp_ref - logp)).detach()\n", "no gradient flows back"),
        "in place": ("def kl_k3(logp, logp_ref):\n    logp_ref -= logp\n    return logp_ref.exp() - 1 - logp_ref\n",
                     "changed one of its input tensors in place"),
        "raises": ("def kl_k3(logp, logp_ref):\n    return logp.exp() @ logp_ref\n", "raised RuntimeError"),
        "unknown slip": ("def kl_k3(logp, logp_ref):\n    return (logp - logp_ref) ** 4\n", "no common slip matches"),
    }
    for what, (src, message) in cases.items():
        path = tmp_path / what / "kl_k3.py"
        path.parent.mkdir()
        path.write_text(src)
        report = grade_file(path)
        assert not report.passed and message in str(report), (what, str(report))


def test_init_copies_the_stubs_and_keeps_a_students_work(tmp_path, capsys):
    folder = tmp_path / "ex"
    assert main(["exercises", "init", str(folder)]) == 0
    assert sorted(p.stem for p in folder.glob("*.py")) == sorted(EXERCISES)
    (folder / "gae.py").write_text("# my work\n")
    assert init(folder) == []  # nothing overwritten
    assert (folder / "gae.py").read_text() == "# my work\n"
    capsys.readouterr()
    assert main(["grade", str(folder / "dpo_loss.py")]) == 1
    assert "NOT DONE" in capsys.readouterr().out
    assert main(["grade", str(folder)]) == 1  # a folder: every exercise file in it
    out = capsys.readouterr().out
    assert "0 of 9 passed" in out
    assert main(["grade", str(tmp_path / "nope.py")]) == 1
    assert "nope.py: no such file or folder" in capsys.readouterr().err
    (tmp_path / "nope.py").write_text("def nope():\n    pass\n")
    assert main(["grade", str(tmp_path / "nope.py")]) == 1
    assert "no exercise called 'nope'" in capsys.readouterr().err


def test_python_dash_m_minirlhf_exercises(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "minirlhf.exercises", "list"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "dpo_loss" in proc.stdout and len(proc.stdout.splitlines()) == len(EXERCISES)


def test_cli_bad_paths_are_one_line_errors(tmp_path, capsys):
    from minirlhf.cli import main

    assert main(["grade", str(tmp_path / "missing.py")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.py: no such file or folder" in err and "Traceback" not in err
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert main(["exercises", "init", str(a_file)]) == 1
    err = capsys.readouterr().err
    assert "exists and is not a folder" in err and "Traceback" not in err
    assert a_file.read_text() == "mine"    # nothing lost
