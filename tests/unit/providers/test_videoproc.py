"""videoproc adapter against docs/providers/videoproc.md."""

from __future__ import annotations

import pytest

from gateway.core.model import ErrorInfo, FaultKind, Result, State
from gateway.exceptions import InvalidTaskKey
from gateway.providers.videoproc import VideoprocAdapter
from tests.unit.providers.support import build, fault_of, observe_one, videoproc

ROOT = "http://video.example.com:8080"

# "响应示例", verbatim.
PROCESSING = """{
  "task_id": "123e4567-e89b-12d3-a456-426614174000",
  "status": "processing",
  "progress": 45,
  "message": "正在下载视频...",
  "created_at": "2024-01-01T12:00:00",
  "video_info": {
    "title": "示例视频",
    "duration": 300,
    "uploader": "上传者"
  },
  "files": {}
}"""

COMPLETED = """{
  "task_id": "123e4567-e89b-12d3-a456-426614174000",
  "status": "completed",
  "progress": 100,
  "message": "处理完成！",
  "created_at": "2024-01-01T12:00:00",
  "completed_at": "2024-01-01T12:05:30",
  "video_info": {
    "title": "示例视频",
    "duration": 300,
    "uploader": "上传者"
  },
  "files": {
    "video": "/api/download/video_example_123abc.mp4",
    "audio": "/api/download/audio_example_123abc.mp3"
  }
}"""

ERROR = """{
  "task_id": "123e4567-e89b-12d3-a456-426614174000",
  "status": "error",
  "progress": 0,
  "message": "处理失败: 无法下载视频",
  "created_at": "2024-01-01T12:00:00",
  "completed_at": "2024-01-01T12:01:15",
  "video_info": {},
  "files": {},
  "error": "下载失败: HTTP 404"
}"""


def test_request_is_a_get_on_the_status_path() -> None:
    request = build(videoproc(), ["123e4567-e89b-12d3-a456-426614174000"])
    assert request.method == "GET"
    assert request.url == f"{ROOT}/api/status/123e4567-e89b-12d3-a456-426614174000"
    assert request.headers == request.params == ()
    assert request.body is None


def test_task_id_is_one_percent_encoded_path_segment() -> None:
    request = build(videoproc(), ["a/b?c#d%e"])
    assert request.url == f"{ROOT}/api/status/a%2Fb%3Fc%23d%25e"
    assert request.task_ids == ("a/b?c#d%e",)


@pytest.mark.parametrize("task_id", [".", ".."])
def test_dot_segments_are_refused(task_id: str) -> None:
    with pytest.raises(InvalidTaskKey, match="path segments"):
        videoproc().check_task_id(task_id)
    videoproc().check_task_id("...")  # not a dot-segment


def test_defaults_follow_the_doc() -> None:
    assert VideoprocAdapter.defaults.interval_s == 2.0  # "建议每2秒轮询一次"
    assert videoproc().secret_values() == ()  # "认证: 无需认证" (no authentication)


def test_doc_processing_example() -> None:
    observation = observe_one(videoproc(), PROCESSING)
    assert observation.state is State.RUNNING
    assert (observation.progress, observation.message) == (45, "正在下载视频...")
    assert observation.upstream == {"status": "processing", "progress": 45}
    assert (observation.result, observation.error) == (None, None)


def test_doc_completed_example_resolves_files_against_the_base_url() -> None:
    observation = observe_one(videoproc(), COMPLETED)
    assert observation.state is State.SUCCEEDED
    assert (observation.progress, observation.message) == (100, "处理完成！")
    video = f"{ROOT}/api/download/video_example_123abc.mp4"
    audio = f"{ROOT}/api/download/audio_example_123abc.mp3"
    assert observation.result == Result(
        urls=(video, audio),
        files={"video": video, "audio": audio},
        meta={"video_info": {"title": "示例视频", "duration": 300, "uploader": "上传者"}},
    )
    assert observation.upstream == {"status": "completed", "progress": 100}


def test_doc_error_example() -> None:
    observation = observe_one(videoproc(), ERROR)
    assert observation.state is State.FAILED
    assert observation.error == ErrorInfo("upstream_failed", "下载失败: HTTP 404")
    assert (observation.progress, observation.message) == (0, "处理失败: 无法下载视频")


def test_error_without_error_field_uses_the_message() -> None:
    body = {"status": "error", "progress": 10, "message": "处理失败"}
    assert observe_one(videoproc(), body).error == ErrorInfo("upstream_failed", "处理失败")


def test_absolute_and_relative_file_paths() -> None:
    body = {
        "status": "completed",
        "files": {"video": "https://cdn.example.com/v.mp4", "audio": "api/download/a.mp3"},
    }
    result = observe_one(videoproc(), body).result
    assert result is not None
    assert result.files == {
        "video": "https://cdn.example.com/v.mp4",
        "audio": f"{ROOT}/api/download/a.mp3",
    }
    assert result.meta == {}


def test_progress_is_clamped_to_0_100() -> None:
    assert observe_one(videoproc(), {"status": "processing", "progress": 140}).progress == 100
    assert observe_one(videoproc(), {"status": "processing", "progress": 12.6}).progress == 13


@pytest.mark.parametrize("body", [b'{"detail": "Task not found"}', b"", b"<html>404</html>"])
def test_http_404_is_an_unknown_task(body: bytes) -> None:
    observation = observe_one(videoproc(), body, status=404)
    assert observation.fault is None
    assert observation.state is State.UNKNOWN
    assert observation.error == ErrorInfo("not_found", "upstream does not know this task id")


def test_fastapi_500_is_a_server_fault() -> None:
    fault = fault_of(observe_one(videoproc(), {"detail": "Internal Server Error"}, status=500))
    assert (fault.kind, fault.message) == (FaultKind.SERVER, "videoproc answered HTTP 500")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"task_id": "x", "progress": 3}, "videoproc reply: field 'status' is missing"),
        ({"status": 1}, "videoproc reply: field 'status' is an int, expected a str"),
        (
            {"status": "processing", "progress": "45%"},
            "videoproc reply: field 'progress' is a str, expected an int or a float or null",
        ),
        (
            {"status": "completed", "files": ["a.mp4"]},
            "videoproc reply: field 'files' is a list, expected an object or null",
        ),
        (
            {"status": "completed", "files": {"video": None}},
            "videoproc reply: field 'files[...]' is null, expected a str",
        ),
        (
            b'{"status": "processing", "progress": 1e400}',
            "videoproc reply: field 'progress': number out of range",
        ),
    ],
)
def test_wrong_shapes_are_named_precisely(body: object, message: str) -> None:
    fault = fault_of(observe_one(videoproc(), body))
    assert (fault.kind, fault.message) == (FaultKind.MALFORMED, message)


def test_unlisted_status_is_unknown_and_kept_raw() -> None:
    observation = observe_one(videoproc(), {"status": "queued", "progress": 0})
    assert observation.state is State.UNKNOWN
    assert observation.upstream == {"status": "queued", "progress": 0}
    assert observation.message == "unrecognized upstream status 'queued'"
