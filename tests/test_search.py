"""search: knapsack and greedy against brute force, budgets by the bit accounting, held-out numbers against a
separate audit of the written plan, disjoint splits, determinism, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import chromium_images_loaded, run_cli

from quant_disparity.corpus import load_udhr
from quant_disparity.corpus.documents import split_of
from quant_disparity.models.modules import build_module_map
from quant_disparity.protect.pareto import (
    brute_force,
    candidates,
    estimate,
    greedy,
    knapsack,
    linear_gains,
    objective_value,
)
from quant_disparity.quant import cost, parse_scheme
from quant_disparity.quant.plan import Plan

pytestmark = pytest.mark.usefixtures("isolated_cache")


# -- pure selection ------------------------------------------------------------------------------------------------
def test_knapsack_hand_toy():
    # costs 3, 4, 2 and gains 4, 5, 3 within 5: {0, 2} (gain 7) beats {1} (5) and {0} (4); by hand
    assert knapsack(np.array([4.0, 5.0, 3.0]), np.array([3.0, 4.0, 2.0]), 5.0, resolution=5) == [0, 2]
    # within 6: {1, 2} (gain 8) beats {0, 2} (7)
    assert knapsack(np.array([4.0, 5.0, 3.0]), np.array([3.0, 4.0, 2.0]), 6.0, resolution=6) == [1, 2]
    # a unit of negative gain is never taken, even when it fits
    assert knapsack(np.array([-1.0, 2.0]), np.array([1.0, 1.0]), 5.0, resolution=5) == [1]


@pytest.mark.parametrize("objective", ["mean", "disparity"])
@pytest.mark.parametrize("seed", range(6))
def test_knapsack_equals_brute_force_for_additive_objectives(objective, seed):
    rng = np.random.default_rng(seed)
    n_units, n_langs = 9, 4
    rel = rng.uniform(0.05, 0.3, n_langs)
    recovery = rng.normal(0.01, 0.02, (n_units, n_langs))
    costs = rng.integers(1, 6, n_units).astype(float)
    cap = float(rng.integers(4, 15))
    low = np.array([True, True, False, False])
    (gain,) = linear_gains(recovery, objective, low)
    chosen = knapsack(gain, costs, cap, resolution=int(cap))
    _, best = brute_force(rel, recovery, costs, cap, objective, low)
    assert costs[chosen].sum() <= cap
    got = float(objective_value(estimate(rel, recovery, chosen), objective, low))
    assert got == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_worst_objective_of_one_language_is_exact_and_candidates_never_worse_than_greedy(seed):
    rng = np.random.default_rng(seed)
    rel = rng.uniform(0.05, 0.3, 1)
    recovery = rng.normal(0.01, 0.02, (8, 1))
    costs = rng.integers(1, 6, 8).astype(float)
    cap = 9.0
    chosen = knapsack(recovery[:, 0], costs, cap, resolution=9)
    _, best = brute_force(rel, recovery, costs, cap, "worst")
    assert float(objective_value(estimate(rel, recovery, chosen), "worst")) == pytest.approx(best, abs=1e-12)
    # several languages: the best candidate is within the budget and at least as good as greedy alone
    rel3 = rng.uniform(0.05, 0.3, 3)
    rec3 = rng.normal(0.01, 0.02, (8, 3))
    cands = candidates(rel3, rec3, costs, cap, "worst")
    g = greedy(rel3, rec3, costs, cap, "worst")
    assert all(costs[c].sum() <= cap for _, c, _ in cands)
    assert cands[0][2] <= float(objective_value(estimate(rel3, rec3, g), "worst")) + 1e-15
    _, best3 = brute_force(rel3, rec3, costs, cap, "worst")
    assert cands[0][2] >= best3 - 1e-15  # nothing beats the exhaustive optimum


def test_knapsack_rounds_costs_up_so_the_true_budget_holds():
    rng = np.random.default_rng(1)
    for _ in range(50):
        costs = rng.uniform(0.1, 3.0, 12)
        cap = float(rng.uniform(1, 10))
        chosen = knapsack(rng.uniform(0, 1, 12), costs, cap, resolution=37)
        assert costs[chosen].sum() <= cap
        g = greedy(rng.uniform(0, 0.3, 2), rng.uniform(0, 0.05, (12, 2)), costs, cap, "worst")
        assert costs[g].sum() <= cap


# -- the command on a tiny model ------------------------------------------------------------------------------------
LANGS = "eng,heb,amh"
COMMON = ["--langs", LANGS, "--max-tokens", "120", "--heldout-max-tokens", "200", "--scheme", "w2g16"]
COMMON += ["--uniform", "w2g16,w4g16", "--n-boot", "200"]


@pytest.fixture(scope="module")
def searched(saved_model, tmp_path_factory):
    """One frontier search on the tiny llama, run twice (determinism)."""
    model = saved_model("llama")
    outs = []
    for k in range(2):
        d = tmp_path_factory.mktemp("search") / f"s{k}"
        args = ["search", "--model", str(model), "--frontier", "3,13", *COMMON, "--out", str(d), "--target", "1e-9"]
        from quant_disparity.cli import main

        with pytest.raises(SystemExit) as e:
            main(args)
            raise SystemExit(0)
        assert (e.value.code or 0) == 0
        outs.append(d)
    return model, outs


def _data(d):
    return json.loads((d / "search.json").read_text())


def _stable(data):
    out = dict(data)
    out.pop("timing")
    out.pop("environment")
    return out


def test_search_writes_plans_table_and_figure_and_is_deterministic(searched):
    _, (a, b) = searched
    for name in ("search.json", "search.md", "pareto.png", "plan-1.toml", "plan-2.toml"):
        assert (a / name).is_file()
    assert _stable(_data(a)) == _stable(_data(b))
    data = _data(a)
    kinds = {r["kind"] for r in data["table"]}
    assert kinds == {"searched", "uniform", "structural"}
    for p in data["points"]:
        assert p["target"] == {"value": 1e-9, "reached": False}  # out of reach: said, not an error


def test_report_of_a_search_directory_shows_the_frontier_in_a_browser(searched, tmp_path, capsys):
    _, (a, _) = searched
    out = tmp_path / "r.html"
    code, _, err = run_cli(["report", str(a), "--out", str(out)], capsys)
    assert code == 0, err
    page = out.read_text()
    data = _data(a)
    assert page.count("<img ") == 1 and "http://" not in page and "https://" not in page
    # every evaluated plan of search.json is a row of the page's frontier table, with its bits
    for r in data["table"]:
        assert f"<td>{r['name']}" in page and f"{r['bits_per_universe_weight']:.3f}" in page
    chromium_images_loaded(page, tmp_path)
    md = tmp_path / "r.md"
    code, _, err = run_cli(["report", str(a), "--format", "md", "--out", str(md)], capsys)
    assert code == 0 and md.read_text() == (a / "search.md").read_text()
    code, _, err = run_cli(["report", str(a), "--format", "latex", "--out", str(tmp_path / "r.tex")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "r.tex").exists()


def test_selection_and_heldout_documents_never_overlap(searched):
    _, (a, _) = searched
    docs = _data(a)["documents"]
    for lang, ids in docs["selection"].items():
        assert ids and docs["heldout"][lang]
        assert not set(ids) & set(docs["heldout"][lang])
        assert all(split_of(i) == "select" for i in ids)
        assert all(split_of(i) == "heldout" for i in docs["heldout"][lang])


def test_chosen_plans_respect_the_budget_by_the_bit_accounting(searched):
    from transformers import AutoModelForCausalLM

    model, (a, _) = searched
    mm = build_module_map(AutoModelForCausalLM.from_pretrained(model))
    data = _data(a)
    budgets = []
    for p in data["points"]:
        plan = Plan.from_toml((a / p["plan_file"]).read_text())
        assignment = plan.resolve(mm).assignment()
        # bits by the engine's cost() (its own per-tensor sum over the block Linear weights)
        bits = cost(mm, assignment)["bits_per_block_linear_weight"]
        assert bits <= p["budget"] + 1e-9
        assert bits == pytest.approx(p["bits_per_universe_weight"], rel=1e-12)
        # the plan keeps exactly the units it names, quantizes the rest of the universe
        kept = {t for t in mm.default_targets() if t not in assignment}
        named = {t for t in mm.default_targets() if any(t.startswith(f"model.layers.{u[1:]}.") for u in p["units"])}
        assert kept == named
        budgets.append(bits)
    base = cost(mm, {t: parse_scheme("w2g16") for t in mm.default_targets()})["bits_per_block_linear_weight"]
    assert data["universe"]["base_bits_per_weight"] == pytest.approx(base, rel=1e-12)
    assert budgets[1] > base  # the larger budget protects something


def test_heldout_numbers_equal_a_separate_audit_of_the_plan_file(searched, tmp_path, capsys):
    model, (a, _) = searched
    data = _data(a)
    p = data["points"][1]
    code, _, err = run_cli(
        [
            "audit",
            "--model",
            str(model),
            "--plan",
            str(a / p["plan_file"]),
            "--langs",
            LANGS,
            "--split",
            "heldout",
            "--max-tokens",
            "200",
            "--min-docs",
            "5",
            "--n-boot",
            "200",
            "--out",
            str(tmp_path / "audit"),
        ],
        capsys,
    )
    assert code == 0, err
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    for row in audit["languages"]:
        mine = p["heldout"]["languages"][row["lang"]]["value"]
        assert mine == pytest.approx(row["rel_delta_bpb"]["value"], rel=1e-5, abs=1e-9)
    ids = {d["lang"]: [] for d in audit["documents"]}
    for d in audit["documents"]:
        ids[d["lang"]].append(d["doc_id"])
    assert ids == data["documents"]["heldout"]


def test_export_accepts_the_written_plan(searched, capsys):
    model, (a, _) = searched
    code, out, err = run_cli(["export", str(a / "plan-2.toml"), "--model", str(model), "--to", "llmcompressor"], capsys)
    assert code == 0, err
    kept = _data(a)["points"][1]["units"]
    assert kept and all(f"layers.{u[1:]}." in out for u in kept)  # the kept layers are named (ignored)


# -- bad input -------------------------------------------------------------------------------------------------------
def test_budget_below_the_base_scheme_is_one_line_and_writes_nothing(saved_model, tmp_path, capsys):
    out = tmp_path / "none"
    model = saved_model("llama")
    capsys.readouterr()
    code, _, err = run_cli(["search", "--model", str(model), "--budget-bits", "2", *COMMON, "--out", str(out)], capsys)
    assert code == 2
    # (the model is loaded first: the cost of the base scheme needs its tensors; transformers' own
    # "Loading weights" bar is not ours)
    lines = [x for x in err.strip().splitlines() if "Loading weights" not in x]
    assert len(lines) == 1 and lines[0].startswith("error: budget 2 bits per weight is below what the base scheme")
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget-bits", "4", "--objective", "worts"], "did you mean 'worst'"),
        (["--budget-bits", "4", "--budget-params", "100"], "exactly one of"),
        ([], "exactly one of"),
        (["--budget-bits", "4", "--granularity", "heads"], "unknown granularity"),
        (["--budget-bits", "4", "--objective", "disparity", "--langs", "eng,fra"], "low- and one high-resource"),
    ],
)
def test_bad_options_are_one_line_errors(args, message, saved_model, tmp_path, capsys):
    out = tmp_path / "none"
    model = saved_model("llama")
    capsys.readouterr()
    code, _, err = run_cli(["search", "--model", str(model), *args, "--out", str(out)], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_out_never_overwrites_without_overwrite(searched, capsys):
    model, (a, _) = searched
    before = (a / "search.json").read_bytes()
    code, _, err = run_cli(["search", "--model", str(model), "--budget-bits", "4", *COMMON, "--out", str(a)], capsys)
    assert code == 2 and "already holds search.json" in err
    assert (a / "search.json").read_bytes() == before


def test_corpus_split_has_heldout_documents_for_the_panel():
    c = load_udhr()
    for lang in ("eng_Latn", "heb_Hebr", "amh_Ethi"):
        assert sum(split_of(d.id) == "heldout" for d in c.documents(lang)) >= 5


@pytest.mark.parametrize("granularity", ["layer", "component", "layer×component"])
@pytest.mark.parametrize("protect", [None, "w8g16"])
def test_knapsack_and_greedy_plans_cost_exactly_what_the_accounting_says(granularity, protect):
    """Unit costs add up to the resolved plan's bits (cost(), an independent per-tensor sum), the chosen set fits
    the budget, and the written plan protects exactly the chosen units' tensors."""
    from conftest import tiny_model

    from quant_disparity.locate import make_units
    from quant_disparity.protect.search import plan_for, unit_costs

    mm = build_module_map(tiny_model("llama"))
    universe = mm.default_targets()
    units = make_units(mm, universe, granularity)
    base = parse_scheme("w2g16")
    prot = None if protect is None else parse_scheme(protect)
    costs = unit_costs(mm, universe, units, base, prot)
    rng = np.random.default_rng(0)
    n = costs.universe_params
    for budget in (costs.base_bits_per_weight + 0.4, costs.base_bits_per_weight + 3.0, 12.0):
        cap = costs.capacity(budget, "bits")
        gains = rng.uniform(0, 1, len(units))
        for chosen in (
            knapsack(gains, costs.unit_bits, cap),
            greedy(rng.uniform(0, 0.3, 2), rng.uniform(0, 0.05, (len(units), 2)), costs.unit_bits, cap, "worst"),
        ):
            picked = [units[i] for i in chosen]
            resolved = plan_for(mm, universe, picked, base, prot, granularity)
            bits = cost(mm, resolved.assignment())["bits_per_block_linear_weight"] * n
            assert bits == pytest.approx(costs.base_bits + costs.unit_bits[chosen].sum(), rel=1e-12)
            assert bits / n <= budget + 1e-12
            assignment = Plan.parse(str(resolved.plan)).resolve(mm).assignment()  # the compact form, re-read
            protected = {t for u in picked for t in u.tensors}
            for t in universe:
                expected = prot if t in protected else base
                assert assignment.get(t) == expected
    # a parameter budget counts parameters
    assert list(costs.costs("params")) == [u.n_params for u in units]
    with pytest.raises(Exception, match="below what the base scheme itself costs"):
        costs.capacity(costs.base_bits_per_weight - 0.01, "bits")


def test_parameter_budget_with_a_higher_precision_scheme(saved_model, tmp_path, capsys):
    """--budget-params with --protect w8g16 by component: the plan protects at most that many parameters, at
    w8g16, and the disparity objective runs (eng high-resource; heb, amh low-resource)."""
    from transformers import AutoModelForCausalLM

    model = saved_model("llama")
    mm = build_module_map(AutoModelForCausalLM.from_pretrained(model))
    mlp = sum(p.numel for p in mm.params if p.name in mm.default_targets() and "mlp" in p.name)
    out = tmp_path / "p"
    args = ["search", "--model", str(model), "--budget-params", str(mlp), "--protect", "w8g16"]
    args += ["--granularity", "component", "--objective", "disparity", *COMMON, "--out", str(out)]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    data = _data(out)
    (p,) = data["points"]
    assignment = Plan.from_toml((out / "plan.toml").read_text()).resolve(mm).assignment()
    w8 = [t for t, s in assignment.items() if s == parse_scheme("w8g16")]
    assert sum(mm[t].numel for t in w8) == p["protected_params"] <= mlp
    assert set(assignment) == set(mm.default_targets())  # nothing kept: protected means w8g16 here
    assert data["objective"]["name"] == "disparity"
