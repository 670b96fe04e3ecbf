"""`solvers/thinned_records.py`: the event search's fixed-size record of
accepted steps, checked against the schedule worked out by hand."""

import numpy as np
import tensorflow as tf

from keras_node.solvers import thinned_records


def _run(steps_per_sample, slots, stride):
    """Feed accepted steps 1..n per sample (time = step number, state = 10 x
    step number); a sample stops being due after its own count."""
    n = max(steps_per_sample)
    t0 = tf.zeros([len(steps_per_sample)], tf.float64)
    y0 = (tf.zeros([len(steps_per_sample), 2], tf.float64),)
    records = thinned_records.empty(t0, y0, slots, stride)
    for step in range(1, n + 1):
        due = tf.constant([step <= last for last in steps_per_sample])
        t = tf.fill([len(steps_per_sample)], tf.constant(float(step), tf.float64))
        records = thinned_records.add(records, due, tf.fill([len(steps_per_sample)], step), t,
                                      (10.0 * t[:, None] + tf.zeros_like(y0[0]),))
    return records


def test_records_thin_to_every_other_and_double_the_stride():
    # K = 4, stride 1: steps 1-4 fill it -> keep 2, 4 (stride 2); 6, 8 fill
    # it -> keep 4, 8 (stride 4); 12 -> 4, 8, 12. A sample that stops at step
    # 5 keeps 2, 4 (step 5 is not a multiple of 2).
    records = _run([12, 5], slots=4, stride=1)
    used = thinned_records.in_use(records).numpy()
    assert records.count.numpy().tolist() == [3, 2]
    assert records.stride.numpy().tolist() == [4, 2]
    assert records.tau.numpy()[0][used[0]].tolist() == [4.0, 8.0, 12.0]
    assert records.tau.numpy()[1][used[1]].tolist() == [2.0, 4.0]
    states = records.states[0].numpy()  # (K, batch, 2)
    np.testing.assert_array_equal(states[:3, 0, 0], [40.0, 80.0, 120.0])
    np.testing.assert_array_equal(states[:2, 1, 1], [20.0, 40.0])


def test_records_stay_evenly_spread_on_long_solves():
    records = _run([300], slots=16, stride=8)
    kept = records.tau.numpy()[0][thinned_records.in_use(records).numpy()[0]]
    assert 8 <= len(kept) <= 16
    gaps = np.diff(np.concatenate([[0.0], kept]))
    assert np.all(gaps == gaps[0]) and gaps[0] >= 8  # one stride apart, from the start
    assert kept[-1] > 300 - gaps[0]  # reaching the last stride before the end
