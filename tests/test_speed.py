"""`python -m bench speed` and the implementations it times beside the suite's.

The naive implementations (bench/naive.py) and learn2learn's MAML (bench/peers.py) must
compute the suite's maths on the same episodes, or the speed table would compare
different algorithms: their updates are checked against `algorithms/` here, in float64.
learn2learn is optional: its tests skip without it (scripts/install_learn2learn.sh)."""

import csv
import time

import pytest
import torch

from algorithms import ALGORITHMS, inner_optimizer
from bench import naive, speed
from bench.cli import main
from bench.config import load_config
from bench.episodes import Episode
from bench.models import build_model, task_loss
from bench.peers import learn2learn_version
from bench.runner import train_episodes
from conftest import BEFORE_NORM

CPU = torch.device("cpu")
COLUMNS = ["algo", "implementation", "device", "preset", "task", "ways", "shots", "train_shots", "query_shots",
           "tail", "inner_optimizer", "inner_lr", "inner_steps", "inner_batch", "inner_state", "meta_batch",
           "meta_optimizer", "meta_lr", "threads", "torch", "timed_iters", "ms_per_meta_iter", "first_call_s",
           "peak_mem_mb", "gflop", "gflop_per_s", "matmul_gflop_per_s", "matmul_form", "speedup_vs_naive",
           "speedup_vs_naive_ci95_low", "speedup_vs_naive_ci95_high",
           "speedup_vs_learn2learn", "speedup_vs_learn2learn_ci95_low", "speedup_vs_learn2learn_ci95_high"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: more threads only add synchronisation, which on a shared 2-core machine
    costs 5-10x. (The CLI's --threads sets its own and restores this one.)"""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def setup(preset, algo, **settings):
    """cfg, a model (seed 0) and one meta-batch of random episodes in the default dtype."""
    cfg = load_config(preset, algo=algo).replace(**settings)
    episodes = train_episodes(speed._sampler(cfg, CPU), cfg, algo)
    dtype = torch.get_default_dtype()
    episodes = Episode(*(t.to(dtype) if t.is_floating_point() else t for t in episodes._tensors()))
    torch.manual_seed(0)
    return cfg, build_model(cfg), episodes


def suite_step(algo, cfg, model, episodes):
    """The suite's meta-step on a copy of the model's parameters (as the runner calls it)."""
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    with torch.no_grad():
        step = ALGORITHMS[algo](task_loss(model, cfg), params, inner_optimizer(cfg).init(params), episodes, cfg)
    return params, step


def worst(a, b):
    return max(float((a[k] - b[k]).detach().abs().max()) for k in a)


@pytest.mark.parametrize("batched", [False, True])
def test_naive_reptile_makes_the_suites_update(float64, batched):
    # A fresh optimizer per task is the suite's inner_state="reset"; the preset's "carry"
    # runs the same operations on other numbers.
    cfg, model, episodes = setup("omniglot-5w1s", "reptile", inner_state="reset", meta_batch=3, inner_steps=3,
                                 batched=batched)
    params, step = suite_step("reptile", cfg, model, episodes)
    ours = {k: p - cfg.meta_lr * step.grad[k] for k, p in params.items()}  # the outer SGD step
    naive.reptile(model, episodes, cfg, cfg.meta_lr)
    theirs = dict(model.named_parameters())
    # The conv biases before batch norm have an exact gradient of 0: what Adam makes of the
    # two implementations' rounding noise (~1e-17 over eps 1e-8) moves them by ~1e-10, alike.
    assert worst({k: v for k, v in ours.items() if k not in BEFORE_NORM}, theirs) <= 1e-12
    assert worst({k: ours[k] for k in BEFORE_NORM}, params) <= 1e-8
    assert worst({k: theirs[k] for k in BEFORE_NORM}, params) <= 1e-8


@pytest.mark.parametrize("batched", [False, True])
def test_naive_joint_makes_the_suites_update(float64, batched):
    cfg, model, episodes = setup("omniglot-5w1s", "joint", meta_batch=3, batched=batched)
    params, step = suite_step("joint", cfg, model, episodes)
    ours = {k: p - cfg.meta_lr * step.grad[k] for k, p in params.items()}
    naive.joint(model, episodes, cfg, cfg.meta_lr)
    assert worst(ours, dict(model.named_parameters())) <= 1e-10


@pytest.mark.parametrize("algo", ["maml", "fomaml"])
@pytest.mark.parametrize("batched", [False, True])
def test_naive_maml_computes_the_suites_meta_gradient(float64, algo, batched):
    # Two adaptation steps (inner_steps counts the query), so second-order terms matter.
    cfg, model, episodes = setup("omniglot-5w1s-maml", algo, meta_batch=3, inner_steps=3, batched=batched)
    _, step = suite_step(algo, cfg, model, episodes)
    getattr(naive, algo)(model, torch.optim.SGD(model.parameters(), lr=0.0), episodes, cfg)
    theirs = {k: cfg.inner_lr * p.grad for k, p in model.named_parameters()}  # the suite's scale
    assert worst(step.grad, theirs) <= 1e-10


def test_maml_and_fomaml_meta_gradients_differ():
    # The equality above would not tell the two apart if the second-order terms vanished.
    cfg, model, episodes = setup("omniglot-5w1s-maml", "maml", meta_batch=2, inner_steps=3)
    _, second = suite_step("maml", cfg, model, episodes)
    _, first = suite_step("fomaml", cfg, model, episodes)
    assert worst(second.grad, first.grad) > 1e-4


def test_the_public_sine_example_makes_the_suites_reptile_update():
    cfg = load_config("sine", algo="reptile")
    example = naive.SineExample(seed=0, innerstepsize=cfg.inner_lr, outerstepsize0=cfg.meta_lr,
                                niterations=cfg.meta_iters)
    torch.manual_seed(0)
    model = build_model(cfg)  # the same initialisation as the example's
    assert worst(dict(model.named_parameters()), dict(example.model.named_parameters())) == 0

    y_all = example.gen_task()(example.x_all)
    inds = example.rng.permutation(len(example.x_all))
    as_tensor = lambda a: torch.tensor(a, dtype=torch.float32)[None]  # noqa: E731
    episode = Episode(as_tensor(example.x_all), as_tensor(y_all), as_tensor(example.x_all), as_tensor(y_all),
                      torch.from_numpy(inds.reshape(5, 10))[None])
    params, step = suite_step("reptile", cfg, model, episode)
    ours = {k: p - cfg.meta_lr * step.grad[k] for k, p in params.items()}  # iteration 0: outer step 0.1
    example.iteration(0, y_all, inds)
    assert worst(ours, dict(example.model.named_parameters())) <= 1e-6


@pytest.mark.parametrize("algo", ["maml", "fomaml"])
def test_learn2learn_computes_the_suites_meta_gradient(float64, algo):
    pytest.importorskip("learn2learn", reason="learn2learn is not installed: run scripts/install_learn2learn.sh")
    from bench.peers import learn2learn_maml, learn2learn_step

    cfg, model, episodes = setup("omniglot-5w1s-maml", algo, meta_batch=3, inner_steps=3)
    _, step = suite_step(algo, cfg, model, episodes)
    meta = learn2learn_maml(model, cfg, first_order=algo == "fomaml")
    learn2learn_step(meta, torch.optim.SGD(meta.parameters(), lr=0.0), episodes, cfg)
    theirs = {k: cfg.inner_lr * p.grad for k, p in model.named_parameters()}
    assert worst(step.grad, theirs) <= 1e-10


def read(path):
    with open(path) as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_speed_times_every_algorithm_side_by_side(tmp_path, capsys):
    l2l = learn2learn_version()
    out = tmp_path / "speed.csv"
    assert main(["speed", "--quick", "--rounds", "1", "--threads", "1", "--device", "cpu", "--no-compiled",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    header, rows = read(out)
    assert header == COLUMNS
    expected = [(a, p, i) for a, p in [("reptile", "omniglot-5w1s"), ("reptile", "sine"),
                                       ("fomaml", "omniglot-5w1s-maml"), ("maml", "omniglot-5w1s-maml"),
                                       ("joint", "omniglot-5w1s")]
                for i in ["batched", "serial", "channels-last", "matmul", "seeds", "naive", "learn2learn", "passes"]
                if (i != "learn2learn" or (l2l and a in ("maml", "fomaml")))
                and (i not in ("channels-last", "matmul") or p != "sine")
                and (i != "passes" or a != "maml")]
    assert [(r["algo"], r["preset"], r["implementation"]) for r in rows] == expected
    assert ("learn2learn not installed (scripts/install_learn2learn.sh)" in printed) == (l2l is None)
    assert "without intervals: they need 6 rounds or more (--rounds 6)" in printed
    ms = {(r["algo"], r["preset"], r["implementation"]): float(r["ms_per_meta_iter"]) for r in rows}
    for r in rows:
        case = (r["algo"], r["preset"])
        assert r["device"] == "cpu" and r["threads"] == "1" and float(r["ms_per_meta_iter"]) > 0
        assert float(r["peak_mem_mb"]) >= 0 and float(r["first_call_s"]) > 0
        # one round: its ratio, the speed-up, is the ratio of the two rows' medians
        assert float(r["speedup_vs_naive"]) == pytest.approx(ms[(*case, "naive")] / ms[(*case, r["implementation"])],
                                                             rel=0.01, abs=0.01)
        if (*case, "learn2learn") in ms:
            assert float(r["speedup_vs_learn2learn"]) == pytest.approx(
                ms[(*case, "learn2learn")] / ms[(*case, r["implementation"])], rel=0.01, abs=0.01)
        else:
            assert r["speedup_vs_learn2learn"] == ""
        assert all(r[c] == "" for c in COLUMNS if "_ci95_" in c)  # one round: no intervals
        # the case's arithmetic (its naive row's), at this row's rate
        assert float(r["gflop"]) == float(next(s["gflop"] for s in rows if (s["algo"], s["preset"]) == case)) > 0
        assert float(r["gflop_per_s"]) == pytest.approx(float(r["gflop"]) / float(r["ms_per_meta_iter"]) * 1000,
                                                        rel=2e-3)
        assert r["matmul_gflop_per_s"] == rows[0]["matmul_gflop_per_s"] and float(r["matmul_gflop_per_s"]) > 0
        assert r["matmul_form"] == rows[0]["matmul_form"] and f"matrix product as {r['matmul_form']}, " in printed
        # every implementation of a case ran as many meta-iterations: the same episodes
        assert r["timed_iters"] == next(s["timed_iters"] for s in rows if (s["algo"], s["preset"]) == case)
    settings = {(r["algo"], r["preset"]): (r["meta_batch"], r["inner_steps"], r["inner_optimizer"]) for r in rows}
    assert settings[("maml", "omniglot-5w1s-maml")] == ("32", "2", "sgd")  # the MAML paper's
    assert settings[("reptile", "omniglot-5w1s")] == ("5", "5", "adam")  # the Reptile paper's
    assert all(f"| {a} | {p} | {i} |" in printed for a, p, i in expected)
    assert "reptile on omniglot-5w1s 3.93, " in printed and "float32 2048x2048 matrix product as " in printed
    assert ("the faster form here" in printed) == torch.backends.mkldnn.is_available()  # two forms to pick from


def test_the_yardstick_times_the_faster_form_of_one_matrix_product():
    """Every form computes the same product (non-square, so a transposed operand would show);
    the yardstick times the form its trial found fastest, and gives every form's trial rate."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 200, generator=gen), torch.randn(200, 150, generator=gen)
    forms = speed.matmul_forms(a, b)
    assert set(forms) == ({"torch.mm", "1x1 convolution"} if torch.backends.mkldnn.is_available() else {"torch.mm"})
    for form in forms.values():
        torch.testing.assert_close(form(), a @ b, rtol=1e-4, atol=1e-4)
    product, n, rates = speed.yardstick(torch.device("cpu"))
    assert n == 2048 and set(rates) == set(forms) and min(rates.values()) > 0
    assert list(rates.values()) == sorted(rates.values(), reverse=True)  # the timed form first
    # a device with one form (a GPU: torch.mm) is not said to have a faster one
    said = speed._arithmetic_said([{"algo": "reptile", "preset": "sine", "gflop": 0.00126, "matmul_gflop_per_s": 9.0}],
                                  8192, {"torch.mm": 9.0})
    assert "matrix product as torch.mm, 9 GFLOP/s in the rounds" in said and "faster" not in said


def test_the_yardstick_picks_the_faster_form_by_its_trial(monkeypatch):
    """Of two forms, one 20 ms slower per call, the yardstick returns the faster one to time
    and lists it first with the higher rate."""
    calls = []

    def forms(a, b):
        def slow():
            time.sleep(0.02)
            calls.append("slow")

        def fast():
            calls.append("fast")
        return {"slow form": slow, "fast form": fast}

    monkeypatch.setattr(speed, "matmul_forms", forms)
    product, n, rates = speed.yardstick(CPU)
    product()
    assert calls[-1] == "fast" and "slow" in calls  # both were tried
    assert list(rates) == ["fast form", "slow form"] and rates["fast form"] > rates["slow form"] > 0


@pytest.mark.parametrize("algo", ["reptile", "joint"])
def test_arithmetic_counts_every_convolution_and_matrix_product_of_a_meta_iteration(algo):
    """The Omniglot CNN's FLOP per meta-iteration from its shapes: per minibatch of n images,
    each layer's forward product (2 x outputs x its weights' inputs), again for the weights'
    gradient, again for the input's gradient but at the first layer (whose input, the
    images, needs none); per task inner_steps minibatches (joint training: one)."""
    cfg = load_config("omniglot-5w1s", algo=algo)
    n, size, forward = cfg.inner_batch, 28, []
    for in_ch in (1, 64, 64, 64):  # 3x3 convolutions, stride 2, padding 1, 64 filters
        size = (size + 1) // 2
        forward.append(2 * n * size * size * 64 * in_ch * 9)
    forward.append(2 * n * 64 * 2 * 2 * cfg.ways)  # the linear layer
    per_minibatch = 3 * sum(forward) - forward[0]
    minibatches = cfg.meta_batch * (1 if algo == "joint" else cfg.inner_steps)
    counted = speed.arithmetic(speed.build(algo, "omniglot-5w1s", "naive", CPU))
    assert counted * 1e9 == pytest.approx(minibatches * per_minibatch, rel=1e-9)


def test_speed_writes_results_speed_device_csv_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(2)
    assert main(["speed", "--algos", "joint", "--quick", "--rounds", "6", "--threads", "1", "--device", "cpu",
                 "--no-compiled"]) == 0
    assert torch.get_num_threads() == 2  # --threads is the run's, not the caller's
    header, rows = read(tmp_path / "results" / "speed" / "cpu.csv")
    assert header == COLUMNS and [r["implementation"] for r in rows] == ["batched", "serial", "channels-last",
                                                                         "matmul", "seeds", "naive", "passes"]
    printed = capsys.readouterr().out
    assert "wrote results/speed/cpu.csv" in printed and "[their 95% intervals]" in printed
    for r in rows:  # six rounds: each speed-up over the naive row inside its interval
        low, high = float(r["speedup_vs_naive_ci95_low"]), float(r["speedup_vs_naive_ci95_high"])
        assert 0 < low <= float(r["speedup_vs_naive"]) <= high and r["speedup_vs_learn2learn_ci95_low"] == ""
        assert f"{float(r['speedup_vs_naive']):.2f} [{low:.2f}, {high:.2f}]" in printed
    naive = next(r for r in rows if r["implementation"] == "naive")
    assert naive["speedup_vs_naive_ci95_low"] == naive["speedup_vs_naive_ci95_high"] == "1.0"  # itself, every round


def test_a_row_that_fails_is_reported_and_the_others_are_timed(tmp_path, monkeypatch, capsys):
    """A row that cannot be built, or whose first call raises (an implementation a device
    cannot run), is left out of the table with its error, one line; the other rows are
    timed and written, and the command fails."""
    real = speed.build

    def build(algo, preset, impl, device):
        if impl == "seeds":
            raise ValueError("cannot build this row")
        fn = real(algo, preset, impl, device)
        if impl != "matmul":
            return fn

        def failing():
            raise RuntimeError("NYI: no such kernel here\nthe rest of a long message")
        return failing
    monkeypatch.setattr(speed, "build", build)
    out = tmp_path / "speed.csv"
    assert main(["speed", "--algos", "joint", "--quick", "--rounds", "1", "--threads", "1", "--device", "cpu",
                 "--no-compiled", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    _, rows = read(out)
    assert [r["implementation"] for r in rows] == ["batched", "serial", "channels-last", "naive", "passes"]
    assert "not timed: joint on omniglot-5w1s, matmul: RuntimeError: NYI: no such kernel here\n" in printed
    assert "not timed: joint on omniglot-5w1s, seeds: ValueError: cannot build this row\n" in printed
    assert "the rest of a long message" not in printed and "| joint | omniglot-5w1s | naive |" in printed


def test_implementations_picks_the_rows_and_the_naive_row_always_runs(tmp_path):
    out = tmp_path / "speed.csv"
    assert main(["speed", "--algos", "joint", "--implementations", "serial", "--quick", "--rounds", "1",
                 "--threads", "1", "--device", "cpu", "--out", str(out)]) == 0
    _, rows = read(out)
    assert [r["implementation"] for r in rows] == ["serial", "naive"] and rows[0]["speedup_vs_naive"] != ""


def test_profile_lists_each_rows_costliest_operators_per_meta_iteration(tmp_path, capsys):
    from bench.profile import PROFILE_COLUMNS, PROFILE_ITERS, TOP

    out = tmp_path / "profile.csv"
    assert main(["speed", "--profile", "--algos", "joint", "--implementations", "serial,naive", "--threads", "1",
                 "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    header, rows = read(out)
    assert header == list(PROFILE_COLUMNS)
    for impl in ("serial", "naive"):
        mine = [r for r in rows if r["implementation"] == impl]
        assert [int(r["rank"]) for r in mine] == list(range(TOP + 1)) and mine[0]["name"] == "all"
        total, listed = float(mine[0]["ms_per_meta_iter"]), [float(r["ms_per_meta_iter"]) for r in mine[1:]]
        assert total > 0 and listed == sorted(listed, reverse=True) and sum(listed) <= total * 1.001
        assert float(mine[0]["share"]) == 1.0 and all(0 < float(r["share"]) < 1 for r in mine[1:])
        # joint training: one step per task, 5 tasks, the CNN's 4 convolutions each: 20 backward
        # convolutions per meta-iteration
        conv = next(r for r in mine if r["name"] == "aten::convolution_backward")
        assert float(conv["calls_per_meta_iter"]) == 20
        assert f"joint on omniglot-5w1s, {impl}: {float(mine[0]['calls_per_meta_iter']):g} operator calls" in printed
    assert f"{PROFILE_ITERS} meta-iterations under torch.profiler" in printed


def test_speed_bf16_rows_on_request(tmp_path):
    out = tmp_path / "speed.csv"
    assert main(["speed", "--algos", "joint", "--quick", "--rounds", "1", "--threads", "1", "--device", "cpu",
                 "--bf16", "--no-compiled", "--out", str(out)]) == 0
    _, rows = read(out)
    assert [r["implementation"] for r in rows] == ["batched", "serial", "channels-last", "matmul", "bf16", "seeds",
                                                   "naive", "passes"]


def test_rounds_stop_at_the_budget_and_every_implementation_of_a_case_runs_as_often():
    calls = {"a": 0, "b": 0, "c": 0}

    def work(name, seconds):
        def fn():
            calls[name] += 1
            time.sleep(seconds)
        return fn

    combos = {("x", "p", "a"): work("a", 0.001), ("x", "p", "b"): work("b", 0.004), ("y", "p", "c"): work("c", 0.06)}
    timed = speed.time_all(combos, warmup=1, rounds=5)
    ms, counts, done, first = timed.median, timed.count, timed.rounds, timed.first
    assert first[("y", "p", "c")] >= 0.06
    assert all(len(timed.by_round[k]) == 5 for k in combos)  # each round's median
    assert max(timed.by_round[("y", "p", "c")]) >= 0.06 > max(timed.by_round[("x", "p", "a")])
    # ceil(0.05 s / the case's slowest meta-iteration) per round, so the same for a and b
    assert done == 5 and counts[("x", "p", "a")] == counts[("x", "p", "b")] > 5 and counts[("y", "p", "c")] == 5
    assert calls == {"a": counts[("x", "p", "a")] + 1, "b": counts[("x", "p", "b")] + 1, "c": 6}
    assert ms[("x", "p", "a")] < ms[("x", "p", "b")] < ms[("y", "p", "c")]
    assert speed.time_all(combos, warmup=1, rounds=5, budget_s=0.0).rounds == speed.MIN_ROUNDS


def test_speedup_pairs_the_rounds_and_brackets_their_median_ratio():
    # a machine three times busier in some rounds slows both rows of those rounds: paired by
    # round, the ratio is exactly 2 every round, so the interval is the point
    busy = [1.0, 3.0, 1.2, 2.5, 1.0, 1.1]
    assert speed.speedup([0.2 * b for b in busy], [0.1 * b for b in busy]) == (pytest.approx(2.0),
                                                                                 (pytest.approx(2.0),) * 2)
    # the busy spells fall in other rounds for the faster row: the rounds' ratios disagree
    # (0.67 to 6), and the interval says so
    point, (low, high) = speed.speedup([0.2 * b for b in busy], [0.1 * b for b in reversed(busy)])
    assert low < 1 < point < 3 < high
    # a round the machine spoiled for one row only moves the median ratio little
    ratios = [2.0, 2.1, 1.9, 2.05, 1.95, 2.0, 2.0, 9.0]
    point, (low, high) = speed.speedup(ratios, [1.0] * 8)
    assert point == pytest.approx(2.0) and low == pytest.approx(1.9) and high == pytest.approx(9.0)
    # more rounds of the same spread: the interval drops the extreme ratios
    point, (low, high) = speed.speedup(ratios * 2, [1.0] * 16)
    assert point == pytest.approx(2.0) and 1.9 < low < high < 2.2
    # fewer than MIN_CI_ROUNDS rounds: the median ratio, no interval
    assert speed.speedup([2.0, 2.2, 2.4], [1.0, 1.0, 1.0]) == (pytest.approx(2.2), None)
    assert speed.MIN_CI_ROUNDS == 6
    row = {"x": 1.876, "x_ci95_low": 1.7, "x_ci95_high": 2.05}
    assert speed.speedup_text(row, "x") == "1.88 [1.70, 2.05]"
    assert speed.speedup_text({"x": 1.5, "x_ci95_low": "", "x_ci95_high": ""}, "x") == "1.50"
    assert speed.speedup_text({"x": ""}, "x") == "-"


@pytest.mark.parametrize("argv, words", [
    (["--algos", "reptile,nope"], "'nope'"),
    (["--algos", "gradsum"], "reptile, fomaml, maml, joint"),
    (["--algos", ","], "at least one"),
    (["--rounds", "0"], "--rounds"),
    (["--threads", "0"], "--threads"),
    (["--evaluation", "--tasks", "0"], "--tasks"),
    (["--tasks", "10"], "add --evaluation"),
    (["--device", "tpu"], "--device cpu"),
    (["--implementations", "serial,fast"], "'fast'"),
    (["--implementations", ","], "at least one"),
    (["--implementations", "graph", "--device", "cpu"], "no such row of"),
    (["--evaluation", "--profile"], "drop --profile"),
])
def test_bad_speed_arguments_are_one_line_errors(tmp_path, capsys, argv, words):
    assert main(["speed", *argv, "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_speed_on_cuda_without_a_gpu_is_a_one_line_error(tmp_path, capsys):
    assert main(["speed", "--device", "cuda", "--algos", "joint", "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cpu" in err
    assert not (tmp_path / "x.csv").exists()


def test_naive_maml_refuses_an_adam_inner_loop():
    cfg, model, episodes = setup("omniglot-5w1s", "maml", meta_batch=1)
    with pytest.raises(Exception, match="SGD inner loop"):
        naive.maml(model, torch.optim.SGD(model.parameters(), lr=0.0), episodes, cfg)


def test_compiled_rows_by_default_where_the_path_compiles_in_seconds():
    from bench.speed import implementations

    # the CNNs' serial paths compile each inner step, the sine MLP its whole meta-iteration
    # (seconds): compiled rows by default
    assert implementations("reptile", "omniglot-5w1s", False) == [
        "batched", "serial", "channels-last", "matmul", "compiled", "compiled-cl", "seeds", "naive", "passes"]
    assert implementations("reptile", "omniglot-5w1s", False, compiled=False) == [
        "batched", "serial", "channels-last", "matmul", "seeds", "naive", "passes"]
    assert implementations("reptile", "sine", False) == ["batched", "serial", "compiled", "seeds", "naive", "passes"]
    # on CUDA (graph rows): channels-last for the serial paths only, uncompiled
    assert implementations("joint", "omniglot-5w1s", False, graph=True) == [
        "batched", "serial", "channels-last", "matmul", "compiled", "graph", "graph-batched", "compiled-graph",
        "compiled-graph-cl", "compiled-graph-matmul", "seeds", "naive", "passes"]
    assert "compiled-graph-matmul" not in implementations("reptile", "sine", False, graph=True)
    # MAML's batched path compiles its whole meta-iteration (minutes): only with --compiled
    assert implementations("maml", "omniglot-5w1s-maml", False, graph=True) == [
        "batched", "serial", "matmul", "graph", "seeds", "naive"]
    on_cuda = implementations("maml", "omniglot-5w1s-maml", False, compiled=True, graph=True)
    assert on_cuda == ["batched", "serial", "matmul", "compiled", "graph", "compiled-graph", "compiled-graph-matmul",
                       "seeds", "naive"]  # no channels-last on CUDA's batched paths
    assert implementations("maml", "omniglot-5w1s-maml", False, compiled=True) == [
        "batched", "serial", "channels-last", "matmul", "compiled", "compiled-cl", "serial-compiled-cl", "seeds",
        "naive"]
    # on the CPU its serial path, compiled task by task (a minute or two), by default; not with --no-compiled
    assert implementations("maml", "omniglot-5w1s-maml", False) == [
        "batched", "serial", "channels-last", "matmul", "serial-compiled-cl", "seeds", "naive"]
    assert "serial-compiled-cl" not in implementations("fomaml", "omniglot-5w1s-maml", True, compiled=False)


def test_speed_evaluation_times_every_protocol_side_by_side(tmp_path, capsys):
    out = tmp_path / "evaluation.csv"
    assert main(["speed", "--evaluation", "--quick", "--rounds", "1", "--tasks", "2", "--threads", "1",
                 "--device", "cpu", "--no-compiled", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    header, rows = read(out)
    assert header == list(speed.EVAL_COLUMNS)
    expected = [("omniglot-5w1s", i) for i in ("plain", "channels-last", "matmul")]
    expected += [("omniglot-5w1s-maml", i) for i in ("plain", "channels-last", "matmul")] + [("sine", "plain")]
    assert [(r["preset"], r["implementation"]) for r in rows] == expected
    plain = {r["preset"]: float(r["ms_per_task"]) for r in rows if r["implementation"] == "plain"}
    for r in rows:
        assert r["tasks"] == "2" and float(r["ms_per_task"]) > 0
        # as often as the preset's plain row: the same test tasks
        assert r["timed_evals"] == next(s["timed_evals"] for s in rows if s["preset"] == r["preset"])
        assert float(r["speedup_vs_plain"]) == pytest.approx(plain[r["preset"]] / float(r["ms_per_task"]),
                                                             rel=0.01, abs=0.01)
        assert r["speedup_vs_plain_ci95_low"] == r["speedup_vs_plain_ci95_high"] == ""  # one round
        assert f"| {r['preset']} | {r['implementation']} |" in printed
    protocol = {r["preset"]: (r["inner_optimizer"], r["eval_steps"], r["transductive"], r["eval_chunk"]) for r in rows}
    assert protocol == {"omniglot-5w1s": ("adam", "50", "False", "25"),
                        "omniglot-5w1s-maml": ("sgd", "3", "True", "25"), "sine": ("sgd", "32", "False", "1000")}


def test_speed_evaluation_rows():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert speed.eval_implementations("omniglot-5w1s", cpu) == [
        "plain", "channels-last", "matmul", "compiled", "compiled-cl", "compiled-matmul"]
    assert speed.eval_implementations("omniglot-5w1s", cuda, bf16=True) == [
        "plain", "matmul", "bf16", "compiled", "compiled-matmul"]  # channels-last is CPU-only
    assert speed.eval_implementations("sine", cpu, compiled=False) == ["plain"]
