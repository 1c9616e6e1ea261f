"""A moto server that enforces IAM, in its own process: ``python -m tests.moto_iam_server`` prints ``PORT <n>``
and serves on 127.0.0.1 until its stdin closes.

``INITIAL_NO_AUTH_ACTION_COUNT`` is read by moto at import (moto/settings.py), so it has to be in this process's
environment: the caller sets it (the number of requests moto lets through unsigned before it checks every one).

One change to moto, in the direction of AWS: moto authorizes DynamoDB requests against the resource ``*``
(moto/core/responses.py, ``call_action``: only handlers with ``_determine_resource``, SQS and IAM among them,
name a resource), so a policy scoped to table ARNs, as IAM requires, would be refused everything. Here DynamoDB
requests name the table (and the index for a Query on one), as IAM's authorization reference for DynamoDB does,
so the tables a policy names are enforced too.

Likewise for SQS's GetQueueUrl, which names its queue by ``QueueName``: moto looks only for ``QueueUrl``
(moto/sqs/responses.py, ``_determine_resource``) and judges it against ``*``; here it names the queue's ARN, as IAM
does, so the Argo EventSource's first call (GetQueueUrl by name) is judged by the policy's queue statement.

And one more: moto 5.2 authorizes an S3 request by its API operation's name (``s3:HeadObject``,
``s3:ListObjectsV2``, ``s3:UploadPart``...; moto/core/responses.py, ``_get_action``), names that are not IAM
actions. AWS authorizes them with the permissions its S3 documentation lists per operation ("Actions, resources,
and condition keys for Amazon S3"): HEAD with s3:GetObject, a listing with s3:ListBucket, each step of a multipart
upload with s3:PutObject. The server maps them so that a policy written with real IAM actions is judged as AWS
would judge it.

With ``STEREO_SPOT_IAM_RECORD`` set to a file, every request that is allowed adds a JSON line there: the user,
the IAM action, the resource and the ``Sid`` of each of the user's statements that allows it on its own, with the
``s3:prefix`` condition of a listing judged here as IAM would (moto ignores it). A
statement that is the only one allowing some request is needed: without it that request is denied. The test
reads the file to show that every statement of every generated policy is needed by the identity's real work.
"""

from __future__ import annotations

import logging
import os
import sys


def _dynamodb_resource(self) -> str:
    body = getattr(self, "body", None) or {}
    table = body.get("TableName") or next(iter(body.get("RequestItems") or {}), None)
    if not table:
        return "*"  # ListTables and friends: no table in the request
    arn = f"arn:aws:dynamodb:{self.region}:{self.current_account}:table/{table}"
    return f"{arn}/index/{body['IndexName']}" if body.get("IndexName") else arn


def _sqs_resource(determine):
    def wrapped(self) -> str:
        found = determine(self)
        name = self._get_param("QueueName") if found == "*" else None
        if name:
            try:
                return self.sqs_backend.get_queue(name).queue_arn
            except Exception:  # noqa: BLE001 - no such queue: moto answers that after authorizing "*"
                return found
        return found
    return wrapped


S3_PERMISSIONS = {
    "HeadObject": "GetObject",
    "ListObjects": "ListBucket",
    "ListObjectsV2": "ListBucket",
    "HeadBucket": "ListBucket",
    "CreateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject",
    "DeleteObjects": "DeleteObject",
    "ListMultipartUploads": "ListBucketMultipartUploads",
    "ListParts": "ListMultipartUploadParts",
    "CopyObject": "PutObject",
}


def _s3_permission(init):
    def wrapped(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        service, _, operation = self._action.partition(":")
        self._action = f"{service}:{S3_PERMISSIONS.get(operation, operation)}"
    return wrapped


def _prefix_condition_holds(statement: dict, path: str) -> bool:
    """The ``s3:prefix`` condition of a ListBucket statement, which moto does not evaluate
    (moto/iam/policy_conditions.py), judged as IAM does: ``StringLike`` with ``*`` and ``?`` against the
    listing's ``prefix`` (absent: the empty string). Other conditions are left to moto."""
    from fnmatch import fnmatchcase
    from urllib.parse import parse_qs, urlsplit

    patterns = statement.get("Condition", {}).get("StringLike", {}).get("s3:prefix")
    if patterns is None:
        return True
    prefix = parse_qs(urlsplit(path).query).get("prefix", [""])[0]
    return any(fnmatchcase(prefix, pattern) for pattern in ([patterns] if isinstance(patterns, str) else patterns))


def _recording(check, record: str):
    """``IAMRequestBase.check_action_permitted`` that writes what allowed each allowed request (see above)."""
    import json
    import threading

    from moto.iam.access_control import IAMPolicy, IAMPolicyStatement, PermissionResult

    lock = threading.Lock()

    def wrapped(self, resource: str) -> None:
        check(self, resource)  # raises AccessDenied where the request is refused: nothing to record then
        allowing = []
        for policy in self._access_key.collect_policies():
            statements = IAMPolicy(policy)._policy_json["Statement"]  # moto's own reading of the document
            for statement in statements if isinstance(statements, list) else [statements]:
                if IAMPolicyStatement(statement).is_action_permitted(self._action, resource) \
                        == PermissionResult.PERMITTED and _prefix_condition_holds(statement, self._path):
                    allowing.append(statement.get("Sid", "?"))
        line = {"user": getattr(self._access_key, "_owner_user_name", None), "action": self._action,
                "resource": resource, "allowed_by": allowing}
        with lock, open(record, "a") as handle:
            handle.write(json.dumps(line) + "\n")
    return wrapped


def main() -> None:
    from moto.dynamodb.responses import DynamoHandler
    from moto.iam.access_control import S3IAMRequest
    from moto.server import ThreadedMotoServer
    from moto.sqs.responses import SQSResponse

    DynamoHandler._determine_resource = _dynamodb_resource
    SQSResponse._determine_resource = _sqs_resource(SQSResponse._determine_resource)
    S3IAMRequest.__init__ = _s3_permission(S3IAMRequest.__init__)
    record = os.environ.get("STEREO_SPOT_IAM_RECORD")
    if record:
        from moto.iam.access_control import IAMRequestBase

        IAMRequestBase.check_action_permitted = _recording(IAMRequestBase.check_action_permitted, record)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(f"PORT {server.get_host_and_port()[1]}", flush=True)
    sys.stdin.read()  # until the test closes the pipe (or dies)
    server.stop()


if __name__ == "__main__":
    main()
