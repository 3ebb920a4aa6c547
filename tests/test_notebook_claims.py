"""The claims the notebooks' prose depends on, checked against their committed outputs.

A re-execution that changes what a sentence says (for example "eta = 1 beats eta = 0 for this model")
fails here instead of leaving the text wrong: fix the prose, or the code, and re-execute. The figures
are read from the outputs the notebooks print, the way a reader reads them.
"""

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def printed(notebook: str, marker: str) -> str:
    """The text output of the first code cell of `notebook` whose source contains `marker`."""
    nb = json.loads((REPO / "notebooks" / f"{notebook}.ipynb").read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and marker in "".join(cell["source"]):
            return "".join("".join(o.get("text", "")) for o in cell.get("outputs", []) if o["output_type"] == "stream")
    raise AssertionError(f"{notebook}: no code cell contains {marker!r}")


def numbers(pattern: str, text: str) -> list[tuple[float, ...]]:
    """Every match of `pattern` in `text`, its groups as floats."""
    found = [tuple(float(g.replace(",", "")) for g in m.groups()) for m in re.finditer(pattern, text)]
    assert found, f"nothing matches {pattern!r} in:\n{text[:1500]}"
    return found


def test_01_the_padding_is_background_and_every_image_appears_once_per_epoch():
    out = printed("01_data_pipeline", "border = ")
    assert "2-pixel border all -1: True" in out and "range [-1.0, 1.0]" in out, "section 3: [-1, 1], padded with -1"
    assert "every image exactly once per epoch: True" in printed("01_data_pipeline", "every image exactly once")


def test_02_the_linear_schedule_wastes_its_last_third_and_cosine_only_its_last_steps():
    crossings = {kind: (low, lower) for kind, low, lower in re.findall(
        r"(linear|cosine)\s+SNR below 1e-2 from t = (\d+), below 1e-3 from t = (\d+)",
        printed("02_forward_process_and_schedules", "snr < 1e-2"))}
    linear, cosine = (int(crossings[k][0]) for k in ("linear", "cosine"))
    assert 640 <= linear <= 700, "section 2: below 1e-2 for about the last third, from the printed t"
    assert 1000 - cosine == 64, "section 2: cosine crosses 1e-2 only in its last 64 steps"
    snr1 = dict(re.findall(r"(linear|cosine): SNR < 1 from t = (\d+)", printed("02_forward_process_and_schedules", "# Solution 1")))
    assert int(snr1["linear"]) < 300 < int(snr1["cosine"]), "section 2: linear destroys most of the signal by t = 300"


def test_03_the_untrained_net_outputs_zeros_and_the_traces_label_attention_where_it_is():
    assert "untrained output is all zeros: True" in printed("03_unet", "untrained output is all zeros")
    assert "middle (ResBlock, attention, ResBlock)" in printed("03_unet", "cpu_model = nnx.eval_shape")
    patch4 = printed("03_unet", "# Solution 2:")
    assert "middle (ResBlock, ResBlock)" in patch4 and "(2, 2, 2, 64)" in patch4, "exercise 2: no attention at 2x2"
    counts = dict(re.findall(r"cpu (\(as it is\)|\{'num_res_blocks': 2\}|\{'patch_size': 4\}): ([\d,]+) parameters",
                             printed("03_unet", "# Solution 1:")))
    base, blocks, patch = (int(counts[k].replace(",", "")) for k in ("(as it is)", "{'num_res_blocks': 2}", "{'patch_size': 4}"))
    assert blocks - base > abs(patch - base), "exercise 1: a second block changes the count more than 4x4 patches"


def test_04_our_loop_lowers_the_loss_and_warm_up_beats_a_hot_start():
    first, last = numbers(r"mean loss of the first chunk ([\d.]+), of the last ([\d.]+)",
                          printed("04_train_ddpm", "state, loop_losses = train_loop("))[0]
    assert last < first, "section 9 says the loss falls in our loop"
    hot_first, hot_last, warm = numbers(r"first chunk ([\d.]+), of the last ([\d.]+) \(the preset's warm-up: ([\d.]+)",
                                        printed("04_train_ddpm", "# Solution 1:"))[0]
    assert warm < hot_last, "exercise 1: the warm-up reaches a lower loss than 10x the rate from the start"


def test_04_the_run_follows_its_plan_and_its_loss_comes_from_the_middle_noise_levels():
    run = printed("04_train_ddpm", "tutorial.ensure_run(run_dir, cfg)")
    (planned,) = numbers(r"the plan: ([\d,]+) steps", run)[0]
    (trained,) = numbers(r"done: (\d+) steps in", run)[0]
    assert trained == planned == 9000, "section 10: the cpu preset trains its fixed plan of 9,000 steps"
    (gap,) = numbers(r"differs from section 4's schedule by at most ([\d.e+-]+)", printed("04_train_ddpm", "lr_gap = "))[0]
    assert gap == 0, "section 11: the run used section 4's learning-rate schedule"
    high, _, low, _, weighted = numbers(r"highest at t = (\d+) \(([\d.]+)\), lowest at t = (\d+) \(([\d.]+)\); "
                                        r"weighted: highest at t = (\d+)", printed("04_train_ddpm", "per_t = loss_per_timestep("))[0]
    assert high == 0, "section 12: the unweighted v error is largest at the smallest t"
    assert 100 <= low <= 900 and 100 <= weighted <= 900, "section 12: the middle noise levels"


def _sampler_scores() -> dict[str, tuple[float, float]]:
    """Notebook 06's section 6 table: {"DDIM-25 0.0": (FD, confident %), ..., "DDPM-1000 1.0": ..., "real": ...}."""
    text = printed("06_sampling", "score_steps = ")
    rows = {f"{name} {eta}": (fd, conf) for name, eta, fd, conf in
            re.findall(r"^(DD[IP]M-\d+)\s+([\d.]+)\s+[\d.]+\s+([\d.]+)\s+([\d.]+)%", text, re.M)}
    rows["real"] = numbers(r"real test digits\s+([\d.]+)\s+([\d.]+)%", text)[0]
    return {k: tuple(float(v) for v in vals) for k, vals in rows.items()}


def test_06_the_ddpm_step_is_ddim_at_eta_1_and_every_network_call_costs_the_same():
    (diff,) = numbers(r"over all pixels: ([\d.e+-]+);", printed("06_sampling", "x_ddpm = ddpm_step("))[0]
    assert diff < 1e-5, "section 1: algorithm 2 and DDIM with eta = 1 agree to float32 rounding"
    timings = numbers(r"(?m)^DD[IP]M-\d+\s+\d+\s+[\d.]+\s+([\d.]+)$", printed("06_sampling", "results, timings = "))
    first, *per_call = [t for (t,) in timings]
    assert max(per_call) < 1.2 * min(per_call), "section 4: from 20 calls on, about the same time per network call"
    assert first >= max(per_call), "section 4: the 10-call row pays more per call"


def test_06_eta_1_beats_eta_0_and_ddpm_1000_scores_best():
    scores = _sampler_scores()
    steps = sorted({int(k.split()[0][5:]) for k in scores if k.startswith("DDIM")})
    assert len(steps) >= 3
    for s in steps:
        assert scores[f"DDIM-{s} 1.0"][1] >= scores[f"DDIM-{s} 0.0"][1] + 6, f"about eight points more confident at {s}"
    for s in (steps[0], steps[-1]):
        assert scores[f"DDIM-{s} 1.0"][0] < scores[f"DDIM-{s} 0.0"][0] - 10, f"a clearly lower FD at {s} steps"
    mid = steps[1]
    assert scores[f"DDIM-{mid} 1.0"][0] >= scores[f"DDIM-{mid} 0.0"][0], "at 50 steps no lower in FD"
    deterministic = [scores[f"DDIM-{s} 0.0"] for s in steps]
    assert max(c for _, c in deterministic) - min(c for _, c in deterministic) <= 1, "eta = 0: within a point"
    assert deterministic[-1][0] < deterministic[0][0], "eta = 0: the FD improves a little with steps"
    ddpm = scores["DDPM-1000 1.0"]
    samplers = {k: v for k, v in scores.items() if k != "real"}
    assert ddpm[0] == min(fd for fd, _ in samplers.values()) and ddpm[1] == max(c for _, c in samplers.values()), \
        "DDPM-1000 scores best of all"
    assert all(scores["real"][0] < fd for fd, _ in samplers.values()), "real digits score best"
    ddim100 = scores[f"DDIM-{steps[-1]} 1.0"]
    assert ddim100[0] - ddpm[0] >= 10 and ddpm[1] - ddim100[1] <= 5, \
        "DDPM-1000: a clearly lower FD than DDIM-100 with eta = 1, a confident share within a few points"
    verdicts = dict(re.findall(r"DDIM-\d+ (FD|confident share): eta = 0.5 gives [\d.]+, (between them|above both|below both)",
                               printed("06_sampling", "# Solution 1:")))
    assert verdicts == {"FD": "above both", "confident share": "between them"}, "exercise 1's reading"


def test_07_autoguidance_raises_the_confident_share_and_halves_the_frechet_distance():
    rows = {w: (fd, conf, low, high) for w, fd, conf, low, high in numbers(
        r"(?m)^\s*([\d.]+)\s+[\d.]+\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)% - ([\d.]+)%",
        printed("07_faster_sampling_and_guidance", "ag_ws = "))}
    plain = rows[1.0]
    assert 3 <= rows[1.5][1] - plain[1] <= 5, "about four points at w = 1.5"
    assert all(conf > 92 for w, (_, conf, _, _) in rows.items() if w >= 2), "past 92% from w = 2 on"
    best = min(rows, key=lambda w: rows[w][0])
    assert best == 2.0 and rows[2.0][0] < plain[0] / 2 and rows[3.0][0] > rows[2.0][0], "lowest at w = 2, below half"
    assert all(6 <= low and high <= 14 for _, _, low, high in rows.values()), "no class is lost"


def _sweep() -> dict[str, list[tuple[float, float, float]]]:
    """Notebook 07's section 4 table: {setting: [(NFE, FD, confident %), one per seed]}."""
    out = {}
    for name, nfe, fd, conf in re.findall(r"(?m)^(\S+(?: eta=\d)?-\d+, guided \w+)\s+\d+\s+(\d+)\s+[\d.]+\s+([\d.]+)\s+([\d.]+)%",
                                          printed("07_faster_sampling_and_guidance", "SWEEP = [")):
        out.setdefault(name, []).append((float(nfe), float(fd), float(conf)))
    return out


def test_07_the_preset_sampler_is_among_the_best_per_evaluation_and_the_guide_is_worth_it():
    sweep = _sweep()
    preset = sweep["dpmpp_2m_sde-50, guided all"]
    assert len(preset) == 3 and all(conf >= 90 for _, _, conf in preset)
    low, high = min(fd for _, fd, _ in preset), max(fd for _, fd, _ in preset)
    at100 = {k: v[0] for k, v in sweep.items() if v[0][0] == 100}
    assert min(at100, key=lambda k: at100[k][1]) == "dpmpp_2m_sde-50, guided all", "best of the 100-evaluation settings"
    for k in ("ddim eta=1-100, guided all", "ddim eta=1-50, guided all", "dpmpp_2m_sde-25, guided all"):
        assert sweep[k][0][1] > high, f"{k}: above the preset's range"
    for k in ("ddim eta=0-50, guided all", "dpmpp_2m-50, guided all", "dpmpp_2m_sde-50, guided interval"):
        assert low <= sweep[k][0][1] <= high and sweep[k][0][2] < min(c for _, _, c in preset), k
    nfe_interval = sweep["dpmpp_2m_sde-50, guided interval"][0][0]
    assert 0.55 <= nfe_interval / 100 <= 0.65, "the interval saves about 40% of the evaluations"
    off, guided25 = sweep["dpmpp_2m_sde-50, guided off"][0], sweep["dpmpp_2m_sde-25, guided all"][0]
    assert off[0] == guided25[0] and 1.7 <= off[1] / guided25[1] <= 2.3 and off[2] < guided25[2], "the guide is worth it"
    assert sweep["dpmpp_2m_sde-10, guided all"][0][1] > 3 * high, "10 steps are far worse"
    low_t, high_t = numbers(r"0.28 < sigma <= 2.9 is (\d+) <= t <= (\d+)", printed("07_faster_sampling_and_guidance", "inside = "))[0]
    assert 0 < low_t < high_t < 999, "section 3: the interval is a middle range of t"


def test_05_the_trained_model_lands_between_real_digits_and_broken_ones_without_copying():
    text = printed("05_evaluating_samples", "scores = {name: evaluator.evaluate(x)")
    table = {name.strip(): [float(v) for v in vals.split()[1:]] for name, vals in
             re.findall(r"^([A-Za-z0-9 ]+?)\s{2,}(\d+\s+[\d.\s%]+)$", text.replace("%", ""), re.M)}
    fd, conf, nn = (lambda r: (r[0], r[1], r[6]))(table["trained model"])
    real = table["real test digits"]
    broken = [table[k][0] for k in ("untrained UNet", "uniform noise", "blurred digits", "only 1s")]
    assert real[0] < fd < min(broken) / 10 and fd < 2 * real[0], "FD far below the broken rows', close to the real"
    assert 5 <= real[1] - conf <= 9, "a confident share about seven points below real digits'"
    copies, model = table["training set copies"], table["trained model"]
    assert abs(model[4] - copies[4]) <= 0.05 and abs(model[5] - copies[5]) <= 0.05, "precision/recall near the copies'"
    assert copies[6] < 0.05 and real[6] < nn, "copies sit at 0; the model's samples a little farther than real digits"
    assert real[4] == 1.0, "the real test digits' precision is 1 by construction"
    assert table["training set copies"][0] < real[0], "not a strict ceiling: the copies score a slightly lower FD"
    untrained = table["untrained UNet"]
    assert untrained[0] > 1000 and untrained[4] == 0 and untrained[1] > 90 and untrained[3] == 100, \
        "the untrained UNet draws noise: huge FD, zero precision, yet confident, all in one class"
    assert abs(table["only 1s"][1] - real[1]) <= 1.5 and table["only 1s"][5] < 0.2, "only 1s: confident, recall collapses"


def _experiments() -> dict[str, dict[str, float]]:
    """Notebook 09's results table: {variant: {"steps", "images_per_s", "err", "fd", "conf"}}."""
    text = printed("09_experiments", "header = (")
    return {name.strip(): {"steps": float(steps), "images_per_s": float(speed), "err": float(err), "fd": float(fd),
                           "conf": float(conf)}
            for name, steps, speed, err, fd, conf in re.findall(
                r"^([a-zA-Z][\w ,-]+?)\s+(\d+)\s+(\d+)\s+[\d.]+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)%$", text, re.M)}


def _experiments_real_fd() -> float:
    """Notebook 09's FD of real test digits at the same N."""
    return numbers(r"real test digits for reference: FD ([\d.]+)", printed("09_experiments", "header = ("))[0][0]


def test_09_the_baseline_draws_digits_and_only_the_small_unet_and_uniform_weighting_leave_the_noise():
    rows = _experiments()
    base, seed2 = rows["baseline"], rows["baseline, seed 2"]
    confs, fds = sorted((base["conf"], seed2["conf"])), sorted((base["fd"], seed2["fd"]))
    gap = fds[1] - fds[0]
    assert 50 <= confs[0] and base["fd"] > 10 * _experiments_real_fd(), "section 4: a bit over half confident, FD over ten times real"
    assert 0.07 <= gap / fds[0] <= 0.13 and 5 <= confs[1] - confs[0] <= 7, "the seeds: about a tenth in FD, six points"
    same_cost = [r for name, r in rows.items() if "UNet" not in name]
    assert len({r["steps"] for r in same_cost}) == 1, "the same-cost variants train exactly the baseline's steps"
    eps = rows["epsilon-prediction"]
    assert abs(eps["conf"] - base["conf"]) <= 1 and fds[0] - gap / 2 < eps["fd"] < fds[0], \
        "epsilon-prediction: within a point of the baseline's share, FD just below both seeds'"
    linear = rows["linear schedule"]
    assert linear["err"] < 0.8 * min(base["err"], seed2["err"]), "the linear schedule has by far the lowest error"
    assert confs[0] <= linear["conf"] <= confs[1] and fds[1] < linear["fd"] < fds[1] + gap, \
        "yet its samples are no better: share between the seeds', FD above both by less than they differ"
    large, small = rows["large UNet"], rows["small UNet"]
    assert fds[0] - gap < large["fd"] < fds[0], \
        "large UNet: FD below both seeds by less than they differ"
    assert large["images_per_s"] < base["images_per_s"] / 2, "the large UNet's images/s: less than half"
    assert small["conf"] == min(r["conf"] for r in rows.values()) and 6 <= base["conf"] - small["conf"] <= 8, \
        "small UNet: the lowest confident share, seven points below the baseline's"
    assert small["fd"] > fds[1] + 2 * gap, "small UNet: FD above both seeds by more than twice their gap"
    uniform = rows["uniform weighting"]
    assert abs(uniform["conf"] - base["conf"]) <= 1 and uniform["fd"] > fds[1] + 2 * gap, \
        "uniform weighting: within a point in share, FD above both seeds by more than twice their gap"
    cosine = {name: r for name, r in rows.items() if name != "linear schedule"}
    others = min(r["err"] for name, r in cosine.items() if name != "uniform weighting")
    assert others - uniform["err"] > abs(base["err"] - seed2["err"]), "uniform: the lowest error of the cosine rows"
    assert uniform["fd"] == max(r["fd"] for r in rows.values()), "uniform weighting: the worst FD"
    assert abs(large["conf"] - base["conf"] + 1) < 0.05, "large UNet: one point below the baseline's share"
    assert small["steps"] > base["steps"] > large["steps"], "cost per step orders the steps"
    speeds = [s for (s,) in numbers(r"([\d.]+)x the baseline's speed", printed("09_experiments", "def step_seconds_by_width"))]
    assert 1 / 4 < min(speeds) and max(speeds) < 4, "section 2: the cost per step differs by less than the parameters"


def test_09_exercises_locate_the_linear_schedule_and_epsilon_errors():
    per_t = numbers(r"(?m)^\s*(\d+)\s+([\d.]+)\s+([\d.]+)$", printed("09_experiments", "# Solution 1:"))
    assert all(linear <= base for _, base, linear in per_t), "the linear schedule's noise error is lower at every t"
    x0 = numbers(r"(?m)^\s*(\d+)\s+([\d.]+)\s+([\d.]+)$", printed("09_experiments", "# Solution 2:"))
    assert x0[-1][2] > 10 * x0[-1][1], "epsilon's image estimate is over ten times worse at the noisiest t"
    assert abs(x0[0][2] - x0[0][1]) <= 0.1 * x0[0][1] + 1e-4, "at small t the two image estimates are close"


def test_10_guidance_makes_the_label_matter_and_fd_is_best_at_a_moderate_scale():
    rows = {w: (match, conf, fd) for w, match, conf, fd in numbers(
        r"(?m)^\s*([\d.]+)\s+([\d.]+)%\s+([\d.]+)%\s+([\d.]+)$", printed("10_conditional_generation", "scales = ("))}
    assert rows[0.0][0] <= 30, "at w = 0 the label is ignored: near chance"
    assert rows[1.0][0] >= rows[0.0][0] + 40 and rows[2.0][0] >= rows[1.0][0], "guidance raises the label match"
    assert rows[2.0][1] > rows[0.0][1] + 10, "guidance raises the confident share"
    best = min(rows, key=lambda w: rows[w][2])
    assert best in (1.0, 2.0, 3.0) and rows[5.0][2] > rows[best][2], "FD is best at a moderate w, worse at 5"
    more = numbers(r"(?m)^\s*([\d.]+)\s+([\d.]+)%\s+([\d.]+)%\s+([\d.]+)$", printed("10_conditional_generation", "# Solution 3:"))
    assert more[0][1] >= 90 and more[0][2] >= 90, "exercise 3: near the ceiling already at the lowest scale"
    assert more[0][3] < more[1][3] < more[2][3], "exercise 3: FD rises from the lowest scale to w = 3"
    per_digit = {w: [int(v) for v in row.split()] for w, row in re.findall(
        r"(?m)^w = ([\d.]+)\s+((?:\d+ +)+\d+) *$", printed("10_conditional_generation", "# Solution 1:").replace("%", " "))}
    assert [d for d, v in enumerate(per_digit["1.0"]) if v == 100] == [0, 1, 3, 5, 8], "exercise 1: the digits drawn every time"
    assert all(v == 100 for v in per_digit["3.0"]), "exercise 1: w = 3 fixes every miss"


def test_11_fashion_is_greyer_and_harder_and_its_samples_are_not_copies():
    grey = numbers(r"share of mid-grey pixels \(50-200\): MNIST ([\d.]+)%, Fashion ([\d.]+)%",
                   printed("11_fashion_mnist", "ax.hist("))[0]
    assert grey[1] > 3 * grey[0], "section 1: many more mid-grey pixels"
    mnist, fashion = numbers(r"final training loss: MNIST ([\d.]+) \(\d+ steps\), Fashion-MNIST ([\d.]+)",
                             printed("11_fashion_mnist", "mnist_run = "))[0]
    assert fashion > mnist, "section 2: a higher loss than MNIST's"
    test_fashion, test_mnist = numbers(r"test loss: Fashion-MNIST ([\d.]+), MNIST ([\d.]+)",
                                       printed("11_fashion_mnist", "# Solution 3:"))[0]
    assert test_fashion > test_mnist, "exercise 3: harder on held-out images too"
    samples, tests = numbers(r"samples ([\d.]+) \(smallest [\d.]+\), real test images ([\d.]+)",
                             printed("11_fashion_mnist", "# Solution 1:"))[0]
    assert samples > 0.8 * tests, "exercise 1: the samples are about as far from the training set as new images"
    sample_grey, data_grey = numbers(r"share of mid-grey pixels \(50-200\): samples ([\d.]+)%, training images ([\d.]+)%",
                                     printed("11_fashion_mnist", "# Solution 2:"))[0]
    assert sample_grey < data_grey, "exercise 2: fewer mid-grey pixels in the samples than in the data"


def _flow_sweep() -> dict[tuple[str, int], float]:
    """Notebook 08's equal-compute table: {(sampler, NFE): mean FD}."""
    text = printed("08_flow_matching", "summary_table = summarise(results)")
    return {(name, int(nfe)): float(fd) for name, nfe, fd in
            re.findall(r"^(\w+)\s+\d+\s+(\d+)\s+([\d.]+) \(", text, re.M)}


def test_08_flow_matching_leads_with_few_evaluations_and_ddpm_with_many():
    fd = _flow_sweep()
    assert fd[("euler", 4)] < fd[("ddim", 4)] / 3, "sections 4-5: with two steps flow draws digits, DDIM blurs"
    assert fd[("heun", 10)] < fd[("dpmpp_2m_sde", 10)] / 3 and fd[("heun", 18)] < fd[("dpmpp_2m_sde", 20)] / 3
    at10 = [fd[("heun", 10)], fd[("euler", 10)], fd[("ddim", 10)]]
    assert max(at10) / min(at10) < 1.1, "section 5: at 10 evaluations Heun, Euler and DDIM are level"
    assert fd[("dpmpp_2m_sde", 100)] == min(fd.values()), "section 5: at 100, DPM-Solver++(2M) SDE is the best"
    assert fd[("dpmpp_2m_sde", 100)] < 0.8 * fd[("dpmpp_2m_sde", 50)], "DPM-Solver++ still improving at 100"
    assert fd[("heun", 6)] < fd[("ddim", 4)] / 3, "Heun with 6 evaluations is ahead of DDPM's 4 too"
    assert fd[("heun", 18)] < fd[("euler", 20)] and abs(fd[("heun", 18)] / fd[("euler", 50)] - 1) < 0.15, \
        "5 Heun steps score about what 25 Euler steps do"
    budgets = numbers(r"at most\s+(\d+) evaluations: flow\s+([\d.]+) .*?DDPM\s+([\d.]+) .*?= ([\d.]+)",
                      printed("08_flow_matching", "def best("))
    ratio = {int(b): r for b, _, _, r in budgets}
    assert 0.9 < ratio[10] < 1.1 and ratio[20] > 1.05 and ratio[100] < 0.95, "the summary's leads"


def test_08_flow_trajectories_are_straighter_and_autoguidance_helps():
    (flow,), (ddpm,) = numbers(r"straightness ([\d.]+)", printed("08_flow_matching", "def straightness("))
    assert flow > ddpm, "section 4: the flow model's trajectories are straighter"
    (with_fd, with_conf), (without_fd, without_conf) = numbers(r"FD ([\d.]+), confident ([\d.]+)%",
                                                                printed("08_flow_matching", "# Solution 3:"))
    assert without_fd > 3 * with_fd and without_conf < with_conf, "exercise 3"
    (u_mid, u_low), (ln_mid, ln_low) = numbers(r"([\d.]+)% in \[0.4, 0.6\], ([\d.]+)% below",
                                               printed("08_flow_matching", "# Solution 1:"))
    assert ln_mid > u_mid and ln_low < u_low, "exercise 1"
