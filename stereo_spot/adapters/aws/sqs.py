"""SQS queues: the S3 event queue the worker long-polls (and its dead-letter queue)."""

from __future__ import annotations

from typing import Any

from stereo_spot.adapters.aws.clients import AwsClients, aws_errors
from stereo_spot.ports import QueueMessage, QueueReceiver, QueueSender

MAX_WAIT_SECONDS = 20  # SQS long polls for 20 s at most
MAX_BATCH = 10
MAX_VISIBILITY_SECONDS = 12 * 3600


class SqsQueue(QueueSender, QueueReceiver):
    def __init__(self, clients: AwsClients, queue_url: str):
        if not queue_url:
            raise ValueError("no queue URL: set CHUNKING_QUEUE_URL (printed by `stereo-spot aws bootstrap`)")
        self.clients, self.queue_url = clients, queue_url

    @property
    def _sqs(self) -> Any:
        return self.clients.client("sqs")

    def _errors(self, what: str):
        return aws_errors(self.clients, "sqs", f"{what} (queue {self.queue_url})")

    def send(self, body: str) -> str:
        with self._errors("sending a message"):
            return self._sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)["MessageId"]

    def receive(self, max_messages: int = 1, wait_seconds: int = 20,
                visibility_timeout: int | None = None) -> list[QueueMessage]:
        request: dict[str, Any] = {
            "QueueUrl": self.queue_url,
            "MaxNumberOfMessages": max(1, min(max_messages, MAX_BATCH)),
            "WaitTimeSeconds": max(0, min(wait_seconds, MAX_WAIT_SECONDS)),
            "MessageSystemAttributeNames": ["ApproximateReceiveCount", "SentTimestamp"],
        }
        if visibility_timeout is not None:
            request["VisibilityTimeout"] = max(0, min(visibility_timeout, MAX_VISIBILITY_SECONDS))
        with self._errors("receiving messages"):
            answer = self._sqs.receive_message(**request)
        return [QueueMessage(message_id=m["MessageId"], body=m.get("Body", ""), receipt_handle=m["ReceiptHandle"],
                             attributes=dict(m.get("Attributes", {})))
                for m in answer.get("Messages", [])]

    def delete(self, message: QueueMessage) -> None:
        with self._errors(f"deleting message {message.message_id}"):
            self._sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message.receipt_handle)

    def extend_visibility(self, message: QueueMessage, seconds: int) -> None:
        with self._errors(f"changing the visibility of message {message.message_id}"):
            self._sqs.change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=message.receipt_handle,
                                                VisibilityTimeout=max(0, min(seconds, MAX_VISIBILITY_SECONDS)))

    def attributes(self) -> dict[str, str]:
        with self._errors("reading the queue attributes"):
            return self._sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["All"])["Attributes"]
