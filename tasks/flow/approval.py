"""A release's approval through Airflow's human-in-the-loop REST API: the pending approvals of
`fleet_release` runs, answered from a terminal (`slimline release approve`) as the UI's Required
Actions page would, and the answer as the DAG records it (who, when, or a timeout)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from pydantic import BaseModel

from tasks.core.errors import ConfigError, OrchestrationError

DAG_ID = "fleet_release"
APPROVAL_TASK = "approve_release"
PUBLISH_TASK = "publish_release"
APPROVE, REJECT = "Approve", "Reject"


class ApprovalAnswer(BaseModel):
    """What the approval task returned: approved or not, by whom and when. A timeout chooses the
    default (Reject) with no user."""

    approved: bool
    by: str | None
    at: datetime | None
    comment: str = ""
    timed_out: bool


def approval_answer(result: Mapping[str, Any]) -> ApprovalAnswer:
    """The ApprovalOperator's return value ({chosen_options, params_input, responded_at,
    responded_by_user}) as an answer."""
    user = result.get("responded_by_user") or None
    name = (user.get("name") or user.get("id")) if isinstance(user, Mapping) else user
    at = result.get("responded_at")
    return ApprovalAnswer(
        approved=list(result.get("chosen_options") or []) == [APPROVE],
        by=str(name) if name else None,
        at=datetime.fromisoformat(at) if isinstance(at, str) else at,
        comment=str((result.get("params_input") or {}).get("comment") or ""),
        timed_out=name is None,
    )


class PendingApproval(BaseModel):
    dag_run_id: str
    fleet: str
    release: int
    model_version: str
    subject: str


class AirflowApi:
    """Airflow's REST API at `base_url`; with `user`, a token from the simple auth manager's
    /auth/token (without, the API must allow anonymous admins)."""

    def __init__(self, base_url: str, user: str | None = None, password: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.user, self.password = user, password
        self._token: str | None = None

    def _send(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth and self.user:
            headers["Authorization"] = f"Bearer {self._login()}"
        request = urllib.request.Request(
            f"{self.base_url}{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers=headers,
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            hint = (
                "; log in with --user (an embedded Airflow writes its users' passwords to "
                "<home>/airflow/simple_auth_manager_passwords.json.generated)"
                if exc.code in (401, 403)
                else ""
            )
            raise OrchestrationError(f"Airflow API {method} {path}: HTTP {exc.code} {detail}{hint}") from None
        except OSError as exc:
            raise OrchestrationError(f"Airflow API at {self.base_url} is unreachable ({exc})") from None

    def _login(self) -> str:
        if self._token is None:
            answer = self._send(
                "POST", "/auth/token", {"username": self.user, "password": self.password or ""}, auth=False
            )
            self._token = str(answer["access_token"])
        return self._token

    def get(self, path: str, **query: Any) -> Any:
        return self._send("GET", f"{path}?{urlencode(query)}" if query else path)

    def patch(self, path: str, body: Any) -> Any:
        return self._send("PATCH", path, body)


def _run_path(run_id: str) -> str:
    return f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}"


def _published(api: AirflowApi, run_id: str) -> dict[str, Any]:
    entry = api.get(f"{_run_path(run_id)}/taskInstances/{PUBLISH_TASK}/xcomEntries/return_value")
    value = entry.get("value")
    return json.loads(value) if isinstance(value, str) else dict(value)


def pending_approvals(api: AirflowApi) -> list[PendingApproval]:
    """Every fleet_release run waiting for an answer, with the release it would send."""
    details = api.get(
        f"/api/v2/dags/{DAG_ID}/dagRuns/~/hitlDetails", task_id=APPROVAL_TASK, response_received="false"
    )
    pending = []
    for detail in details.get("hitl_details", []):
        run_id = detail["task_instance"]["dag_run_id"]
        published = _published(api, run_id)
        pending.append(
            PendingApproval(
                dag_run_id=run_id,
                fleet=published["fleet"],
                release=int(published["release"]),
                model_version=published["model_version"],
                subject=detail.get("subject", ""),
            )
        )
    return pending


def answer_approval(
    api: AirflowApi, fleet: str, release: int | None, *, approve: bool, comment: str = ""
) -> PendingApproval:
    """Approve or reject the pending release of `fleet` (the one numbered `release`, when given)."""
    pending = [p for p in pending_approvals(api) if p.fleet == fleet and release in (None, p.release)]
    if not pending:
        raise ConfigError(
            f"no release of fleet {fleet}{f' numbered {release}' if release else ''} is waiting for approval"
        )
    if len(pending) > 1:
        numbers = ", ".join(str(p.release) for p in pending)
        raise ConfigError(f"releases {numbers} of fleet {fleet} wait for approval; name one with --release")
    (chosen,) = pending
    api.patch(
        f"{_run_path(chosen.dag_run_id)}/taskInstances/{APPROVAL_TASK}/-1/hitlDetails",
        {"chosen_options": [APPROVE if approve else REJECT], "params_input": {"comment": comment}},
    )
    return chosen
