"""The simulated accelerator: its latency curve, its answers, and that its wait uses no CPU."""

import threading
import time

import numpy as np
import pytest
from PIL import Image

from facemask.core.errors import ConfigError
from facemask.serving.simulated_gpu import SimulatedGPU, call_ms, format_latency, parse_latency

H100 = parse_latency("8:5.2,32:10.4")


def test_call_time_is_flat_to_the_first_point_then_linear():
    assert call_ms(H100, 1) == call_ms(H100, 8) == 5.2
    assert call_ms(H100, 20) == pytest.approx(7.8)
    assert call_ms(H100, 32) == pytest.approx(10.4)
    assert call_ms(H100, 56) == pytest.approx(15.6)  # past the last point, the last slope
    assert call_ms(parse_latency("4:2"), 8) == pytest.approx(4.0)


@pytest.mark.parametrize("text", ["", "8", "8:x", "32:10,8:5", "0:5", "8:-1"])
def test_a_bad_latency_names_the_option_and_the_form(text):
    with pytest.raises(ConfigError, match="--simulated-latency .*BATCH:MS"):
        parse_latency(text)


def test_latency_round_trips():
    assert parse_latency(format_latency(H100)) == H100


def test_answers_are_the_pattern_scaled_to_each_image():
    gpu = SimulatedGPU(parse_latency("8:0"))
    wide, tall = Image.new("RGB", (400, 200)), np.zeros((300, 100, 3), dtype=np.uint8)
    first, second = gpu.predict([wide, tall])
    assert [d.label for d in first] == ["with_mask", "without_mask", "mask_weared_incorrect"]
    assert first[0].box == pytest.approx((40, 40, 120, 100))
    assert second[2].box == pytest.approx((70, 60, 90, 150))
    assert all(0 <= d.box[2] <= 100 and 0 <= d.box[3] <= 300 for d in second)
    # conf and max_det hold as for a model
    assert [d.class_id for d in gpu.predict([wide], conf=0.8)[0]] == [0, 1]
    assert len(gpu.predict([wide], max_det=1)[0]) == 1
    assert (gpu.calls, gpu.images) == (3, 4)


def test_a_call_waits_its_batch_time_without_cpu_and_calls_run_one_at_a_time():
    gpu = SimulatedGPU(parse_latency("8:50,32:100"))
    image = Image.new("RGB", (64, 64))
    wall, cpu = time.perf_counter(), time.process_time()
    gpu.predict([image] * 20)  # 75 ms
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert wall >= 0.075 and cpu < 0.02, (wall, cpu)

    started = time.perf_counter()
    threads = [threading.Thread(target=gpu.predict, args=([image],)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.perf_counter() - started >= 0.15  # one device: three calls of 50 ms in a row
