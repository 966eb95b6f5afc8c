"""Producer (kestrelpy/jobs/producer.py) over a recording stand-in for the client.

Contract: ``enqueue`` puts one envelope on ``queue_name(queue, env)``; ``enqueue_many`` puts
one per datum in a single ``put_many``; the producer's ``instance`` is stamped on each job
unless a call gives its own.
"""

from __future__ import annotations

from kestrelpy.jobs import Producer, enqueue


class Recorder:
    def __init__(self):
        self.puts = []
        self.batches = []

    def put(self, queue, data, expiry_s=0):
        self.puts.append((queue, data))

    def put_many(self, queue, items, expiry_s=0):
        items = list(items)
        self.batches.append((queue, items))
        return len(items)


def test_enqueue_wraps_data_in_an_envelope():
    client = Recorder()
    Producer(client).enqueue("images", "resize", {"path": "a.png"})
    assert client.puts == [("images", {"job_name": "resize", "data": {"path": "a.png"}})]


def test_env_prefixes_the_queue_and_instance_is_stamped():
    client = Recorder()
    producer = Producer(client, env="enterprise", instance="dev")
    producer.enqueue("hello_world", "HelloWorld", {"foo": "bar"})
    producer.enqueue("hello_world", "HelloWorld", instance="other")
    assert client.puts == [
        (
            "enterprise_hello_world",
            {"instance": "dev", "job_name": "HelloWorld", "data": {"foo": "bar"}},
        ),
        ("enterprise_hello_world", {"instance": "other", "job_name": "HelloWorld"}),
    ]


def test_enqueue_many_is_one_batch():
    client = Recorder()
    count = Producer(client, env="e").enqueue_many("q", "n", iter([1, None, {"x": 2}]))
    assert count == 3
    assert client.batches == [
        (
            "e_q",
            [{"job_name": "n", "data": 1}, {"job_name": "n"}, {"job_name": "n", "data": {"x": 2}}],
        )
    ]


def test_module_enqueue():
    client = Recorder()
    enqueue(client, "q", "n", [1], env="prod", instance="i")
    assert client.puts == [("prod_q", {"instance": "i", "job_name": "n", "data": [1]})]
