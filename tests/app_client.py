"""Call the launched app's named endpoints by widget label, the way a user fills the form."""
from __future__ import annotations

from gradio_client import Client


def call_args(client: Client, api_name: str, **by_label) -> list:
    """Positional arguments for an endpoint: defaults from the page, overridden by label."""
    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"][api_name]["parameters"]
    args = []
    for p in params:
        args.append(by_label.pop(p["label"]) if p["label"] in by_label else p.get("parameter_default"))
    assert not by_label, f"no such widget on {api_name}: {sorted(by_label)}"
    return args


def queue_call(url: str, fn_index: int, data: list, session_hash: str, timeout: float = 180) -> dict:
    """Call any registered function by its fn_index through Gradio's queue, as the page (or an attacker)
    does, private ones included; returns the final message: {"success": bool, "output": {...}}."""
    import json

    import httpx

    base = url.rstrip("/")
    with httpx.Client(timeout=timeout) as http:
        joined = http.post(f"{base}/gradio_api/queue/join", json={
            "data": data, "fn_index": fn_index, "session_hash": session_hash, "event_data": None, "trigger_id": None})
        joined.raise_for_status()
        event_id = joined.json()["event_id"]
        with http.stream("GET", f"{base}/gradio_api/queue/data", params={"session_hash": session_hash}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") == event_id and message.get("msg") == "process_completed":
                    return message
    raise AssertionError(f"fn_index {fn_index}: the queue closed without a result")


def page_config(url: str) -> dict:
    """The page's /config: every event function (its fn_index is its id) and every component's props."""
    import httpx

    return httpx.get(url.rstrip("/") + "/config", timeout=30).json()


def default_inputs(config: dict, dependency: dict, **by_label) -> list:
    """A dependency's inputs as the page sends them: each component's value, or by_label's for its label."""
    props = {c["id"]: c.get("props", {}) for c in config["components"]}
    data = []
    for component_id in dependency["inputs"]:
        p = props.get(component_id, {})
        data.append(by_label[p["label"]] if p.get("label") in by_label else p.get("value"))
    return data


def error_of(message: dict) -> str | None:
    """The one-line error a queue result carries, or None when it succeeded."""
    if message.get("success"):
        return None
    output = message.get("output") or {}
    return str(output.get("error") or output.get("title") or output)


def text_of(message: dict) -> str:
    """A chat message's text, whether Gradio sent it as a string or as a list of parts."""
    content = message["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content)
    return content
