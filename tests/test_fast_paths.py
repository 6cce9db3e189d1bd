"""The speed settings against the plain path: runs trained together (`--seeds ...
--batch-seeds`) against the same runs trained one by one, and `compile = true` against
the plain computation. Both must give the same results within float tolerance."""

import csv
import json

from functools import partial

import pytest
import torch

from bench.cli import main
from conftest import BEFORE_NORM, BEFORE_NORM_STATE, train

SINE = ["--preset", "sine", "--set", "meta_iters=120", "--set", "eval_tasks=50", "--set", "eval_every=40",
        "--set", "eval_every_tasks=20", "--set", "log_every=20", "--set", "snapshots=2"]
# Omniglot: the Reptile preset (serial path, the inner Adam state carried from task to
# task) and the MAML preset (batched over tasks, second order), a few meta-iterations.
OMNIGLOT = ["--set", "meta_iters=4", "--set", "meta_batch=3", "--set", "eval_tasks=10", "--set", "eval_steps=2",
            "--set", "log_every=1", "--set", "eval_every=0", "--set", "snapshots=0"]


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def run(capsys, algo, results, *args):
    assert main(["run", "--algo", algo, "--device", "cpu", "--no-progress", "--results", str(results),
                 "--checkpoint-every", "1", *args]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def metrics(path):
    with open(path / "metrics.csv") as f:
        return [(r["step"], r["split"], r["metric"], float(r["value"])) for r in csv.DictReader(f)]


def assert_same_metrics(a, b, rel, eval_rel=1e-2):
    """Training rows within `rel`; evaluation rows within `eval_rel`: fine-tuning at test
    (the sine preset's 32 SGD steps on a few points of a steep wave) can turn weights that
    agree to 1e-7 into MSEs that differ in the third digit on a few tasks."""
    assert [r[:3] for r in a] == [r[:3] for r in b]
    for x, y in zip(a, b):
        tol = rel if x[1] == "train" else eval_rel
        assert x[3] == pytest.approx(y[3], rel=tol, abs=tol), x


def params(path, skip=()):
    ckpt = torch.load(path / "checkpoint.pt", weights_only=True)
    return {k: v for k, v in ckpt["params"].items() if k not in skip}


def assert_close(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def test_seeds_trained_together_equal_the_seeds_trained_one_by_one(tmp_path, capsys):
    together = run(capsys, "reptile", tmp_path / "together", *SINE, "--seeds", "0-2", "--batch-seeds")
    alone = run(capsys, "reptile", tmp_path / "alone", *SINE, "--seeds", "0-2")
    assert [f["seed"] for f in together] == [f["seed"] for f in alone] == [0, 1, 2]
    assert [f["seeds_together"] for f in together] == [3, 3, 3] and [f["seeds_together"] for f in alone] == [1, 1, 1]
    for seed, a, b in zip(range(3), together, alone):
        ra, rb = (tmp_path / where / "sine" / "reptile" / f"seed{seed}" for where in ("together", "alone"))
        assert a["value"] == pytest.approx(b["value"], rel=1e-2)
        assert_same_metrics(metrics(ra), metrics(rb), rel=1e-4)
        assert_close(params(ra), params(rb), atol=1e-5)
        for snap in sorted((rb / "snapshots").iterdir()):
            assert_close(torch.load(ra / "snapshots" / snap.name, weights_only=True)["params"],
                         torch.load(snap, weights_only=True)["params"], atol=1e-5)
        # the same run: the same config.json, so either way resumes the other
        assert json.loads((ra / "config.json").read_text()) == json.loads((rb / "config.json").read_text())
        assert json.loads((ra / "state.json").read_text())["state"] == "finished"
    # the seeds really differ (a batch of one seed copied three times would pass the above)
    assert len({round(f["value"], 6) for f in together}) == 3


@pytest.mark.parametrize("algo, preset", [("reptile", "omniglot-5w1s"), ("maml", "omniglot-5w1s-maml")])
def test_omniglot_seeds_trained_together_equal_one_by_one(tmp_path, capsys, omniglot_data, algo, preset):
    args = ["--preset", preset, "--data", str(omniglot_data), *OMNIGLOT]
    run(capsys, algo, tmp_path / "together", *args, "--seeds", "0,1", "--batch-seeds")
    run(capsys, algo, tmp_path / "alone", *args, "--seeds", "0,1")
    for seed in (0, 1):
        ra, rb = (tmp_path / where / preset / algo / f"seed{seed}" for where in ("together", "alone"))
        assert_same_metrics([m for m in metrics(ra) if m[1] == "train"], [m for m in metrics(rb) if m[1] == "train"],
                            rel=1e-4)
        assert_close(params(ra, BEFORE_NORM), params(rb, BEFORE_NORM), atol=2e-4)


def test_batched_seeds_skip_finished_runs_and_resume_the_rest_together(tmp_path, capsys):
    first = run(capsys, "reptile", tmp_path, *SINE, "--seed", "1")
    finals = run(capsys, "reptile", tmp_path, *SINE, "--seeds", "0-2", "--batch-seeds", "--resume")
    assert finals[1] == first  # left as it was
    assert [f["seeds_together"] for f in finals] == [2, 1, 2]


def test_a_diverging_group_marks_every_diverged_run_failed(tmp_path, capsys):
    code = main(["run", "--algo", "reptile", "--device", "cpu", "--no-progress", "--results", str(tmp_path), *SINE,
                 "--seeds", "0,1", "--batch-seeds", "--set", "meta_lr=1e6", "--set", "meta_lr_final=1e6"])
    err = capsys.readouterr().err
    assert code == 3 and err.startswith("error: training diverged:") and err.count("\n") == 1
    for seed in (0, 1):
        state = json.loads((tmp_path / "sine" / "reptile" / f"seed{seed}" / "state.json").read_text())
        assert state["state"] == "failed" and "diverged" in state["message"]


@pytest.mark.parametrize("argv, words", [
    (["--batch-seeds"], "--seeds"),
    (["--seeds", "0-x"], "--seeds 0-4"),
])
def test_bad_seed_options_are_one_line_errors(tmp_path, capsys, argv, words):
    assert main(["run", "--algo", "reptile", "--preset", "sine", "--results", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err
    assert not any(tmp_path.iterdir())


def test_compiled_meta_iterations_equal_the_plain_ones(tmp_path, capsys):
    args = [*SINE, "--set", "meta_iters=60", "--set", "eval_every=20"]
    compiled = run(capsys, "reptile", tmp_path / "compiled", *args, "--set", "compile=true")
    plain = run(capsys, "reptile", tmp_path / "plain", *args)
    ra, rb = (tmp_path / where / "sine" / "reptile" / "seed0" for where in ("compiled", "plain"))
    assert compiled["value"] == pytest.approx(plain["value"], rel=1e-2)
    assert_same_metrics(metrics(ra), metrics(rb), rel=1e-4)
    assert_close(params(ra), params(rb), atol=1e-5)


@pytest.mark.parametrize("algo,preset,batched,unit", [
    ("reptile", "omniglot-5w1s", False, "step"),     # the CNN's serial path: each plain inner step compiled
    ("fomaml", "omniglot-5w1s", False, "task"),      # each task's inner steps and query gradient compiled
    ("maml", "omniglot-5w1s-maml", False, "task"),   # each task's second-order meta-gradient compiled
    ("reptile", "sine", False, "whole"),             # the MLP's steps are too short: the whole meta-iteration
    ("reptile", "sine", True, "whole"),              # the tasks under vmap: the whole meta-iteration
    ("maml", "sine", False, "whole"),                # the MLP again
])
def test_compiled_paths_equal_the_plain_ones_in_float64(float64, monkeypatch, algo, preset, batched, unit):
    from algorithms import inner
    from bench import runner

    compiled_fns, original = [], inner.compile_fn

    def compile_fn(fn, **how):
        compiled_fns.append((fn.func if isinstance(fn, partial) else fn).__qualname__)
        return original(fn, **how)
    monkeypatch.setattr(runner, "compile_fn", compile_fn)
    monkeypatch.setattr(inner, "compile_fn", compile_fn)
    # task by task: one inner step and the query (the MAML preset's; each step more adds to the compilation)
    changes = {"batched": batched, "inner_steps": 2 if unit == "task" else 3, "meta_batch": 2}
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = train(algo, preset, 2, compile=True, **changes)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # something was compiled
    # step by step, task by task or whole, as the path asks
    assert compiled_fns == [{"step": "_compiled_step.<locals>.step", "task": "_task",
                             "whole": "_executed.<locals>.plain"}[unit]]
    plain = train(algo, preset, 2, **changes)
    for a, b in zip(plain, compiled):
        assert a.keys() == b.keys()
        for k in a.keys() - BEFORE_NORM - BEFORE_NORM_STATE:
            torch.testing.assert_close(b[k], a[k], rtol=1e-9, atol=1e-12, msg=f"{algo} {preset}: {k}")
    assert plain[2]["loss"] != train(algo, preset, 1, **changes)[2]["loss"]  # the steps did something


@pytest.mark.parametrize("algo, batched", [("reptile", False), ("reptile", True), ("maml", True)])
def test_matmul_convolutions_train_as_the_plain_ones_in_float64(float64, algo, batched):
    preset = "omniglot-5w1s-maml" if algo == "maml" else "omniglot-5w1s"
    changes = {"batched": batched, "inner_steps": 3 if algo == "reptile" else 2, "meta_batch": 2}
    plain = train(algo, preset, 2, **changes)
    fast = train(algo, preset, 2, conv_matmul=True, **changes)
    for a, b in zip(plain, fast):
        assert a.keys() == b.keys()
        for k in a.keys() - BEFORE_NORM - BEFORE_NORM_STATE:
            torch.testing.assert_close(b[k], a[k], rtol=1e-9, atol=1e-12, msg=f"{algo}: {k}")


def test_bf16_forward_computes_convolutions_in_bfloat16_and_returns_float32():
    from bench.config import load_config
    from bench.models import build_model, forward

    cfg = load_config("omniglot-5w1s")
    torch.manual_seed(0)
    model = build_model(cfg)
    params = dict(model.named_parameters())
    x = torch.rand(10, 1, 28, 28)
    plain = forward(model, params, x, cfg)
    assert torch.equal(plain, torch.func.functional_call(model, params, (x,)))
    half = forward(model, params, x, cfg.replace(autocast="bf16"))
    assert half.dtype == torch.float32
    assert not torch.equal(half, plain)  # bfloat16 rounding is visible...
    torch.testing.assert_close(half, plain, atol=0.1, rtol=0.1)  # ...and small
    # under autocast a convolution computes in bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = model[0](x)
    assert first.dtype == torch.bfloat16


@pytest.mark.parametrize("batched", ["false", "true"])
def test_bf16_autocast_trains_on_both_paths_near_float32(tmp_path, capsys, omniglot_data, batched):
    args = ["--preset", "omniglot-5w1s", "--data", str(omniglot_data), *OMNIGLOT, "--set", f"batched={batched}"]
    run(capsys, "reptile", tmp_path / "bf16", *args, "--set", "autocast=bf16")
    run(capsys, "reptile", tmp_path / "fp32", *args)
    ra, rb = (tmp_path / where / "omniglot-5w1s" / "reptile" / "seed0" for where in ("bf16", "fp32"))
    assert json.loads((ra / "config.json").read_text())["autocast"] == "bf16"
    half = [m for m in metrics(ra) if m[1] == "train" and m[2] == "loss"]
    full = [m for m in metrics(rb) if m[1] == "train" and m[2] == "loss"]
    assert [m[0] for m in half] == [m[0] for m in full]
    assert half != full  # it changes results, as it says...
    for a, b in zip(half, full):
        assert a[3] == pytest.approx(b[3], rel=0.05)  # ...by little over a few meta-iterations


@pytest.mark.parametrize("argv, words", [
    (["--set", "cuda_graph=true", "--device", "cpu"], "--device cuda"),
    (["--set", "cuda_graph=true", "--set", "compile=true", "--device", "cpu"], "--device cuda"),
])
def test_cuda_graph_settings_refused_are_one_line_errors(tmp_path, capsys, argv, words):
    assert main(["run", "--algo", "reptile", "--preset", "sine", "--results", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err
    assert not any(tmp_path.iterdir())


def test_graphed_function_refuses_cpu_tensors():
    from bench.graphs import GraphedFunction

    with pytest.raises(ValueError, match="not a CUDA tensor"):
        GraphedFunction(lambda x: x)(torch.zeros(2))


@pytest.mark.parametrize("autocast, tf32", [("off", False), ("tf32", True), ("bf16", False)])
def test_tensorfloat32_follows_the_autocast_setting(autocast, tf32):
    from bench.config import load_config
    from bench.models import build_model, forward

    cfg = load_config("omniglot-5w1s").replace(autocast=autocast)
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = not tf32
        model = build_model(cfg)
        forward(model, dict(model.named_parameters()), torch.zeros(2, 1, 28, 28), cfg)
        assert torch.backends.cudnn.allow_tf32 is tf32 and torch.backends.cuda.matmul.allow_tf32 is tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("benchmark", [False, True])
def test_cudnn_benchmark_follows_its_setting(benchmark):
    from bench.config import load_config
    from bench.models import build_model, forward

    cfg = load_config("omniglot-5w1s").replace(cudnn_benchmark=benchmark)
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = not benchmark
        model = build_model(cfg)
        forward(model, dict(model.named_parameters()), torch.zeros(2, 1, 28, 28), cfg)
        assert torch.backends.cudnn.benchmark is benchmark
    finally:
        torch.backends.cudnn.benchmark = before


def test_execution_only_settings_do_not_block_a_resume(tmp_path, capsys):
    from bench.checkpoint import differences

    saved = {"inner_lr": 0.001, "compile": False}  # made before cuda_graph existed
    assert differences(saved, {"inner_lr": 0.001, "compile": True, "cuda_graph": True, "channels_last": True}) == []
    assert differences(saved, {"inner_lr": 0.002, "cuda_graph": False}) == ["inner_lr=0.001 (now 0.002)"]
    # a finished run made before cuda_graph existed, with compile on, resumes (nothing to do)
    args = [*SINE, "--set", "meta_iters=20", "--set", "snapshots=0", "--set", "eval_every=0"]
    first = run(capsys, "reptile", tmp_path, *args)
    config = tmp_path / "sine" / "reptile" / "seed0" / "config.json"
    saved = json.loads(config.read_text())
    del saved["cuda_graph"]
    saved["compile"] = True
    config.write_text(json.dumps(saved))
    assert run(capsys, "reptile", tmp_path, *args, "--resume") == first


@pytest.mark.parametrize("batched", [False, True])
def test_channels_last_runs_train_like_the_default_order(tmp_path, capsys, omniglot_data, batched):
    """In float32 the two orders' convolutions round differently, and Adam (beta1 = 0: its
    first steps are sign(g)) turns the rounding of near-zero gradient entries into steps
    of inner_lr: the runs agree loosely here. The exact comparison is in float64
    (tests/test_inner.py)."""
    args = ["--preset", "omniglot-5w1s", "--data", str(omniglot_data), *OMNIGLOT, "--set", f"batched={batched}"]
    nhwc = run(capsys, "reptile", tmp_path / "nhwc", *args, "--set", "channels_last=true")
    plain = run(capsys, "reptile", tmp_path / "plain", *args)
    ra, rb = (tmp_path / where / "omniglot-5w1s" / "reptile" / "seed0" for where in ("nhwc", "plain"))
    assert nhwc["value"] == pytest.approx(plain["value"], abs=0.1)  # 50 test queries
    assert_same_metrics([m for m in metrics(ra) if m[1] == "train"], [m for m in metrics(rb) if m[1] == "train"],
                        rel=5e-2)
    saved = params(ra)
    assert_close({k: v for k, v in saved.items() if k not in BEFORE_NORM}, params(rb, BEFORE_NORM), atol=2e-2)
    assert saved["3.weight"].is_contiguous(memory_format=torch.channels_last)
    assert not saved["3.weight"].is_contiguous()


def test_channels_last_on_cuda_is_refused_under_vmap_in_one_line():
    from bench.config import load_config
    from bench.errors import ConfigError
    from bench.models import check_layout

    cfg = load_config("omniglot-5w1s").replace(channels_last=True)  # the serial path
    cuda = torch.device("cuda")
    check_layout(cfg, torch.device("cpu"))
    check_layout(cfg.replace(batched=True), torch.device("cpu"), batch_seeds=True)
    check_layout(cfg.replace(channels_last=False, batched=True), cuda, batch_seeds=True)
    check_layout(cfg, cuda)
    for changes, seeds, words in (({"batched": True}, False, "--set batched=true"), ({}, True, "--batch-seeds")):
        with pytest.raises(ConfigError, match=f"channels_last=true with {words} is for the CPU") as e:
            check_layout(cfg.replace(**changes), cuda, batch_seeds=seeds)
        assert "\n" not in str(e.value) and "--set channels_last=false" in str(e.value)


def test_evaluation_on_cuda_adapts_in_the_default_order():
    from bench.config import load_config
    from bench.models import build_model, eval_layout

    cfg = load_config("omniglot-5w1s").replace(channels_last=True)
    params = {k: v.detach() for k, v in build_model(cfg).named_parameters()}
    assert eval_layout(cfg, params) == (cfg, params)  # on the CPU as they are
    assert eval_layout(cfg, {}) == (cfg, {})
    meta = {k: v.to("meta") for k, v in params.items()}  # a device other than the CPU's, without one
    assert eval_layout(cfg, meta) == (cfg, meta)
    if torch.cuda.is_available():
        on_cuda = {k: v.cuda() for k, v in params.items()}
        eval_cfg, moved = eval_layout(cfg, on_cuda)
        assert not eval_cfg.channels_last and moved["3.weight"].is_contiguous()
        torch.testing.assert_close(moved, on_cuda)


def test_channels_last_images_and_weights_reach_every_convolution():
    from bench.config import load_config
    from bench.models import build_model, forward, laid_out

    cfg = load_config("omniglot-5w1s").replace(channels_last=True)
    torch.manual_seed(0)
    model = build_model(cfg)
    seen = []
    for layer in model:
        if isinstance(layer, torch.nn.Conv2d):
            layer.register_forward_hook(lambda m, inp, out: seen.append(out.is_contiguous(memory_format=torch.channels_last)
                                                                        and not out.is_contiguous()))
    x = torch.rand(4, 1, 28, 28)
    out = forward(model, dict(model.named_parameters()), x, cfg)
    assert seen == [True] * 4  # the one-channel images too (their default strides would make NCHW outputs)
    params = {k: v.detach().contiguous() for k, v in model.named_parameters()}
    torch.testing.assert_close(out, forward(model, params, x, cfg.replace(channels_last=False)), rtol=1e-5, atol=1e-6)
    back = laid_out(params, cfg)
    assert back["3.weight"].is_contiguous(memory_format=torch.channels_last) and back["13.bias"] is params["13.bias"]
