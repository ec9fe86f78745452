"""A gate on firing Prometheus alerts, through the HTTP query API (``ALERTS``), as kured does:
alerts whose name matches ``alert_filter`` are ignored, or, with ``match_only``, only those block."""

from __future__ import annotations

import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from rebootcoord.core.documents import load_object, quoted
from rebootcoord.errors import CorruptDocument, clipped
from rebootcoord.ports import CheckResult

QUERY = 'ALERTS{alertstate="firing"}'
MAX_ANSWER = 4 * 1024 * 1024  # bytes read of an answer


@dataclass
class FiringAlerts:
    url: str
    alert_filter: str = ""
    match_only: bool = False
    timeout: float = 10.0
    name: str = "prometheus-alerts"

    def check(self) -> CheckResult:
        endpoint = self.url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": QUERY})
        try:
            # The configuration accepts only http:// and https:// URLs (p_opt_url).
            with urllib.request.urlopen(endpoint, timeout=self.timeout) as resp:  # noqa: S310
                raw = resp.read(MAX_ANSWER + 1)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            # Unknown is not "no alerts": a blind gate must not wave a reboot through.
            return CheckResult(False, self.name, f"cannot query {self.url}: {clipped(str(exc))}")
        try:
            names = _firing(raw)
        except CorruptDocument as exc:
            return CheckResult(False, self.name, f"{self.url} gave an answer not understood: {exc.reason}")
        pattern = re.compile(self.alert_filter) if self.alert_filter else None
        if pattern is not None:
            names = [n for n in names if bool(pattern.search(n)) == self.match_only]
        elif self.match_only:
            names = []
        if names:
            return CheckResult(False, self.name, "firing alerts: " + ", ".join(names[:10]))
        return CheckResult(True, self.name)


def _firing(raw: bytes) -> list[str]:
    """The names of the firing alerts in a query answer; any other answer is CorruptDocument
    (the gate fails closed: an answer it cannot read is not "no alerts")."""
    if len(raw) > MAX_ANSWER:
        raise CorruptDocument("answer", f"more than {MAX_ANSWER} bytes")
    doc = load_object(raw, "answer")
    if doc.get("status") != "success":
        raise CorruptDocument("answer", f"status {quoted(doc.get('status'))}: {quoted(doc.get('error'))}")
    data = doc.get("data")
    result = data.get("result") if isinstance(data, dict) else None
    if not isinstance(result, list) or not all(isinstance(r, dict) for r in result):
        raise CorruptDocument("answer", f"no list of series at data.result: {quoted(data)}")
    names = set()
    for series in result:
        metric = series.get("metric")
        name = metric.get("alertname") if isinstance(metric, dict) else None
        names.add(clipped(str(name), 100) if isinstance(name, str) and name else "?")
    return sorted(names)
