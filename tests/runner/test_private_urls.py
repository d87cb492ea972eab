"""Dataset addresses before launch (issue 22, finding 10): http(s) only, and no loopback, link-local, private,
unspecified or local-name host unless the plan says `allow_private_urls: true` - judged as written, in every
notation the socket layer would take as an address, without a DNS lookup. The refusals through `budget run`
and `budget eval` are in test_untrusted_plans.py; this is the rule itself and the plan's switch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from planner.errors import InputError
from planner.plans import load_plan
from runner import plandata
from runner.worker.downloads import check_url
from runner.worker.sample import DatasetError

REPO = Path(__file__).resolve().parents[2]

REFUSED = [
    "http://127.0.0.1/m.jsonl", "http://127.9.9.9/", "http://2130706433/", "http://0x7f000001/", "http://0x7f.1/",
    "http://0177.0.0.1/", "http://017700000001/", "http://127.1/", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
    "http://[0:0:0:0:0:0:0:1]/", "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/", "http://10.0.0.1/", "http://172.16.3.4/", "http://172.31.255.255/",
    "http://192.168.1.1/", "http://[fc00::1]/", "http://[fd12:3456::1]/", "http://0.0.0.0/", "http://0/",
    "http://[::]/", "http://localhost/", "http://LOCALHOST./", "http://a.localhost:8080/", "http://user@127.0.0.1/",
    "https://127.0.0.1:443/", "http://224.0.0.1/",
]
OTHER_SCHEMES = ["file:///etc/passwd", "ftp://example.com/m.jsonl", "gopher://example.com/m", "data:,hello",
                 "jar:http://example.com/x!/y", "//example.com/m.jsonl", "m.jsonl"]
PUBLIC = ["https://example.com/m.jsonl", "HTTP://images.cocodataset.org/", "http://8.8.8.8/x",
          "http://[2001:4860:4860::8888]/x", "http://172.32.0.1/", "https://datasets-server.huggingface.co/rows"]


@pytest.mark.parametrize("url", REFUSED)
def test_private_and_local_hosts_are_refused_unless_allowed(url):
    with pytest.raises(DatasetError, match="is a private or local address"):
        check_url(url)
    check_url(url, allow_private=True)  # a mirror on your own network, when the plan says so


@pytest.mark.parametrize("url", OTHER_SCHEMES)
def test_only_http_and_https_are_fetched_even_when_private_urls_are_allowed(url):
    with pytest.raises(DatasetError, match="only http"):
        check_url(url, allow_private=True)


@pytest.mark.parametrize("url", PUBLIC)
def test_public_http_addresses_pass(url):
    check_url(url)


def test_a_malformed_address_is_one_refusal(tmp_path):
    with pytest.raises(DatasetError, match="not a valid address"):
        check_url("http://[::1/m.jsonl")
    with pytest.raises(DatasetError, match="no host"):
        check_url("http:///m.jsonl")


def _plan(tmp_path: Path, allow: bool | None, dataset: dict, manifest: list[dict] | None = None) -> Path:
    doc = yaml.safe_load((REPO / "plans" / "smoke.yaml").read_text())
    doc["tasks"] = [dict(doc["tasks"][0], dataset=dataset)]
    if allow is not None:
        doc["allow_private_urls"] = allow
    if manifest is not None:
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in manifest))
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("dataset", [{"kind": "url", "url": "http://127.0.0.1:8000/m.jsonl"},
                                     {"kind": "builtin", "name": "coco-val2017-captions", "url": "http://10.0.0.5/"}])
def test_the_plan_allows_private_urls_for_its_mirrors(tmp_path, dataset):
    refused = _plan(tmp_path, None, dataset)
    with pytest.raises(InputError) as e:
        plandata.require(load_plan(refused), refused)
    assert "is a private or local address" in e.value.message and "allow_private_urls: true" in e.value.hint
    allowed = _plan(tmp_path, True, dataset)
    plandata.require(load_plan(allowed), allowed)  # nothing else is checked before launch for a URL dataset


def test_a_url_in_a_local_manifest_is_refused_even_when_private_urls_are_allowed(tmp_path):
    """The worker reads a local manifest's media from the files pushed beside it: a URL there would only be
    a missing file on the instance, after billing."""
    plan = _plan(tmp_path, True, {"kind": "local", "path": "data/m.jsonl"},
                 [{"id": "a", "image": "http://127.0.0.1:8000/a.png", "references": ["x"]}])
    with pytest.raises(InputError, match="a local manifest names files beside it"):
        plandata.require(load_plan(plan), plan)


def test_allow_private_urls_is_off_unless_the_plan_says_so():
    assert load_plan(REPO / "plans" / "smoke.yaml").allow_private_urls is False
