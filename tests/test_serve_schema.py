"""The review service's API checked by schemathesis against its own OpenAPI schema: generated
requests to every operation, signed in as an admin with an API token, must never get a server
error (5xx), an undocumented status code or content type, or a body that breaks the schema."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a test dependency (pip install -e '.[test]')")

from schemathesis.checks import positive_data_acceptance  # noqa: E402

from medforensics.serve.app import create_app  # noqa: E402
from medforensics.serve.auth import hash_password, new_secret  # noqa: E402
from medforensics.serve.settings import ServeSettings  # noqa: E402
from medforensics.serve.store import Store  # noqa: E402

RECORD = {"path": "uploads/none.dcm", "kind": "image", "uid": "1.2.3", "n_instances": 1, "modality": "CT",
          "score": 0.9, "label": "manipulated", "provenance": "none",
          "evidence": [{"detector": "copy_move", "score": 0.9, "indicates": "manipulation", "confidence": "normal",
                        "explanation": "two regions match", "regions": [], "details": {}}],
          "assessed_by": ["copy_move"], "not_assessed": {}, "errors": [], "warnings": []}


def test_api_conforms_to_its_schema(tmp_path):
    with Store(tmp_path / "serve.sqlite") as store:
        store.add_user("admin", "admin", hash_password("admin-password-1"))
        token, h = new_secret()
        store.add_token("admin", "schemathesis", h)
        job = store.add_job("admin", "upload", total=1)
        store.add_item(job.id, path="uploads/none.dcm", name="none.dcm", source="scan", n_frames=1, record=RECORD)
    app = create_app(ServeSettings(data=tmp_path, quiz_per_kind=0).check(), run_jobs=False)
    auth = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    with TestClient(app):
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=auth)
        operations = 0
        for result in schema.get_all_operations():
            operation = result.ok()
            # revoking the test's own token would leave every later call with 401
            if operation.method.upper() == "DELETE" and operation.path.startswith("/api/tokens/"):
                continue
            operations += 1

            # an upload's files must be images by their first bytes, which a schema cannot say: a
            # generated "valid" file is refused with 415, as it should be
            excluded = [positive_data_acceptance] if operation.path == "/api/jobs" else []

            @given(case=operation.as_strategy())
            @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                      derandomize=True)   # the same cases on every run: CI reproduces what it finds
            def check(case) -> None:
                case.call_and_validate(headers=auth, excluded_checks=excluded)

            try:
                check()
            except Exception as e:  # noqa: BLE001 - gather every operation's failure, then report them all
                failures.append(f"{operation.method.upper()} {operation.path}: {str(e)[:1500]}")
    assert operations >= 20
    assert not failures, "\n\n".join(failures)
