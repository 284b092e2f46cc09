"""Each provider's native rendering of a task at one moment (pure: a TaskMoment in, JSON out)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.model import State
from gateway.sim.protocols.aholo import render_aholo
from gateway.sim.protocols.ailab import render_ailab
from gateway.sim.protocols.genpic import render_genpic
from gateway.sim.protocols.tryon import TRYON_DEFAULT_FAILURE, render_tryon
from gateway.sim.protocols.videoproc import VIDEOPROC_DEFAULT_ERROR, render_videoproc
from gateway.sim.timeline import Step, TaskMoment

BASE = "http://127.0.0.1:8001"
CREATED = 1_704_110_400.0  # 2024-01-01T12:00:00Z, the videoproc doc's example time


def view(state: str, task_id: str = "T1", at: float = 0.0, **step: Any) -> TaskMoment:
    return TaskMoment(
        task_id=task_id,
        step=Step(at=at, state=State(state), **step),
        created_wall=CREATED,
        step_wall=CREATED + at,
    )


# --- ailab ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("queued", 0),
        ("running", 1),
        ("succeeded", 2),
        ("failed", -1),
        ("cancelled", -1),
        ("expired", -1),
        ("rejected", -1),
    ],
)
def test_ailab_task_status(state: str, status: int) -> None:
    assert render_ailab(view(state), BASE)["task_status"] == status


def test_ailab_result_only_when_done_and_absolute() -> None:
    assert "result" not in render_ailab(view("running"), BASE)
    urls = render_ailab(view("succeeded", task_id="abc"), BASE)["result"]
    assert urls == [f"{BASE}/ailab/files/abc/result1.jpg", f"{BASE}/ailab/files/abc/result2.jpg"]
    custom = render_ailab(view("succeeded", result=("https://cdn/x.jpg",)), BASE)
    assert custom["result"] == ["https://cdn/x.jpg"]


def test_native_override_wins() -> None:
    assert render_ailab(view("running", native=7), BASE)["task_status"] == 7


# --- aholo ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "native", "status"),
    [
        ("queued", None, 0),
        ("queued", 1, 1),  # 等待执行
        ("running", None, 2),
        ("running", 8, 8),  # 预处理中
        ("succeeded", None, 3),
        ("failed", None, 4),
        ("cancelled", None, 5),
        ("expired", None, 6),
        ("rejected", None, 7),
    ],
)
def test_aholo_status(state: str, native: int | None, status: int) -> None:
    rendered = render_aholo(view(state, task_id="3FO4K4WBNNYV", native=native), BASE)
    assert rendered["taskId"] == "3FO4K4WBNNYV"
    assert rendered["status"] == status
    if state != "succeeded":
        assert rendered["result"] is None


def test_aholo_result_has_the_three_asset_urls() -> None:
    result = render_aholo(view("succeeded", task_id="K"), BASE)["result"]
    assert result == {
        "plyPath": f"{BASE}/aholo/files/K/point_cloud.ply",
        "spzPath": f"{BASE}/aholo/files/K/point_cloud_compressed.spz",
        "sogPath": f"{BASE}/aholo/files/K/point_cloud.sog",
    }
    given = render_aholo(view("succeeded", result=("u1", "u2")), BASE)["result"]
    assert given == {"plyPath": "u1", "spzPath": "u2"}


# --- tryon ---------------------------------------------------------------------

# The keys of the doc's "success" example, in its order.
TRYON_DOC_KEYS = [
    "bmi",
    "body_url",
    "cost",
    "hairOcclued",
    "height",
    "id",
    "imgUrl1",
    "imgUrl2",
    "imgUrl3",
    "infInfo",
    "infInfoEn",
    "ipId",
    "isApi",
    "modelBmi",
    "openId",
    "position",
    "shareUser",
    "showUrl",
    "state",
    "tempId",
    "useInfId",
    "weight",
]


def test_tryon_data_has_exactly_the_docs_fields_and_echoes_the_caller() -> None:
    data = render_tryon(view("queued", task_id="3619"), "ovB-x66u8")
    assert list(data) == TRYON_DOC_KEYS
    assert data["id"] == 3619
    assert data["openId"] == "ovB-x66u8"
    assert (data["cost"], data["tempId"], data["isApi"]) == (5.0, 208, 1)


@pytest.mark.parametrize(("position", "shown"), [(None, 1), (0, 1), (1, 1), (5, 5)])
def test_tryon_queued_has_a_position_of_at_least_one(position: int | None, shown: int) -> None:
    data = render_tryon(view("queued", task_id="1", position=position), "o")
    assert (data["state"], data["position"]) == (1, shown)


def test_tryon_running_is_state_one_at_position_zero() -> None:
    data = render_tryon(view("running", task_id="1", position=9), "o")
    assert (data["state"], data["position"]) == (1, 0)


def test_tryon_done_gives_paths_relative_to_the_oss_base() -> None:
    data = render_tryon(view("succeeded", task_id="42"), "o")
    assert data["state"] == 2
    assert data["body_url"] == "results/42/body.png"
    assert data["showUrl"] == "results/42/show.png"


def test_tryon_failure_carries_the_docs_message_or_the_steps() -> None:
    data = render_tryon(view("failed", task_id="1"), "o")
    assert (data["state"], data["infInfo"], data["infInfoEn"]) == (-1, *TRYON_DEFAULT_FAILURE)
    custom = render_tryon(view("rejected", task_id="1", message="bad photo"), "o")
    assert (custom["state"], custom["infInfoEn"]) == (-1, "bad photo")


# --- genpic --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("queued", "Queuing"),
        ("running", "Running"),
        ("succeeded", "Finished"),
        ("failed", "Error"),
        ("cancelled", "Error"),
    ],
)
def test_genpic_task_status(state: str, status: str) -> None:
    detail = render_genpic(view(state, task_id="U1"), BASE)
    assert detail["TaskStatus"] == status
    assert detail["TaskUid"] == "U1"
    assert detail["TaskType"] == "TaskGeneratePicture"


def test_genpic_pictures_and_errors() -> None:
    done = render_genpic(view("succeeded", task_id="U1"), BASE)
    assert done["FinalPictureUrls"] == [f"{BASE}/genpic/files/U1/1.png"]
    assert (done["TaskErrorMsg"], done["TaskErrorCode"]) == ("", 0)
    failed = render_genpic(view("failed", message="NSFW"), BASE)
    assert failed["FinalPictureUrls"] == []
    assert failed["TaskErrorMsg"] == "NSFW"
    assert failed["TaskErrorCode"] != 0


# --- videoproc -----------------------------------------------------------------


def test_videoproc_queued_and_running_are_processing() -> None:
    queued = render_videoproc(view("queued", task_id="v"))
    assert (queued["status"], queued["progress"]) == ("processing", 0)
    running = render_videoproc(view("running", task_id="v", progress=45, message="正在下载视频..."))
    assert (running["status"], running["progress"], running["message"]) == (
        "processing",
        45,
        "正在下载视频...",
    )
    assert running["created_at"] == "2024-01-01T12:00:00"
    assert running["files"] == {}
    for body in (queued, running):
        assert "completed_at" not in body
        assert "error" not in body


def test_videoproc_completed_lists_relative_download_paths() -> None:
    body = render_videoproc(view("succeeded", task_id="v1", at=330))
    assert (body["status"], body["progress"]) == ("completed", 100)
    assert body["completed_at"] == "2024-01-01T12:05:30"
    assert body["files"] == {
        "video": "/api/download/video_v1.mp4",
        "audio": "/api/download/audio_v1.mp3",
    }
    assert body["video_info"]["duration"] == 300


def test_videoproc_error_names_the_error() -> None:
    body = render_videoproc(view("failed", task_id="v1", at=75))
    assert body["status"] == "error"
    assert body["error"] == VIDEOPROC_DEFAULT_ERROR
    assert body["message"] == f"处理失败: {VIDEOPROC_DEFAULT_ERROR}"
    assert body["completed_at"] == "2024-01-01T12:01:15"
    assert (body["files"], body["video_info"]) == ({}, {})
