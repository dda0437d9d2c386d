"""Camera URLs (the hostile review, issue items 1, 3 and 5): secrets never shown, a broken URL
refused where it is written, and the control API's allowlist against server-side request forgery."""

from __future__ import annotations

import pytest

from facemask.core.errors import ConfigError
from facemask.video.watch.cameras import parse_camera
from facemask.video.watch.urls import API_SOURCES, check_api_source, parse_hosts, parse_sources, redacted, scrubbed


def test_item_1_a_password_in_the_user_part_or_the_query_is_redacted():
    assert redacted("rtsp://admin:hunter2@10.0.0.5:554/s1") == "rtsp://admin:***@10.0.0.5:554/s1"
    assert redacted("http://cam/video.mjpg") == "http://cam/video.mjpg"
    shown = redacted("http://10.0.0.7/video.cgi?user=admin&pwd=hunter2&resolution=640x480")
    assert "hunter2" not in shown and "admin" not in shown and "resolution=640x480" in shown, shown
    assert "s3cr3t" not in redacted("https://cam.example/mjpg?token=s3cr3t")
    assert redacted("cameras/door.mkv") == "cameras/door.mkv" and redacted("0") == "0"


def test_item_1_an_error_text_naming_the_url_loses_its_secrets():
    url = "rtsp://viewer:se%40cret@127.0.0.1:554/cam?pwd=other"
    text = f"could not open it: [Errno 111] Connection refused: '{url}' (password se@cret)"
    clean = scrubbed(text, url)
    assert "se%40cret" not in clean and "se@cret" not in clean and "other" not in clean, clean
    assert "Connection refused" in clean and "viewer:***@127.0.0.1:554" in clean


def test_item_5_redacted_never_raises_and_keeps_ipv6_brackets():
    # A password with a bad port once raised here, and GET /cameras failed for every camera.
    for url in ("rtsp://u:pw@127.0.0.1:99999/x", "rtsp://u:pw@/x", "rtsp://u:pw@[::1/x", "http://[::1]:abc/"):
        shown = redacted(url)
        assert isinstance(shown, str) and "pw" not in shown.replace("rtsp", ""), (url, shown)
    assert redacted("rtsp://u:pw@[fe80::1]:554/s") == "rtsp://u:***@[fe80::1]:554/s"
    assert redacted("rtsp://[2001:db8::5]:8554/cam") == "rtsp://[2001:db8::5]:8554/cam"


@pytest.mark.parametrize(
    "url, field_says",
    [
        ("rtsp://u:pw@127.0.0.1:99999/x", "not a valid URL"),
        ("rtsp://u:pw@:554/x", "names no host"),
        ("rtsp://10.0.0.5:0/x", "port 0"),
        ("tcp://0.0.0.0:9000?listen=1", "listen"),
        ("rtmp://10.0.0.5/live?listen=1", "listen"),
    ],
)
def test_item_5_a_broken_stream_url_is_refused_where_it_is_written(url, field_says):
    with pytest.raises(ConfigError) as refused:
        parse_camera({"id": "door", "url": url}, "cameras.yaml: cameras[0]")
    message = str(refused.value)
    assert "cameras.yaml: cameras[0] (door): field `url`" in message and field_says in message, message
    assert "pw@" not in message  # the error shows the URL redacted


def test_item_3_the_api_allows_only_the_listed_kinds_of_source():
    for url in ("rtsp://10.0.0.5/s1", "rtsps://127.0.0.1/s", "http://10.0.0.7/video.mjpg", "https://10.0.0.7/v"):
        check_api_source(url, API_SOURCES)
    for url, kind in (
        ("tcp://10.0.0.5:9000", "tcp"),
        ("udp://239.0.0.1:1234", "udp"),
        ("/etc/passwd", "file"),
        ("../videos/door.mkv", "file"),
        ("0", "device"),
        ("file:///etc/shadow", "file"),
    ):
        with pytest.raises(ConfigError, match=f"a {kind} source is not allowed over the API"):
            check_api_source(url, API_SOURCES)
    check_api_source("/videos/door.mkv", parse_sources("rtsp,file"))  # the operator's choice


def test_item_3_metadata_and_unspecified_addresses_are_refused_whatever_the_list():
    for url in (
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/x",
        "rtsp://0.0.0.0:554/x",
        "http://[::]/x",
    ):
        with pytest.raises(ConfigError, match="link-local, unspecified or multicast"):
            check_api_source(url, API_SOURCES, parse_hosts("0.0.0.0/0,::/0"))


def test_item_3_api_hosts_restricts_cameras_to_the_operators_networks():
    # Names the machine resolves itself (no DNS query leaves it in a test).
    hosts = parse_hosts("10.0.0.0/8, localhost, 2001:db8::/32")
    check_api_source("rtsp://10.1.2.3/s", API_SOURCES, hosts)
    check_api_source("rtsp://[2001:db8::7]/s", API_SOURCES, hosts)
    check_api_source("rtsp://LOCALHOST:8554/s", API_SOURCES, hosts)
    for url in ("rtsp://192.168.1.5/s", "http://127.0.0.1:8265/api/jobs/", "rtsp://[::1]/s"):
        with pytest.raises(ConfigError, match="not in --api-hosts"):
            check_api_source(url, API_SOURCES, hosts)
    with pytest.raises(ConfigError, match="'ftp' is not one of"):
        parse_sources("rtsp,ftp")
