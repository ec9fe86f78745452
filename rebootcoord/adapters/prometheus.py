"""A gate on firing Prometheus alerts, through the HTTP query API (``ALERTS``), as kured does:
alerts whose name matches ``alert_filter`` are ignored, or, with ``match_only``, only those block."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from rebootcoord.ports import CheckResult

QUERY = 'ALERTS{alertstate="firing"}'


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
                doc = json.load(resp)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            # Unknown is not "no alerts": a blind gate must not wave a reboot through.
            return CheckResult(False, self.name, f"cannot query {self.url}: {exc}")
        if doc.get("status") != "success":
            return CheckResult(
                False, self.name, f"{self.url} answered {doc.get('status')}: {doc.get('error')}"
            )
        names = sorted({str(r.get("metric", {}).get("alertname", "?")) for r in doc["data"]["result"]})
        pattern = re.compile(self.alert_filter) if self.alert_filter else None
        if pattern is not None:
            names = [n for n in names if bool(pattern.search(n)) == self.match_only]
        elif self.match_only:
            names = []
        if names:
            return CheckResult(False, self.name, "firing alerts: " + ", ".join(names[:10]))
        return CheckResult(True, self.name)
