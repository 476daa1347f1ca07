"""Live pool: offline tokenizer, routing view, FIFO batching semantics, crash handling."""
from __future__ import annotations

import os
import threading
from types import SimpleNamespace

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bes_jax.serving.observation import RateEstimator, build_observation, choose_replica, greedy_choice, predict
from bes_jax.serving.tokenizers import ByteTokenizer


def test_byte_tokenizer_offline_roundtrip():
    tok = ByteTokenizer(260)
    text = "Hello, wörld! 123"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8"))
    assert all(4 <= i < 260 for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode([0, 1, 2, 3] + ids) == text  # specials dropped
    with pytest.raises(ValueError):
        ByteTokenizer(100)


def snap(queue_len, inflight, busy, free_at, now=10.0, models=(0, 0, 1), servers=(0, 1, 2), cap=4, b_max=2,
         valid=None):
    return SimpleNamespace(now=now, replica_model=np.array(models), replica_server=np.array(servers),
                           queue_len=np.array(queue_len), inflight=np.array(inflight),
                           valid=np.ones(len(models), bool) if valid is None else np.array(valid),
                           server_busy=np.array(busy), server_free_at=np.array(free_at, float),
                           queue_capacity=cap, b_max=b_max, n_models=max(models) + 1)


def test_choose_replica_and_prediction_follow_the_doc():
    # model 0 has replicas 0 and 1: equal counts, replica 1 frees up first -> replica 1
    s = snap([1, 0, 0], [0, 1, 0], [True, True, False], [12.0, 11.0, 3.0])
    assert choose_replica(s, 0) == 1
    # fewest queued + in flight wins over earlier free time
    s2 = snap([0, 2, 0], [1, 0, 0], [True, True, False], [12.0, 11.0, 3.0])
    assert choose_replica(s2, 0) == 0
    # idle ties on now -> lowest index
    s3 = snap([0, 0, 0], [0, 0, 0], [False, False, False], [1.0, 2.0, 3.0])
    assert choose_replica(s3, 0) == 0
    lat = np.array([[0.1, 0.15], [0.3, 0.5]])  # [M, B] for the pending task
    wait, pred, rep = predict(s, lat)
    # model 0: replica 1, busy until 11, q=0 -> wait 1, pred = now + 1 + L[B_max]
    assert rep[0] == 1 and wait[0] == pytest.approx(1.0) and pred[0] == pytest.approx(11.15)
    # model 1: idle, empty -> starts alone at once
    assert wait[1] == 0.0 and pred[1] == pytest.approx(10.3)
    # full queue or dead model -> inf
    s4 = snap([0, 0, 4], [0, 0, 1], [False, False, True], [0, 0, 10.5])
    assert np.isinf(predict(s4, lat)[1][1])
    s5 = snap([0, 0, 0], [0, 0, 0], [False, False, False], [0, 0, 0], valid=[True, True, False])
    assert choose_replica(s5, 1) == -1 and np.isinf(predict(s5, lat)[1][1])
    # greedy: best quality meeting the deadline, else the fastest
    L = lat[:, None, :]
    q = np.array([[0.9], [0.7]])
    assert greedy_choice(s, L, q, 0, deadline=2.0) == 0  # both meet: higher quality
    assert greedy_choice(s, L, q, 0, deadline=0.5) == 1  # only model 1 meets (0.3 s vs 1.15 s)
    assert greedy_choice(s, L, q, 0, deadline=0.1) == 1  # none meets: the fastest


def test_rate_estimator_and_observation_layout():
    r = RateEstimator(ewma_alpha=0.5, ref_rate=10.0)
    assert r.observe(0.0) == pytest.approx(1.0)  # first arrival: g unchanged = 1/ref_rate
    r.observe(0.3)  # g = 0.5*0.3 + 0.5*0.1 = 0.2 -> rate 5 -> /10
    assert r.normalised_rate == pytest.approx(0.5)
    s = snap([1, 0, 2], [2, 0, 1], [True, False, True], [11.0, 9.0, 10.4])
    o = build_observation("paper", s, 1, 3, 0.5)
    assert o.shape == (3 + 2 + 1,)
    np.testing.assert_allclose(o, [0, 1, 0, 3 / 4, 3 / 2, 0.5])
    lat = np.ones((2, 3, 2)) * np.array([0.1, 0.2])
    rich = build_observation("rich", s, 1, 3, 0.5, lat, deadline=2.0)
    assert rich.shape == (3 + 2 * 2 + 2,)
    wait, _, _ = predict(s, lat[:, 1, :])
    np.testing.assert_allclose(rich[6:8], wait / 2.0, rtol=1e-6)
    assert rich[-1] == 2.0


torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from bes_jax.serving.pool import Pool, WorkerCrashed  # noqa: E402


@pytest.fixture(scope="module")
def pool_factory():
    made = []

    def make(**kw):
        kw.setdefault("b_max", 3)
        kw.setdefault("queue_capacity", 8)
        kw.setdefault("num_threads", 1)
        p = Pool(["tiny-s", "tiny-m", "tiny-l"], **kw)
        made.append(p)
        return p
    yield make
    for p in made:
        p.stop()


class Gate:
    """A fake batch runner that blocks until released and records every batch."""

    def __init__(self):
        self.batches, self.release = [], threading.Semaphore(0)
        self.started = threading.Semaphore(0)

    def __call__(self, m, prompts, n_out, device_index=0):
        self.batches.append((m, [p[0] for p in prompts]))
        self.started.release()
        assert self.release.acquire(timeout=10)
        return [[5] * n_out for _ in prompts]


def test_generate_exact_length_mixed_prompts(pool_factory):
    p = pool_factory()
    out = p.generate(2, [[10, 11, 12], [20] * 9, [30]], 5)
    assert [len(o) for o in out] == [5, 5, 5]
    assert p.generate(0, [[10, 11, 12]], 5) == p.generate(0, [[10, 11, 12]], 5)  # greedy: deterministic


def test_fifo_batching_bmax(pool_factory):
    p = pool_factory(placement="concurrent").start()
    g = Gate()
    p.generate = g
    reqs = [p.submit(0, [100], 2, lambda s: 1)]  # idle replica: a batch of one at once
    assert g.started.acquire(timeout=5)
    for i in range(1, 6):
        reqs.append(p.submit(0, [100 + i], 2, lambda s: 1))
    s = p.snapshot()
    assert s.queue_len[1] == 5 and s.inflight[1] == 1
    for _ in range(3):
        g.release.release()
    for r in reqs:
        r.future.result(timeout=10)
    # first the lone request, then the first B_max=3 queued in FIFO order, then the rest
    assert [b for _, b in g.batches] == [[100], [101, 102, 103], [104, 105]]
    assert [r.batch_size for r in reqs] == [1, 3, 3, 3, 2, 2]
    assert all(r.start >= r.arrival and r.finish >= r.start for r in reqs)
    starts = [r.start for r in reqs]
    assert starts == sorted(starts)


def test_exclusive_device_serves_oldest_head_first(pool_factory):
    p = pool_factory(placement="exclusive", n_gpus=1).start()
    g = Gate()
    p.generate = g
    first = p.submit(0, [1], 1, lambda s: 2)  # tiny-l takes the device
    assert g.started.acquire(timeout=5)
    a = p.submit(0, [2], 1, lambda s: 1)  # tiny-m queued first
    b = p.submit(0, [3], 1, lambda s: 0)  # tiny-s queued second
    c = p.submit(0, [4], 1, lambda s: 1)
    assert p.snapshot().server_busy.tolist() == [True]
    for _ in range(3):
        g.release.release()
    for r in (first, a, b, c):
        r.future.result(timeout=10)
    assert [(m, x) for m, x in g.batches] == [(2, [1]), (1, [2, 4]), (0, [3])]


def test_crash_masks_replica_and_answers_queued(pool_factory):
    p = pool_factory(placement="concurrent").start()
    g = Gate()
    p.generate = g
    p.inject_fault("tiny-m")
    reqs = [p.submit(0, [i], 1, lambda s: 1) for i in range(4)]
    for r in reqs:
        with pytest.raises(WorkerCrashed):
            r.future.result(timeout=10)
    s = p.snapshot()
    assert not s.valid[1] and choose_replica(s, 1) == -1
    assert p.alive_models().tolist() == [True, False, True]
    from bes_jax.serving.pool import ModelUnavailable
    with pytest.raises(ModelUnavailable):
        p.submit(0, [1], 1, lambda s: 1)
    g.release.release()
    assert p.submit(0, [1], 1, lambda s: 0).future.result(timeout=10).token_ids == [5]


def test_process_executor_and_a_killed_model_process():
    p = Pool(["tiny-s", "tiny-m"], replicas=[1, 1], b_max=2, queue_capacity=4, num_threads=1,
             executor="process").start()
    try:
        ids = p.tokenizer.encode("ping")
        res = p.submit(0, ids, 3, lambda s: 0).future.result(timeout=30)
        assert len(res.token_ids) == 3
        # same weights (seeded) and same decode as in-process
        assert res.token_ids == p.generate(0, [ids], 3)[0]
        p.replicas[1].runner.proc.kill()  # a real crash, not an injected one
        p.replicas[1].runner.proc.wait(10)
        with pytest.raises(WorkerCrashed):
            p.submit(0, ids, 2, lambda s: 1).future.result(timeout=30)
        assert p.alive_models().tolist() == [True, False]
        assert p.submit(0, ids, 2, lambda s: 0).future.result(timeout=30).token_ids
    finally:
        p.stop()
