"""What runs beside a deployment, in its pods or next to its queue: the SQS worker and its metrics, ``reconcile``
(the backstop for lost uploads and stuck jobs), ``kfp_trigger`` (one Kubeflow run per upload) and ``doctor``
(checks a cluster before a deploy)."""
