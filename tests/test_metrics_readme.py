"""The README's metrics table lists every metric the server exports, and only those."""

from __future__ import annotations

import re

from prometheus_client.metrics import MetricWrapperBase

from packetbus_server._observability import metrics
from packetbus_server._observability.store_metrics import METRIC_NAMES
from tests.conftest import REPO


def _exported() -> dict[str, str]:
    """Name -> type of every metric metrics.py defines and StoreCollector gives, as
    scraped (a counter's name with its _total)."""
    found: dict[str, str] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                suffix = "_total" if family.type == "counter" else ""
                found[family.name + suffix] = family.type
    found.update(dict.fromkeys(METRIC_NAMES, "gauge"))
    return found


def _table() -> dict[str, tuple[str, str]]:
    """Name -> (type, labels) of each row of README's "### Metrics" table."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n### Metrics\n", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| (\w+) \|([a-z_, ]*)\|", section, re.M)
    return {name: (kind, labels.strip()) for name, kind, labels in rows}


def test_the_readme_table_lists_every_exported_metric_with_its_type_and_nothing_else() -> None:
    table = _table()
    exported = _exported()
    assert sorted(table) == sorted(exported)
    assert {name: kind for name, (kind, _) in table.items()} == exported


def test_the_readme_table_gives_each_metrics_labels() -> None:
    table = _table()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            [family] = value.describe()
            name = family.name + ("_total" if family.type == "counter" else "")
            labels = ", ".join(value._labelnames)
            assert table[name][1] == labels, name


# PromQL functions meant for one metric type (Prometheus documentation, "Functions").
_COUNTER_ONLY = ("rate", "increase", "irate")
_GAUGE_ONLY = ("delta", "deriv", "idelta")


def _alerts() -> list[str]:
    """The PromQL of each row of README's "### What to alert on" table."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n### What to alert on\n", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| [^|`]+ \| (.+) \|$", section, re.M)
    assert len(rows) >= 9, rows
    return [q.replace("\\|", "|") for row in rows for q in re.findall(r"`([^`]+)`", row)]


def test_the_readme_alerts_name_exported_metrics_labels_and_functions_of_their_type() -> None:
    table = _table()
    queries = [q for q in _alerts() if re.search(r"\b(grpc_server|packetbus)_", q)]
    assert len(queries) >= 9, queries
    for query in queries:
        names = re.findall(r"\b((?:grpc_server|packetbus)_[a-z_]+)", query)
        for name in names:
            assert name in table, (query, name)
        labels = {label for name in names for label in table[name][1].split(", ") if label}
        used = re.findall(r"\b([a-z_]+)=~?\"", query)
        for group in re.findall(r"\b(?:by|without) \(([a-z_, ]+)\)", query):
            used += [label.strip() for label in group.split(",")]
        assert set(used) <= labels, (query, used, labels)
        for function, name in re.findall(
            r"\b([a-z_]+)\(((?:grpc_server|packetbus)_[a-z_]+)", query
        ):
            kind = table[name][0]
            assert not (function in _COUNTER_ONLY and kind != "counter"), query
            assert not (function in _GAUGE_ONLY and kind != "gauge"), query
