"""The free Colab offer: a bundled 0 CNY T4 whose terms (offers/colab.terms.csv) declare it `manual` - a person
runs it - so the optimizer never ranks it over a rig that runs alone unless asked for by name, and `budget plan`
shows it apart with its limits (each with its source and date) and the command that uses it."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal

import pytest

from planner.catalog import ProviderTerms, load_catalog, read_terms
from planner.errors import CatalogError
from planner.optimize import optimize
from planner.plans import load_plan

CAT = load_catalog()
SMOKE = load_plan("plans/smoke.yaml")
SPEC = CAT.model(SMOKE.model)


def test_the_terms_are_data_each_limit_with_a_source_and_a_date():
    t = CAT.terms["colab"]
    assert t.manual and t.session_hours == 12 and t.usage("p.yaml") == "budget colab p.yaml -o plan.ipynb"
    facts = {x.fact: x for x in t.limits}
    assert {"GPU", "session length", "idle timeout", "GPU availability", "SSH", "unattended"} <= set(facts)
    assert all(x.source and x.date == "2026-12-07" for x in t.limits)
    assert "faq.html" in facts["session length"].source and facts["idle timeout"].value.startswith("unknown")
    assert "15360 MiB" in facts["GPU"].value and facts["SSH"].value.startswith("none")
    assert CAT.manual() == {"colab"}
    (offer,) = [o for o in CAT.offers if o.provider == "colab"]
    assert (offer.id, offer.gpu, offer.price, offer.billing_minimum_s) == ("colab:free-T4", "T4", Decimal(0), 0)


def test_never_recommended_by_default_even_at_zero_cost():
    got = optimize(SMOKE, SPEC, CAT, Decimal(5)).report
    assert got.recommendation.provider != "colab"
    assert all(a.provider != "colab" for a in got.alternatives)
    assert not [r for r in got.rejected if r.example.startswith("colab:")]


def test_asked_for_by_name_it_is_recommended():
    got = optimize(SMOKE, SPEC, CAT, Decimal(5), providers=["colab"]).report
    assert (got.recommendation.provider, got.recommendation.cost_cny) == ("colab", Decimal(0))
    both = optimize(SMOKE, SPEC, CAT, Decimal(5), providers=["colab", "aws"]).report
    assert both.recommendation.provider == "colab"  # asked for: free ranks first


def test_a_catalog_of_only_manual_offers_says_how_to_plan_it():
    only = dataclasses.replace(CAT, offers=[o for o in CAT.offers if o.provider == "colab"])
    with pytest.raises(CatalogError) as e:
        optimize(SMOKE, SPEC, only, Decimal(5))
    assert "a person runs" in e.value.message and "--provider colab" in e.value.hint


def test_without_terms_a_provider_is_an_ordinary_one():
    plain = dataclasses.replace(CAT, terms={})
    got = optimize(SMOKE, SPEC, plain, Decimal(5)).report
    assert got.recommendation.provider == "colab"  # 0 CNY: only the declared terms keep it out of the ranking


@pytest.mark.parametrize("text, why", [
    ("provider,fact,value,source,date\ncolab,manual,maybe,s,d\n", "manual is yes or no"),
    ("provider,fact,value,source,date\ncolab,GPU,T4,,2026-01-01\n", "needs a value, a source and a date"),
    ("provider,fact,value,source,date\na,manual,yes,s,d\nb,manual,yes,s,d\n", "one provider"),
    ("provider,fact,value,source,date\ncolab,session_hours,lots,s,d\n", "session_hours"),
    ("provider,fact,value\ncolab,manual,yes\n", "header lacks"),
])
def test_a_bad_terms_file_is_refused_with_its_line(text, why):
    with pytest.raises(CatalogError) as e:
        read_terms(text, "x.terms.csv")
    assert why in e.value.message


def test_a_users_terms_replace_the_bundled_ones(budget_home):
    d = budget_home / "catalog" / "offers"
    d.mkdir(parents=True)
    (d / "colab.terms.csv").write_text("provider,fact,value,source,date\ncolab,manual,no,mine,2027-01-01\n"
                                       "colab,session_hours,unknown,mine,2027-01-01\n")
    cat = load_catalog(budget_home / "catalog")
    assert cat.terms["colab"] == ProviderTerms("colab", manual=False, limits=cat.terms["colab"].limits)
    assert cat.manual() == set() and str(d / "colab.terms.csv") in cat.files
    assert [o.id for o in cat.offers if o.provider == "colab"] == ["colab:free-T4"]  # not read as offers


def test_plan_shows_it_apart_with_limits_and_command(cli):
    code, out, err = cli("plan", "--plan", "plans/smoke.yaml")
    assert code == 0, err
    ranked, free = out.split("Free, if you run it yourself")
    assert "Recommended:" in ranked and "colab" not in ranked
    assert "Run it: budget run plans/smoke.yaml" in ranked  # the recommendation is still a rig that runs alone
    assert "colab:free-T4 — T4 x1" in free and "0.00 CNY" in free
    assert "session length: at most 12 h (source: Colab FAQ" in free and "idle timeout: unknown" in free
    assert "use it: budget colab plans/smoke.yaml -o plan.ipynb" in free
    code, out, _ = cli("plan", "--plan", "plans/smoke.yaml", "--provider", "aws")
    assert code == 0 and "Free, if you run it yourself" not in out  # providers named: only those


def test_a_plan_too_big_for_its_card_says_why(cli):
    code, out, err = cli("plan", "--plan", "plans/qwen3-vl-8b.yaml", "--yuan", "2000", "--quant", "bf16")
    assert code == 0, err
    assert "colab: the plan cannot run there (" in out.split("Free, if you run it yourself")[1]


def test_plan_provider_colab_recommends_it_with_its_command(cli):
    code, out, err = cli("plan", "--plan", "plans/smoke.yaml", "--provider", "colab")
    assert code == 0, err
    assert "Recommended: colab free-T4" in out and "it runs free of charge" in out
    assert "note: unattended: no" in out and "note: SSH: none" in out
    assert "Run it: budget colab plans/smoke.yaml -o plan.ipynb" in out
    assert "budget import RESULTS.zip --plan plans/smoke.yaml" in out
    code, out, _ = cli("plan", "--plan", "plans/smoke.yaml", "--provider", "colab", "--json")
    doc = json.loads(out)
    assert doc["recommendation"]["provider"] == "colab" and doc["next"]["command"].startswith("budget colab ")
    assert any(n.startswith("session length") for n in doc["recommendation"]["notes"])


def test_plan_json_is_the_ranking_alone(cli):
    code, out, err = cli("plan", "--plan", "plans/smoke.yaml", "--json", "--top", "3")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["recommendation"]["provider"] != "colab" and len(doc["alternatives"]) == 2
    assert all(a["provider"] != "colab" for a in doc["alternatives"])
